"""jobs/predict.py end to end: the real CLI in subprocesses (one from a wheel installed in a
fresh virtualenv, through its console script) to Parquet and to catalog tables, a kill and a
resumed rerun, and the bad inputs in process on the test session (where Spark is up already).

The model is a 784-16 DBN trained for one epoch and one fine-tuning epoch on the sample: the
predictions are compared with the ml model's own transform, not with their own code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sparkdbn.model import DBNModel
from tests.conftest import REPO, job_env, start_job
from tests.jobs.conftest import assert_from_wheel, wheel_env
from tests.reliability.conftest import run_in_process

pytestmark = pytest.mark.slow
ROWS = 500  # the sample's test split


@pytest.fixture(scope="module")
def trained(spark, fashion_parquet: Path, tmp_path_factory: pytest.TempPathFactory):
    """(model directory, the ml model) of a quickly trained classifier."""
    from sparkdbn.ml import DBNClassifier

    train = spark.read.parquet(str(fashion_parquet / "train"))
    model = DBNClassifier(layers=[16], maxIter=1, finetuneEpochs=1, averaging="plain").fit(train)
    directory = tmp_path_factory.mktemp("predict") / "model"
    model.stack.save(directory)
    return directory, model


@pytest.fixture(scope="module")
def expected(spark, trained, fashion_parquet: Path) -> dict[int, tuple[float, np.ndarray]]:
    """id → (prediction, probability) from DBNClassificationModel.transform."""
    rows = trained[1].transform(spark.read.parquet(str(fashion_parquet / "test"))).collect()
    return {r["id"]: (r["prediction"], r["probability"].toArray()) for r in rows}


def read(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


def assert_predictions(table: dict[str, list], expected: dict) -> None:
    assert len(table["id"]) == ROWS and set(table["id"]) == set(expected)
    for i, pred, proba in zip(table["id"], table["prediction"], table["probability"],
                              strict=True):
        assert pred == expected[i][0]
        np.testing.assert_allclose(proba, expected[i][1], rtol=0, atol=1e-12)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_console_script_from_a_wheel_writes_the_ml_models_predictions(
    wheel_venv: Path, trained, expected, fashion_parquet: Path, tmp_path: Path
) -> None:
    env = wheel_env(wheel_venv)
    assert_from_wheel(wheel_venv, tmp_path)
    output = tmp_path / "scored"
    result = subprocess.run(
        [wheel_venv / "bin" / "sparkdbn-predict", "--model", str(trained[0]), "--data",
         str(fashion_parquet / "test"), "--output", str(output), "--keep", "label",
         "--features", "--log-format", "json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert events(result.stdout)[-1]["event"] == "done"
    assert (output / "_SUCCESS").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".scored")]
    table = read(output)
    assert_predictions(table, expected)
    assert sorted(table) == ["hidden", "id", "label", "prediction", "probability"]
    stack = DBNModel.load(trained[0])
    X = pq.read_table(fashion_parquet / "test").to_pydict()
    features = dict(zip(X["id"], X["features"], strict=True))
    first = table["id"][0]
    np.testing.assert_allclose(
        table["hidden"][0], stack.transform(np.asarray([features[first]], np.float32))[0],
        rtol=0, atol=1e-6,
    )


def test_killed_run_then_resume_leaves_one_complete_output(
    trained, expected, fashion_parquet: Path, tmp_path: Path
) -> None:
    """SIGKILL once the job says it starts writing: nothing at the target; the rerun with
    resume removes the killed run's temporary sibling and commits the output, and a third run
    finds it and does nothing."""
    output = tmp_path / "scored"
    args = ("--model", str(trained[0]), "--data", str(fashion_parquet / "test"),
            "--output", str(output), "--if-exists", "resume", "--log-format", "json")
    proc = start_job("predict", *args)
    for line in proc.stdout:
        if json.loads(line)["event"] == "start":
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not output.exists()  # the write takes far longer than the kill
    # What a kill mid-write leaves, made sure of whether Spark had begun its part files or not.
    dead = tmp_path / ".scored.tmp-dead0000"
    dead.mkdir(exist_ok=True)
    (dead / "part-00000.parquet").write_bytes(b"half")
    rerun = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "predict.py"), *args],
        cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored"]
    assert_predictions(read(output), expected)
    again = run_in_process("predict", *args)
    assert again.returncode == 0 and events(again.stdout)[-1]["skipped"] is True


def table_env(root: Path) -> dict[str, str]:
    """Spark's built-in catalog kept in a Derby metastore under `root` (the jobs run there, so
    derby.log lands there too), with its warehouse beside it, so that the tables outlive each
    application; set as pyspark's submit args."""
    conf = {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(root / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={root / 'metastore'};create=true",
    }
    args = " ".join(f"--conf {key}={value}" for key, value in conf.items())
    return job_env(PYSPARK_SUBMIT_ARGS=f"{args} pyspark-shell")


def run_predict(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "predict.py"), *args, "--log-format", "json"],
        cwd=root, env=table_env(root), capture_output=True, text=True, timeout=600,
    )


