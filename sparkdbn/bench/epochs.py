"""One engine epoch at 1× and 4× the rows, each in a fresh application: the Spark epoch the
references are compared with, its scaling and the driver's peak memory."""

from __future__ import annotations

from typing import Any

from sparkdbn.bench.common import peak_rss_mb, run_json_subprocess, subprocess_env
from sparkdbn.kernels.rbm import CDConfig


def epoch_subprocess(
    data: str, scale: int, hidden: int, repeats: int, partitions: int
) -> dict[str, Any]:
    """`epoch_figures` in a fresh application (`sparkdbn.jobs.benchmark --scale`)."""
    cmd = [
        "-m", "sparkdbn.jobs.benchmark", "--data", data, "--scale", str(scale),
        "--hidden", str(hidden), "--repeats", str(repeats), "--partitions", str(partitions),
    ]
    return run_json_subprocess(cmd, subprocess_env("local[*]"))


def epoch_figures(
    data: str, scale: int, hidden: int, repeats: int, partitions: int
) -> dict[str, float]:
    """Epoch seconds on `data` `scale` times over, and this driver's peak memory."""
    from sparkdbn.engine.bench import epoch_at_scale
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn benchmark epoch")
    seconds = epoch_at_scale(spark, data, scale, hidden, CDConfig(), partitions, repeats)
    return {"epoch_seconds": seconds, "driver_peak_rss_mb": peak_rss_mb()}
