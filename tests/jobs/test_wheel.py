"""The main job and the benchmark from a wheel installed in a fresh virtualenv, run in a
directory that holds no checkout: nothing in the package may point at the repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.jobs.conftest import assert_from_wheel, wheel_env

pytestmark = pytest.mark.slow


def run_script(env_dir: Path, script: str, cwd: Path, *args: str) -> dict:
    """Run a console script of the wheel in `cwd`; its last JSON event, which must be `done`."""
    result = subprocess.run(
        [env_dir / "bin" / script, *args, "--log-format", "json"], cwd=cwd,
        env=wheel_env(env_dir), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "done"
    return events[-1]


def test_train_from_a_wheel(wheel_venv: Path, fashion_parquet: Path, tmp_path: Path) -> None:
    assert_from_wheel(wheel_venv, tmp_path)
    run_script(
        wheel_venv, "sparkdbn-train", tmp_path, "--train", str(fashion_parquet / "train"),
        "--test", str(fashion_parquet / "test"), "--output", "run", "--layers", "784,16",
        "--epochs", "1", "--finetune-epochs", "5", "--averaging", "plain",
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.25  # chance is 0.1; a broken wheel's model scores near it
    assert (tmp_path / "run" / "model").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # its own store is gone


def test_benchmark_from_a_wheel_reads_data_under_the_working_directory(
    wheel_venv: Path, fashion_parquet: Path, tmp_path: Path
) -> None:
    default = tmp_path / "data" / "fashion-mnist" / "train"
    default.parent.mkdir(parents=True)
    default.symlink_to(fashion_parquet / "train")
    done = run_script(
        wheel_venv, "sparkdbn-benchmark", tmp_path, "--rows", "200", "--hidden", "8",
        "--repeats", "1", "--epochs", "1", "--publish-every", "1", "--layer-core-epochs", "2",
        "--layer-core-publish-every", "1", "--layer-core-repeats", "1", "--layers", "784,8,784",
        "--output", "bench.json",
    )
    assert done["output"] == "bench.json"
    out = json.loads((tmp_path / "bench.json").read_text())
    assert out["data"] == "200 rows of data/fashion-mnist/train"
    assert out["spark_epoch_seconds"] > 0 and out["pipelined_1core_per_layer_makespan_seconds"] > 0
