"""The whole benchmark: the data, every measurement in its order, and the figures from them."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from sparkdbn.bench.common import machine, temp_dir, write_parquet
from sparkdbn.bench.epochs import epoch_subprocess
from sparkdbn.bench.layer_core import LayerCoreSettings, per_layer_core
from sparkdbn.bench.references import References, cd_flops, sgemm_gflops
from sparkdbn.kernels.rbm import CDConfig

# Relative to the working directory, where `make train` prepares Fashion-MNIST.
DEFAULT_DATA = Path("data") / "fashion-mnist" / "train"


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark measures on; `data` None: DEFAULT_DATA if prepared, else random."""

    data: str | None
    rows: int
    hidden: int
    repeats: int
    epochs: int
    layers: list[int]
    partitions: int
    publish_every: int
    layer_core: LayerCoreSettings


def load_rows(path: str, rows: int) -> np.ndarray:
    """The first `rows` feature rows of a Parquet data set, as float32."""
    table = pq.read_table(path, columns=["features"])
    flat = table.column("features").combine_chunks().flatten().to_numpy()
    X = flat.astype(np.float32).reshape(table.num_rows, -1)
    return X[:rows]


def measure(settings: BenchSettings) -> dict[str, Any]:
    """Every figure of the benchmark, with the data, machine and settings it was measured on."""
    s = settings
    source = s.data or (str(DEFAULT_DATA) if DEFAULT_DATA.exists() else None)
    tmp = temp_dir()
    data = str(tmp / "data")
    if source is None:
        source_kind = f"random binary data, {s.rows} x 784 (Fashion-MNIST not prepared)"
        rng = np.random.default_rng(0)
        X = (rng.random((s.rows, 784), dtype=np.float32) < 0.3).astype(np.float32)
    else:
        X = load_rows(source, s.rows)
        source_kind = f"{len(X)} rows of {source}"
    write_parquet(Path(data), X, s.partitions)
    n, width = X.shape
    cfg = CDConfig()
    out: dict = {"data": source_kind, "rows": n, "machine": machine(),
                 "settings": {"hidden": s.hidden, "k": cfg.k, "batch_size": cfg.batch_size,
                              "repeats": s.repeats, "partitions": s.partitions,
                              "publish_every": s.publish_every,
                              "makespan_layers": s.layers, "makespan_epochs": s.epochs,
                              "layer_core_epochs": s.layer_core.epochs,
                              "layer_core_publish_every": s.layer_core.publish_every,
                              "layer_core_repeats": s.layer_core.repeats}}
    out["sgemm_gflops"] = sgemm_gflops(repeats=max(s.repeats, 3))
    references = References(X, s.hidden, cfg, s.repeats)
    references.measure()
    one = epoch_subprocess(data, 1, s.hidden, s.repeats, s.partitions)
    references.measure()
    four = epoch_subprocess(data, 4, s.hidden, s.repeats, s.partitions)
    references.measure()
    out.update(references.figures())
    out["spark_epoch_seconds"] = one["epoch_seconds"]
    out["spark_overhead_ratio"] = one["epoch_seconds"] / out["numpy_epoch_seconds"]
    out["cd_gflops"] = cd_flops(n, width, s.hidden, cfg.k) / one["epoch_seconds"] / 1e9
    out["fraction_of_sgemm"] = out["cd_gflops"] / out["sgemm_gflops"]
    if "sklearn_epoch_seconds" in out:
        out["speedup_vs_sklearn"] = out["sklearn_epoch_seconds"] / one["epoch_seconds"]
        out["speedup_vs_sklearn_float64"] = (
            out["sklearn_float64_epoch_seconds"] / one["epoch_seconds"]
        )
    out["scaling_ratio_4x"] = four["epoch_seconds"] / one["epoch_seconds"]
    out["driver_peak_rss_mb"] = {"1x": one["driver_peak_rss_mb"], "4x": four["driver_peak_rss_mb"]}
    out.update(_makespans(s, data, tmp))
    out.update(per_layer_core(s.layer_core, data, s.layers))
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


def _makespans(s: BenchSettings, data: str, tmp: Path) -> dict[str, Any]:
    """Pretraining makespans of the three schedules in one application."""
    from sparkdbn.engine.bench import makespan
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn benchmark")
    # Rounds of the three schedules in turn, so that a slow window of this machine falls on
    # all of them alike; each figure is the median of its rounds.
    schedules = ("sequential", "pipelined", "tied")
    runs: dict[str, list[float]] = {schedule: [] for schedule in schedules}
    # Warm-up, untimed: this application's first jobs, rough versions and store reads.
    makespan(spark, data, s.layers, "pipelined", 2, s.partitions, tmp / "stores",
             publish_every=1, final_epochs=1)
    for _ in range(s.repeats):
        for schedule in schedules:
            seconds = makespan(
                spark, data, s.layers, schedule, s.epochs, s.partitions, tmp / "stores",
                publish_every=s.publish_every, final_epochs=1,
            )
            runs[schedule].append(round(seconds, 3))
    out: dict[str, Any] = {
        f"{schedule}_makespan_seconds": statistics.median(runs[schedule])
        for schedule in schedules
    }
    out["makespan_runs"] = runs
    return out


def table(out: dict[str, Any]) -> str:
    """The numeric figures as a two-column text table."""
    rows = [(k, v) for k, v in out.items() if isinstance(v, int | float)]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'figure':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v:,.3f}" for k, v in rows]
    return "\n".join(lines)
