"""jobs/train_dbn.py end to end: the real CLI in subprocesses, as a user runs it.

Each run that needs Spark (10-20 s to start an application) happens once: the module fixture
`spark_runs` queues the three of SUBPROCESS two at a time and runs the other four meanwhile
in this process, through the job's main on the test session; each test waits for the run it
looks at. Config errors and an existing output directory are refused before Spark starts, so
those runs are fast.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkdbn.config import FINETUNE_EPOCHS
from sparkdbn.model import DBNModel
from tests import conftest
from tests.reliability.conftest import run_in_process

REPO = Path(__file__).resolve().parents[2]
JOB = "jobs/train_dbn.py"
ROWS, WIDTH = 600, 16
BAD_ID, BAD_POS = 123, 4
FLAGS = (
    "--train", "--output", "--layers", "--visible", "--epochs", "--k", "--learning-rate",
    "--momentum", "--weight-decay", "--batch-size", "--seed", "--partitions", "--features-col",
    "--label-col", "--config",
)  # fmt: skip
# Runs in a process of their own: the real CLI trains (flags, and a TOML file whose model must
# equal the flags' to the bit), and bad data found once Spark is up gives exit 2 with one
# `error:` line. The other runs of `run_argv` go through the job's main in this process.
SUBPROCESS = {"train", "toml", "bad_value"}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def in_process(*args: str) -> Result:
    """The job's main with `args` on the test session, through the same `cli.run`."""
    done = run_in_process("train_dbn", *args)
    return Result(done.returncode, done.stdout, done.stderr)


def run_job(*args: str) -> Result:
    """The CLI run to completion, with this interpreter for the driver and the workers."""
    done = subprocess.run(
        [sys.executable, JOB, *args],
        cwd=REPO,
        env=conftest.job_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def write_parquet(directory: Path, X: np.ndarray) -> Path:
    directory.mkdir(parents=True)
    n = len(X)
    features = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1])
    table = pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "features": features.cast(pa.list_(pa.float32())),
            "label": pa.array(np.arange(n, dtype=np.int32) % 10),
        }
    )
    pq.write_table(table, directory / "part-00000.parquet")
    return directory


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train_dbn")


@pytest.fixture(scope="module")
def datasets(root: Path) -> dict[str, Path]:
    """600 rows × 16 binary features; a copy with one value 2.0 at row BAD_ID."""
    X = (np.random.default_rng(0).random((ROWS, WIDTH)) < 0.3).astype(np.float32)
    bad = X.copy()
    bad[BAD_ID, BAD_POS] = 2.0
    return {"good": write_parquet(root / "good", X), "bad": write_parquet(root / "bad", bad)}


def out_dir(root: Path, name: str) -> Path:
    """OUT inside an empty directory of its own, so leftovers of a failed run would show."""
    (root / "runs" / name).mkdir(parents=True)
    return root / "runs" / name / "out"


def run_argv(root: Path, datasets: dict[str, Path]) -> dict[str, list[str]]:
    """Every run that starts Spark, by name, without its --output.

    `--learning-rate 0.05` (not the default) also comes from the TOML file, so the TOML run
    must equal `train` to the bit.
    """
    good = str(datasets["good"])
    common = ["--layers", "16,8", "--epochs", "2", "--partitions", "2", "--learning-rate", "0.05",
              "--averaging", "plain"]
    config = root / "run.toml"
    config.write_text(
        f'train = "{good}"\ntest = "{good}"\nlayers = [16, 8]\nepochs = 1\npartitions = 2\n'
        'seed = 7\nlearning_rate = 0.05\naveraging = "plain"\n',
        encoding="utf-8",
    )
    pretrain_only = ["--finetune-epochs", "0"]
    return {
        "train": ["--train", good, "--test", good, *common, "--seed", "7"],
        "toml": ["--config", str(config), "--epochs", "2"],
        "other_seed": ["--train", good, *common, "--seed", "8", *pretrain_only],
        "bad_value": ["--train", str(datasets["bad"]), "--layers", "16,8", "--epochs", "1"],
        "missing_column": ["--train", good, "--layers", "16,8", "--features-col", "nope"],
        "missing_path": ["--train", str(root / "no-such-data"), "--layers", "16,8"],
        "width_mismatch": ["--train", good, "--layers", "17,8", "--epochs", "1"],
    }


