"""Measurements behind jobs/benchmark.py: the machine's ceiling and how close sparkdbn gets.

Every figure is the median of several repetitions after a warm-up. Timings are reported, never
asserted: the README's Performance section shows one run.
"""

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

from sparkdbn.kernels.rbm import CDConfig, RBMParams, cd_epoch

REPO = Path(__file__).resolve().parents[1]


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


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 matrix-multiply rate with numpy's BLAS on all cores: the ceiling."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def cd_flops(n_rows: int, n_visible: int, n_hidden: int, k: int = 1) -> float:
    """(4k + 6)·N·n_v·n_h: positive phase, k Gibbs steps, two outer products."""
    return (4 * k + 6) * n_rows * n_visible * n_hidden


def numpy_epoch_runs(X: np.ndarray, n_hidden: int, cfg: CDConfig, repeats: int) -> list[float]:
    """Seconds of plain numpy CD epochs over all rows in this process (BLAS on all cores)."""
    params = RBMParams.init(X.shape[1], n_hidden, np.random.default_rng(0))
    velocity = params.zeros_like()
    rngs = iter(range(10**6))
    return timed_runs(
        lambda: cd_epoch(params, velocity, X, cfg, np.random.default_rng(next(rngs))), repeats
    )


def sklearn_epoch_runs(
    X: np.ndarray, n_hidden: int, batch: int, repeats: int
) -> list[float] | None:
    """scikit-learn's BernoulliRBM, one epoch (n_iter=1) over the same rows and units; it
    computes in X's dtype. None when scikit-learn is not installed."""
    try:
        from sklearn.neural_network import BernoulliRBM
    except ImportError:
        return None

    def fit() -> None:
        BernoulliRBM(
            n_components=n_hidden, batch_size=batch, n_iter=1, learning_rate=0.1, random_state=0
        ).fit(X)

    return timed_runs(fit, repeats)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_json_subprocess(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m sparkdbn.benchmark ...` style helpers that print one JSON line last."""
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, **(env or {})}, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def layer_spans(metrics: dict[str, Any]) -> list[tuple[float, float]]:
    """Absolute (start, end) seconds of each layer from a metrics.json document."""
    base = metrics["run_started_unix"]
    return [(base + lg["started_at"], base + lg["finished_at"]) for lg in metrics["layers"]]


def pipeline_timeline(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Where a one-application-per-layer pipeline spends its makespan, for layers 0 and 1,
    from their metrics.json documents (absolute clocks, so the applications line up):

    - upper_start_delay: from layer 0's start until layer 1 starts training;
    - layer0_seconds: layer 0's epochs, with its rough versions (written in or after them);
    - final_publish: layer 0's last version, a pass with the final weights;
    - upper_tail: from that version's commit until layer 1 is done (its load and last epochs).
    """
    (s0, e0), (s1, e1) = (layer_spans(m)[0] for m in metrics[:2])
    publishes = metrics[0]["layers"][0]["publishes"]
    final = publishes[-1]
    committed = metrics[0]["run_started_unix"] + final["started_at"] + final["seconds"]
    return {
        "upper_start_delay_seconds": round(s1 - s0, 3),
        "layer0_seconds": round(e0 - s0, 3),
        "final_publish_seconds": final["seconds"],
        "upper_tail_seconds": round(e1 - committed, 3),
        "rough_versions": len(publishes) - 1,
    }


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
