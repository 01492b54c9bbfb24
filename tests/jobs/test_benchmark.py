"""jobs/benchmark.py end to end on the Fashion-MNIST sample: every figure the issue names is
measured and consistent with the others, and the job leaves nothing behind in its temp dir.

Only the figures' presence and arithmetic are checked: timings are reported, never asserted.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from tests.conftest import run_job

FIGURES = (
    "sgemm_gflops", "numpy_epoch_seconds", "spark_epoch_seconds", "spark_overhead_ratio",
    "cd_gflops", "fraction_of_sgemm", "sklearn_epoch_seconds", "speedup_vs_sklearn",
    "sequential_makespan_seconds", "pipelined_makespan_seconds", "tied_makespan_seconds",
    "sequential_1core_makespan_seconds", "pipelined_1core_per_layer_makespan_seconds",
    "pipelined_speedup_per_layer_core", "scaling_ratio_4x", "sklearn_float64_epoch_seconds",
    "speedup_vs_sklearn_float64",
)


@pytest.mark.slow
def test_benchmark_measures_every_figure(fashion_parquet: Path, tmp_path: Path) -> None:
    rows, hidden = 200, 16
    temp = tmp_path / "tmp"
    temp.mkdir()
    output = tmp_path / "bench.json"
    result = run_job(
        "benchmark", "--data", str(fashion_parquet / "train"), "--rows", str(rows),
        "--hidden", str(hidden), "--repeats", "2", "--epochs", "1", "--publish-every", "1",
        "--layer-core-epochs", "3", "--layer-core-publish-every", "1", "--layer-core-repeats", "1",
        "--layers", f"784,{hidden},784", "--output", str(output),
        env={"TMPDIR": str(temp)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(output.read_text())
    assert out["rows"] == rows and out["data"].endswith(str(fashion_parquet / "train"))
    assert {"cores", "cpu", "blas"} <= set(out["machine"])
    for key in FIGURES:
        assert isinstance(out[key], float) and math.isfinite(out[key]) and out[key] > 0, key
    assert out["spark_overhead_ratio"] == out["spark_epoch_seconds"] / out["numpy_epoch_seconds"]
    flops = 10 * rows * 784 * hidden  # (4k + 6)·N·n_v·n_h with k = 1
    assert math.isclose(out["cd_gflops"], flops / out["spark_epoch_seconds"] / 1e9)
    assert math.isclose(out["fraction_of_sgemm"], out["cd_gflops"] / out["sgemm_gflops"])
    assert math.isclose(
        out["pipelined_speedup_per_layer_core"],
        out["sequential_1core_makespan_seconds"]
        / out["pipelined_1core_per_layer_makespan_seconds"],
    )
    assert out["settings"]["layer_core_epochs"] == 3
    timeline = out["per_layer_core_timeline"]
    assert timeline["rough_versions"] == 2  # after epochs 1 and 2; the 3rd is the final one
    assert timeline["upper_start_delay_seconds"] > 0  # it needs layer 0's first version
    for key in ("final_publish_seconds", "upper_tail_seconds"):
        assert timeline[key] > 0, key
    assert timeline["layer0_seconds"] + timeline["final_publish_seconds"] < out[
        "pipelined_1core_per_layer_makespan_seconds"]
    # Makespans: rounds of the three schedules in turn, each figure the median of its rounds.
    assert set(out["makespan_runs"]) == {"sequential", "pipelined", "tied"}
    for schedule, runs in out["makespan_runs"].items():
        assert len(runs) == 2
        assert out[f"{schedule}_makespan_seconds"] == pytest.approx(statistics.median(runs))
    assert out["settings"]["layer_core_repeats"] == 1
    assert out["per_layer_core_runs"] == {
        "sequential": [round(out["sequential_1core_makespan_seconds"], 3)],
        "pipelined": [round(out["pipelined_1core_per_layer_makespan_seconds"], 3)],
    }
    assert set(out["driver_peak_rss_mb"]) == {"1x", "4x"}
    # References are timed in three windows around the Spark epochs; each figure is the median.
    assert set(out["reference_runs"]) == {
        "numpy_epoch_seconds", "sklearn_epoch_seconds", "sklearn_float64_epoch_seconds",
    }
    for key, runs in out["reference_runs"].items():
        assert len(runs) == 6 and out[key] == pytest.approx(statistics.median(runs), abs=1e-3)
    assert "spark_overhead_ratio" in result.stdout  # the readable table
    assert list(temp.iterdir()) == []  # data, stores and layer outputs are cleaned up