def test_to_a_table_through_the_cli(
    trained, expected, fashion_parquet: Path, tmp_path: Path
) -> None:
    """Parquet → table:spark_catalog.default.scored, features kept: the table's files hold
    the predictions and nothing else is left in the warehouse (reading tables, overwrite,
    resume and error are in process below, on the test session's catalog)."""
    result = run_predict(tmp_path, "--model", str(trained[0]), "--data",
                         str(fashion_parquet / "test"), "--output",
                         "table:spark_catalog.default.scored", "--keep", "label,features")
    assert result.returncode == 0, result.stderr
    assert [e["event"] for e in events(result.stdout)] == ["start", "done"]
    assert sorted(p.name for p in (tmp_path / "warehouse").iterdir()) == ["scored"]
    table = read(tmp_path / "warehouse" / "scored")
    assert_predictions(table, expected)
    assert sorted(table) == ["features", "id", "label", "prediction", "probability"]


# --- bad input: one line, exit 2, nothing written (in process, on the test session) ----------


@pytest.fixture(scope="module")
def other_width(tmp_path_factory: pytest.TempPathFactory, trained) -> Path:
    """A classifier for 10 features, and the same model without its softmax layer."""
    from sparkdbn.kernels.rbm import RBMParams
    from sparkdbn.model import Softmax

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("models")
    layer = RBMParams(rng.standard_normal((10, 4), np.float32), np.zeros(10, np.float32),
                      np.zeros(4, np.float32))
    DBNModel([layer], classifier=Softmax(np.ones((4, 3), np.float32),
                                         np.zeros(3, np.float32))).save(root / "narrow")
    stack = DBNModel.load(trained[0])
    DBNModel(stack.layers, stack.visible).save(root / "unsupervised")
    return root


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("width", "column 'features' has 784 values per row, the model expects 10"),
        ("no classifier", "has no classifier layer"),
        ("keep", "column 'nope' not found"),
        ("features col", "features column 'pixels' not found"),
        ("no table", "cannot read table 'default.absent'"),
        ("bad name", "'table:absent' is not a table name"),
        ("exists", "already exists (use --if-exists overwrite)"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    spark, case: str, message: str, trained, other_width: Path, fashion_parquet: Path,
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    model, data = str(trained[0]), str(fashion_parquet / "test")
    extra: list[str] = []
    if case == "width":
        model = str(other_width / "narrow")
    elif case == "no classifier":
        model = str(other_width / "unsupervised")
    elif case == "keep":
        extra = ["--keep", "label,nope"]
    elif case == "features col":
        extra = ["--features-col", "pixels"]
    elif case == "no table":
        data = "table:default.absent"
    elif case == "bad name":
        data = "table:absent"
    elif case == "exists":
        output.mkdir()
    result = run_in_process("predict", "--model", model, "--data", data,
                            "--output", str(output), *extra)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if case == "exists" else [])


# --- tables in the test session's in-memory catalog (in process) ------------------------------