@pytest.fixture(scope="module")
def spark_runs(
    spark, root: Path, datasets: dict[str, Path]
) -> Iterator[dict[str, Future[Result]]]:
    """The runs in their own processes, queued two at a time (the machine has 2 cores); the
    others run in this process on the test session, meanwhile, through the same `cli.run`."""
    argv = run_argv(root, datasets)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            name: pool.submit(run_job, *argv[name], "--output", str(out_dir(root, name)))
            for name in SUBPROCESS
        }
        for name in argv.keys() - SUBPROCESS:
            done = Future()
            done.set_result(in_process(*argv[name], "--output", str(out_dir(root, name))))
            runs[name] = done
        yield runs
        pool.shutdown(cancel_futures=True)


def finished(spark_runs: dict[str, Future[Result]], root: Path, name: str) -> tuple[Result, Path]:
    """The named run's result (waiting for it) and its output directory."""
    return spark_runs[name].result(), root / "runs" / name / "out"


def load_layer(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "model" / "layer_0.npz", allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_help_lists_the_flags() -> None:
    """--help exits 0 without Spark and documents every training flag."""
    result = run_job("--help")
    assert result.returncode == 0, result.stderr
    missing = [flag for flag in FLAGS if flag not in result.stdout]
    assert not missing


@pytest.mark.slow
def test_training_run_writes_model_metrics_and_progress(spark_runs, root, datasets) -> None:
    """A 16→8 run with labelled data and no fine-tuning settings exits 0, writes numpy-readable
    float32 weights, model.json, metrics.json with one record per epoch, prints one progress
    line per epoch, and fine-tunes by default: the classifier's test accuracy is in
    metrics.json. Nothing else is left."""
    result, out = finished(spark_runs, root, "train")
    assert result.returncode == 0, result.stderr
    arrays = load_layer(out)
    assert sorted(arrays) == ["W", "hbias", "vbias"]
    assert {k: (a.shape, a.dtype) for k, a in arrays.items()} == {
        "W": ((16, 8), np.float32),
        "vbias": ((16,), np.float32),
        "hbias": ((8,), np.float32),
    }
    assert all(np.isfinite(a).all() for a in arrays.values())
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["sizes"] == [16, 8] and meta["layers"] == ["layer_0.npz"]
    assert meta["visible"] == "bernoulli"
    assert (meta["config"]["seed"], meta["config"]["epochs"]) == (7, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    [layer] = metrics["layers"]
    assert [e["epoch"] for e in layer["epochs"]] == [0, 1]
    for record in layer["epochs"]:
        for key in ("recon_error", "seconds", "rows_per_second"):
            assert isinstance(record[key], float) and math.isfinite(record[key])
    assert len(metrics["finetune"]) == FINETUNE_EPOCHS
    test = pq.read_table(datasets["good"])
    X = np.stack(test.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    predicted = DBNModel.load(out / "model").predict_proba(X).argmax(axis=1)
    expected = float(np.mean(predicted == test.column("label").to_numpy()))
    assert metrics["test_accuracy"] == pytest.approx(expected)  # the saved model's own score
    progress = [line for line in result.stdout.splitlines() if "layer 0 · epoch " in line]
    assert len(progress) == 2
    assert "layer 0" in progress[0] and "epoch 1/2" in progress[0]
    assert "layer 0" in progress[1] and "epoch 2/2" in progress[1]
    assert {"metrics.json", "model"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging/store left


@pytest.mark.slow
def test_toml_config_with_flag_override_reproduces_the_run(spark_runs, root) -> None:
    """TOML values (train, test, layers, partitions, seed, learning_rate, averaging) are used
    and --epochs 2 overrides its epochs = 1; with the same seed and partitioning the model
    (pretrained and fine-tuned) is bit-identical to the flags-only run, and so are the
    per-epoch reconstruction errors."""
    result, out = finished(spark_runs, root, "toml")
    assert result.returncode == 0, result.stderr
    reference, _ = finished(spark_runs, root, "train")
    assert reference.returncode == 0, reference.stderr
    train_out = root / "runs" / "train" / "out"
    config = json.loads((out / "model" / "model.json").read_text())["config"]
    assert config["epochs"] == 2 and config["learning_rate"] == 0.05
    assert config["seed"] == 7 and config["partitions"] == 2 and config["layers"] == [16, 8]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["layers"][0]["epochs"]) == 2
    ours, theirs = load_layer(out), load_layer(train_out)
    for key in ("W", "vbias", "hbias"):
        assert np.array_equal(ours[key], theirs[key]), key
    theirs_metrics = json.loads((train_out / "metrics.json").read_text())
    assert [e["recon_error"] for e in metrics["layers"][0]["epochs"]] == [
        e["recon_error"] for e in theirs_metrics["layers"][0]["epochs"]
    ]


@pytest.mark.slow
def test_another_seed_gives_other_weights(spark_runs, root) -> None:
    """--seed 8 instead of 7 (all else equal) trains different weights."""
    result, out = finished(spark_runs, root, "other_seed")
    assert result.returncode == 0, result.stderr
    reference, _ = finished(spark_runs, root, "train")
    assert reference.returncode == 0, reference.stderr
    assert not np.array_equal(load_layer(out)["W"], load_layer(root / "runs/train/out")["W"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "bad_value",
            f"column 'features', row id {BAD_ID}: value 2.0 at position {BAD_POS} is outside",
        ),
        ("missing_column", "features column 'nope' not found"),
        ("missing_path", "cannot read Parquet data at '"),
        ("width_mismatch", "layers starts with 17 visible units but column 'features' has 16"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(spark_runs, root, name, message) -> None:
    """Bad data or a layer size that does not fit it: exit 2, one `error:` line naming the
    problem, and no output directory (nor any staging directory) afterwards."""
    result, out = finished(spark_runs, root, name)
    assert result.returncode == 2, result.stderr
    assert result.last_error_line.startswith("error: "), result.stderr
    assert message in result.last_error_line
    if name == "missing_path":
        assert str(root / "no-such-data") in result.last_error_line
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown_key", "unknown config key 'epoch'"),
        ("zero_epochs", "config epochs must be > 0, got 0"),
        ("bad_layers", "layers must be comma-separated integers, got '16,x'"),
    ],
)
def test_config_errors_exit_2_before_spark(root, datasets, case, message) -> None:
    """Config mistakes are refused before Spark starts: exit 2, an `error:` line naming the key,
    no output directory."""
    out = out_dir(root, f"config-{case}")
    args = ["--train", str(datasets["good"]), "--output", str(out), "--layers", "16,8"]
    if case == "unknown_key":
        config = root / "typo.toml"
        config.write_text("epoch = 3\n", encoding="utf-8")
        args += ["--config", str(config)]
    elif case == "zero_epochs":
        args += ["--epochs", "0"]
    else:
        args += ["--layers", "16,x"]
    result = run_job(*args)
    assert result.returncode == 2, result.stderr
    assert result.last_error_line.startswith("error: ")
    assert message in result.last_error_line
    assert result.stderr.strip().splitlines() == [result.last_error_line]  # no Spark output
    assert not out.exists()


def test_existing_output_is_refused_and_untouched(root, datasets) -> None:
    """With the default --if-exists error an existing output directory means exit 2, and its
    contents are exactly as before."""
    out = out_dir(root, "existing")
    (out / "model").mkdir(parents=True)
    (out / "keep.txt").write_text("earlier results\n", encoding="utf-8")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = run_job("--train", str(datasets["good"]), "--output", str(out), "--layers", "16,8")
    assert result.returncode == 2, result.stderr
    assert result.last_error_line.startswith("error: ")
    assert f"output '{out}' already exists" in result.last_error_line
    assert result.stderr.strip().splitlines() == [result.last_error_line]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "keep.txt").read_text(encoding="utf-8") == "earlier results\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
