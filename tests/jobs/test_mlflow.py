"""MLflow tracking end to end, against a real local MLflow store (SQLite in a temporary
directory) read back with MLflow's own client: the main job's run (params, per-epoch metric
histories, final metrics, tags, artifacts), its pyfunc model against the Spark model (loaded,
and as a Spark UDF), an estimator's nested run, a failed run, and tracking off.

The job runs through its main in this process, on the test session (`run_in_process`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from sparkdbn.config import SETTINGS
from sparkdbn.engine.predict import score_columns
from sparkdbn.ml import DBNClassifier
from sparkdbn.model import DBNModel
from tests import conftest
from tests.reliability.conftest import run_in_process

EPOCHS, FINETUNE_EPOCHS = 2, 2
TINY = ["--layers", "784,16", "--epochs", str(EPOCHS), "--finetune-epochs",
        str(FINETUNE_EPOCHS), "--partitions", "2", "--seed", "3"]


@pytest.fixture(autouse=True)
def tracking_uri_restored():
    """The tests' own mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which later tests
    in this worker, and the jobs they start, would inherit and track to."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tracking URI of a fresh SQLite store (MLflow 3 refuses its file store by default),
    with the experiments the tests log to. Each has its artifact location beside the store:
    a new experiment's default is ./mlruns, in the working directory."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    for name in ("job", "notebook", "failing", "zip"):
        client.create_experiment(name, artifact_location=(root / name).as_uri())
    return uri


def train_tracked(store: str, experiment: str, output: Path, *args: str):
    return run_in_process(
        "train_dbn", "--mlflow", "--mlflow-tracking-uri", store, "--mlflow-experiment",
        experiment, "--output", str(output), *args,
    )