@pytest.fixture(scope="module")
def database(
    spark, fashion_parquet: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database whose tables live in a temporary directory, holding the test split."""
    location = tmp_path_factory.mktemp("catalog")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS sparkdbn_predict LOCATION '{location}'")
    for split in ("train", "test"):
        frame = spark.read.parquet(str(fashion_parquet / split))
        frame.write.saveAsTable(f"sparkdbn_predict.{split}")
    yield "sparkdbn_predict"
    spark.sql("DROP DATABASE sparkdbn_predict CASCADE")


def test_overwrite_replaces_a_table_and_evaluate_reads_one(
    spark, database: str, trained, expected, fashion_parquet: Path, tmp_path: Path
) -> None:
    target = f"table:{database}.scored"
    spark.range(3).write.saveAsTable(f"{database}.scored")  # an older, different table
    result = run_in_process("predict", "--model", str(trained[0]), "--data",
                            f"table:{database}.test", "--output", target, "--if-exists",
                            "overwrite")
    assert result.returncode == 0, result.stderr
    tables = [t.name for t in spark.catalog.listTables(database)]
    assert "scored" in tables and not [t for t in tables if "staging" in t]
    assert_predictions(spark.table(f"{database}.scored").toArrow().to_pydict(), expected)
    from_table = run_in_process("evaluate", "--model", str(trained[0]), "--data",
                                f"table:{database}.test", "--output", str(tmp_path / "t.json"))
    from_path = run_in_process("evaluate", "--model", str(trained[0]), "--data",
                               str(fashion_parquet / "test"), "--output", str(tmp_path / "p.json"))
    assert from_table.returncode == 0 and from_path.returncode == 0, from_table.stderr
    assert (tmp_path / "t.json").read_text() == (tmp_path / "p.json").read_text()


def test_train_dbn_reads_tables_from_its_config_and_flags(
    database: str, fashion_parquet: Path, tmp_path: Path
) -> None:
    """`train = "table:…"` in the TOML and `--test table:…` train the model the Parquet
    paths train, bit for bit."""
    config = tmp_path / "tables.toml"
    config.write_text(f'train = "table:{database}.train"\n')
    common = ("--layers", "784,8", "--epochs", "1", "--finetune-epochs", "1",
              "--averaging", "plain")
    from_tables = run_in_process("train_dbn", "--config", str(config), "--test",
                                 f"table:{database}.test", "--output", str(tmp_path / "t"),
                                 *common)
    from_paths = run_in_process("train_dbn", "--train", str(fashion_parquet / "train"),
                                "--test", str(fashion_parquet / "test"), "--output",
                                str(tmp_path / "p"), *common)
    assert from_tables.returncode == 0 and from_paths.returncode == 0, from_tables.stderr
    ours, theirs = DBNModel.load(tmp_path / "t" / "model"), DBNModel.load(tmp_path / "p" / "model")
    assert np.array_equal(ours.layers[0].W, theirs.layers[0].W)
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in "tp"]
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"]


@pytest.mark.parametrize(("if_exists", "code"), [("resume", 0), ("error", 2)])
def test_an_existing_table_is_kept_or_refused_before_any_work(
    spark, database: str, trained, if_exists: str, code: int
) -> None:
    """Against a table that predict could not even read: nothing is read or written."""
    spark.range(2).write.mode("overwrite").saveAsTable(f"{database}.kept")
    result = run_in_process("predict", "--model", str(trained[0]), "--data",
                            f"table:{database}.absent", "--output", f"table:{database}.kept",
                            "--if-exists", if_exists)
    assert result.returncode == code, result.stderr
    assert spark.table(f"{database}.kept").count() == 2


def test_partition_by_an_output_column(spark, trained, expected, fashion_parquet: Path,
                                       tmp_path: Path) -> None:
    output = tmp_path / "scored"
    result = run_in_process("predict", "--model", str(trained[0]), "--data",
                            str(fashion_parquet / "test"), "--output", str(output),
                            "--partition-by", "prediction")
    assert result.returncode == 0, result.stderr
    folders = {p.name for p in output.iterdir() if p.is_dir()}
    assert folders == {f"prediction={p}" for p, _ in expected.values()}
    back = spark.read.parquet(str(output)).toArrow().to_pydict()
    assert_predictions(back, expected)
