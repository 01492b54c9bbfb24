"""What every measurement of the benchmark uses: timing, the machine, its data and scratch
space, and its helper processes."""

from __future__ import annotations

import atexit
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def timed_runs(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    return statistics.median(timed_runs(fn, repeats, warmup))


def machine() -> dict[str, Any]:
    """Cores, CPU model, BLAS and versions: what the figures were measured on."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for p in threadpool_info()
        ]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    import pyarrow
    import pyspark

    info.update(numpy=np.__version__, pyspark=pyspark.__version__, pyarrow=pyarrow.__version__)
    return info


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def subprocess_env(master: str) -> dict[str, str]:
    """A helper application's environment: this Python, on Spark master `master`."""
    return {**os.environ, "SPARKDBN_MASTER": master, "PYSPARK_PYTHON": sys.executable}


def run_json_subprocess(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m sparkdbn.jobs.benchmark ...` style helpers that print one JSON line last;
    in the caller's working directory, with the installed package."""
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_parquet(path: Path, X: np.ndarray, partitions: int) -> None:
    """Rows in the project's Parquet layout (id, features, label 0), written with pyarrow so
    that numpy and Spark measure the very same rows without starting Spark here."""
    path.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(len(X)), partitions)):
        values = pa.FixedSizeListArray.from_arrays(pa.array(X[rows].reshape(-1)), X.shape[1])
        table = pa.table(
            {
                "id": pa.array(rows, pa.int64()),
                "features": values.cast(pa.list_(pa.float32())),
                "label": pa.array(np.zeros(rows.size, np.int32)),
            }
        )
        pq.write_table(table, path / f"part-{i:05d}.parquet")


def temp_dir() -> Path:
    """A scratch directory for data, stores and outputs, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="sparkdbn-bench-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