def only_run(store: str, experiment: str):
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def job(store: str, fashion_parquet: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tracked run of the main job: (its output, its MLflow run)."""
    output = tmp_path_factory.mktemp("tracked") / "out"
    done = train_tracked(
        store, "job", output, "--train", str(fashion_parquet / "train"), "--test",
        str(fashion_parquet / "test"), *TINY,
    )
    assert done.returncode == 0, done.stderr
    return output, only_run(store, "job")


def test_the_job_logs_settings_metrics_tags_and_outputs(store: str, job) -> None:
    output, run = job
    client = MlflowClient(store)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert set(params) == {str(s.key) for s in SETTINGS}
    assert params["layers"] == "784,16" and params["epochs"] == str(EPOCHS)
    assert params["mlflow_experiment"] == "job"

    def history(key: str) -> list[int]:
        return [m.step for m in client.get_metric_history(run.info.run_id, key)]

    for key in ("layer_0_recon_error", "layer_0_replica_divergence", "layer_0_epoch_seconds"):
        assert history(key) == list(range(1, EPOCHS + 1)), key
    for key in ("finetune_loss", "finetune_train_accuracy", "finetune_replica_divergence",
                "finetune_learning_rate"):
        assert history(key) == list(range(1, FINETUNE_EPOCHS + 1)), key

    written = json.loads((output / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == written["test_accuracy"]
    assert run.data.metrics["makespan_seconds"] == written["makespan_seconds"]
    recon = [m.value for m in client.get_metric_history(run.info.run_id, "layer_0_recon_error")]
    assert recon == [e["recon_error"] for e in written["layers"][0]["epochs"]]

    tags = run.data.tags
    assert tags["schedule"] == "sequential" and tags["partitions"] == "2"
    assert tags["spark_master"] == "local[2]" and tags["sparkdbn_version"]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "evaluation.txt", "model", "learning_curves.png", "gantt.png",
            "filters.png"} <= artifacts
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.json", "model/layer_0.npz", "model/classifier.npz"} == model_files


def logged_model_uri(store: str, run) -> str:
    """The run's pyfunc model, as MLflow 3 links it to the run (models:/<id>)."""
    client = MlflowClient(store)
    (model,) = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    return model.model_uri


def test_the_pyfunc_model_predicts_what_the_spark_model_predicts(
    spark, store: str, job, fashion_parquet: Path
) -> None:
    output, run = job
    mlflow.set_tracking_uri(store)
    test = spark.read.parquet(str(fashion_parquet / "test")).orderBy("id")
    spark_scores = score_columns(test, DBNModel.load(output / "model"), "features", ["id"])
    expected = spark_scores.orderBy("id").toPandas()

    served = mlflow.pyfunc.load_model(logged_model_uri(store, run))
    schema = served.metadata.get_input_schema()
    assert schema.input_names() == ["features"]
    got = served.predict(test.select("features").toPandas())
    assert list(got.columns) == ["prediction", "probability"]
    np.testing.assert_array_equal(got["prediction"], expected["prediction"])
    # The same float32 function; Arrow batches of other sizes round a few last bits otherwise.
    np.testing.assert_allclose(
        np.stack(got["probability"]), np.stack(expected["probability"]), rtol=1e-5, atol=1e-7
    )

    udf = mlflow.pyfunc.spark_udf(spark, logged_model_uri(store, run))
    scored = test.withColumn("scored", udf("features")).select(
        "id", F.col("scored.prediction").alias("prediction")
    )
    np.testing.assert_array_equal(
        scored.orderBy("id").toPandas()["prediction"], expected["prediction"]
    )


def test_an_estimator_logs_a_nested_run_inside_the_active_one(
    spark, store: str, fashion_parquet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    experiment = MlflowClient(store).get_experiment_by_name("notebook").experiment_id
    train = spark.read.parquet(str(fashion_parquet / "train"))
    test = spark.read.parquet(str(fashion_parquet / "test"))
    with mlflow.start_run(experiment_id=experiment) as parent:
        model = DBNClassifier(layers=[16], maxIter=1, finetuneEpochs=1, numPartitions=2).fit(train)
    client = MlflowClient(store)
    (child,) = client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert child.info.status == "FINISHED" and child.info.run_name == "DBNClassifier"
    assert child.data.params["layers"] == "784,16"
    assert len(client.get_metric_history(child.info.run_id, "finetune_loss")) == 1
    served = mlflow.pyfunc.load_model(logged_model_uri(store, child))
    rows = model.transform(test).select("features", "prediction").toPandas()
    got = served.predict(rows[["features"]])
    np.testing.assert_array_equal(got["prediction"], rows["prediction"])


def test_a_failing_run_is_marked_failed_with_its_error(
    store: str, fashion_parquet: Path, tmp_path: Path
) -> None:
    before = os.environ.get("MLFLOW_TRACKING_URI")
    done = train_tracked(
        store, "failing", tmp_path / "out", "--train", str(fashion_parquet / "train"),
        "--layers", "100,16", "--epochs", "1",
    )
    assert done.returncode == 2
    run = only_run(store, "failing")
    assert run.info.status == "FAILED"
    assert "starts with 100 visible units" in run.data.tags["error"]
    assert not (tmp_path / "out").exists()
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # the URI was the run's alone


FROM_ZIP = """
import sys
from pyspark.sql import SparkSession
sys.path.insert(0, sys.argv[1])
import sparkdbn
assert sparkdbn.__file__.startswith(sys.argv[1]), sparkdbn.__file__
from sparkdbn.jobs.train_dbn import main

SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
main(sys.argv[2:])
"""


def test_a_job_from_the_py_files_zip_logs_its_pyfunc_model(
    store: str, pyfiles_zip: Path, fashion_parquet: Path, tmp_path: Path
) -> None:
    """Under spark-submit --py-files sparkdbn.zip the package is no directory: the pyfunc
    model's code is read from the zip as a resource of the package."""
    result = subprocess.run(
        [sys.executable, "-c", FROM_ZIP, str(pyfiles_zip), "--mlflow", "--mlflow-tracking-uri",
         store, "--mlflow-experiment", "zip", "--train", str(fashion_parquet / "train"),
         "--test", str(fashion_parquet / "test"), "--output", str(tmp_path / "out"),
         "--layers", "784,8", "--epochs", "1", "--finetune-epochs", "1"],
        cwd=tmp_path, env=conftest.job_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(store)
    served = mlflow.pyfunc.load_model(logged_model_uri(store, only_run(store, "zip")))
    got = served.predict(pd.DataFrame({"features": [np.full(784, 0.5)]}))
    assert list(got.columns) == ["prediction", "probability"]


OFF = """
import sys
from pyspark.sql import SparkSession
from sparkdbn.jobs.train_dbn import main
from sparkdbn.ml import DBNClassifier

spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
train, out = sys.argv[1], sys.argv[2]
main(["--train", train, "--output", out, "--layers", "784,8", "--epochs", "1",
      "--finetune-epochs", "1"])
DBNClassifier(layers=[8], maxIter=1, finetuneEpochs=1).fit(spark.read.parquet(train))
assert "mlflow" not in sys.modules, "mlflow was imported"
print("no mlflow")
"""


def test_tracking_off_never_imports_mlflow(fashion_parquet: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in conftest.job_env().items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(OFF), str(fashion_parquet / "train"),
         str(tmp_path / "out")],
        cwd=conftest.REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("no mlflow")
