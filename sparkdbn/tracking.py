"""MLflow tracking of a training run, for the main job and the ml estimators alike.

Tracking is on when the `mlflow` setting is true, or, while it is unset, when
`mlflow_tracking_uri`, `mlflow_experiment` or MLFLOW_TRACKING_URI is set or an MLflow run is
active (a notebook's); `mlflow = false` turns it off. The estimators have no params for it:
they follow the same rule, so a fit logs under MLFLOW_TRACKING_URI or inside an active run.
With tracking off nothing here imports MLflow, and the trainers see the plain reporter.

Each training is a run of its own, nested under the active run if there is one: a run holds
one set of params, and a `CrossValidator` fits many. The run gets every setting as a param;
the per-epoch metrics as the trainers report them (`observe`: the reporter's events, the one
place progress flows through), with `step` the epoch from 1; the final metrics, tags and the
outputs as artifacts (`log_outputs`); and a fine-tuned classifier also as a pyfunc model
(`sparkdbn/serving.py`). A run that fails is marked FAILED, with its error as a tag and its
traceback as error.txt. `mlflow_tracking_uri` holds for the run only: mlflow.set_tracking_uri
also sets MLFLOW_TRACKING_URI, which would send the caller's later trainings, and the
processes it starts, to that store too.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

import sparkdbn
from sparkdbn.config import TrainConfig
from sparkdbn.engine.training import TrainingResult
from sparkdbn.errors import InputError
from sparkdbn.logs import Reporter
from sparkdbn.outputs import metrics_dict, write_outputs

SERVING = "serving.py"  # a resource of the package: a file, or inside the zip of --py-files
PYFUNC_NAME = "classifier"  # the pyfunc model's name in the run
MODEL_DIR = "model"  # OUTPUT/model: the npz + JSON model directory


def tracking_on(cfg: TrainConfig) -> bool:
    """The rule of the module's docstring; never imports MLflow, so a run that is active
    can only exist if something else imported it."""
    if cfg.mlflow is not None:
        return cfg.mlflow
    if cfg.mlflow_tracking_uri or cfg.mlflow_experiment or os.environ.get("MLFLOW_TRACKING_URI"):
        return True
    mlflow = sys.modules.get("mlflow")
    return mlflow is not None and mlflow.active_run() is not None


class Tracking:
    """Tracking off: the interface the trainers call, doing nothing."""

    @contextmanager
    def run(self, spark: SparkSession, name: str) -> Iterator[None]:
        """The tracked run around a training and its outputs."""
        yield

    def watch(self, reporter: Reporter) -> Reporter:
        """The reporter the trainers report to."""
        return reporter

    def log_outputs(self, result: TrainingResult, directory: str | Path | None = None) -> None:
        """A finished run's outputs: those `write_outputs` wrote to `directory`, or, without
        one, written to a temporary directory first."""


def tracking_for(cfg: TrainConfig) -> Tracking:
    """The tracking of a run of `cfg`. Called before any Spark work, so that a missing mlflow
    is a bad-input error, not a failure after training."""
    if not tracking_on(cfg):
        return Tracking()
    if importlib.util.find_spec("mlflow") is None:
        raise InputError(
            "MLflow tracking is on (setting mlflow, mlflow_tracking_uri or mlflow_experiment, "
            "or MLFLOW_TRACKING_URI) but mlflow is not installed: pip install "
            "'sparkdbn[mlflow]', or turn tracking off with --no-mlflow (mlflow = false)"
        )
    return MlflowTracking(cfg)


class MlflowTracking(Tracking):
    """Tracking on: one MLflow run per training."""

    def __init__(self, cfg: TrainConfig) -> None:
        import mlflow

        self.mlflow = mlflow
        self.cfg = cfg
        self.client = mlflow.MlflowClient(cfg.mlflow_tracking_uri)
        self.run_id: str | None = None
        self._lock = threading.Lock()  # events come from the layers' driver threads too

    @contextmanager
    def run(self, spark: SparkSession, name: str) -> Iterator[None]:
        uri, before = self.cfg.mlflow_tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            self.mlflow.set_tracking_uri(uri)
        try:
            with self._run(spark, name):
                yield
        finally:
            if uri:
                self.mlflow.set_tracking_uri(before)  # None unsets MLFLOW_TRACKING_URI too

    @contextmanager
    def _run(self, spark: SparkSession, name: str) -> Iterator[None]:
        mlflow = self.mlflow
        parent = mlflow.active_run()
        experiment_id = parent.info.experiment_id if parent is not None else None
        if self.cfg.mlflow_experiment:
            experiment = self.client.get_experiment_by_name(self.cfg.mlflow_experiment)
            experiment_id = (
                experiment.experiment_id if experiment is not None
                else mlflow.create_experiment(self.cfg.mlflow_experiment)
            )
        tags = {
            "schedule": self.cfg.schedule,
            "spark_master": spark.conf.get("spark.master", None) or "unknown",
            "sparkdbn_version": sparkdbn.__version__,
        }
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=name, nested=parent is not None, tags=tags
        ) as active:
            self.run_id = active.info.run_id
            mlflow.log_params({key: _param(v) for key, v in self.cfg.to_dict().items()})
            try:
                yield
            except BaseException as err:
                mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
                mlflow.log_text(traceback.format_exc(), "error.txt")
                raise  # start_run's context marks the run FAILED

    def watch(self, reporter: Reporter) -> Reporter:
        return reporter.observed(self.observe)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """An epoch's metrics, as the trainers report them, at step = its epoch (from 1)."""
        if event == "epoch":
            prefix = f"layer_{fields['layer']}_"
            metrics = {"recon_error": fields["recon_error"], "epoch_seconds": fields["seconds"]}
        elif event == "finetune_epoch":
            prefix = f"{str(fields['stage']).replace('-', '')}_"
            metrics = {
                "loss": fields["loss"], "train_accuracy": fields["train_accuracy"],
                "learning_rate": fields["learning_rate"], "epoch_seconds": fields["seconds"],
            }
        else:
            return
        if fields.get("replica_divergence"):
            metrics["replica_divergence"] = fields["replica_divergence"][-1]  # the last round's
        with self._lock:
            for key, value in metrics.items():
                self.client.log_metric(self.run_id, prefix + key, value, step=fields["epoch"])

    def log_outputs(self, result: TrainingResult, directory: str | Path | None = None) -> None:
        if directory is None:
            with tempfile.TemporaryDirectory(prefix="sparkdbn-mlflow-") as tmp:
                write_outputs(result, Path(tmp, "run"))
                self.log_outputs(result, Path(tmp, "run"))
            return
        mlflow, metrics = self.mlflow, metrics_dict(result)
        final = {
            key: metrics[key]
            for key in ("test_accuracy", "baseline_test_accuracy", "makespan_seconds")
            if metrics.get(key) is not None
        }
        mlflow.log_metrics(final)
        mlflow.set_tag("partitions", str(metrics["partitions"]))
        mlflow.log_artifacts(str(directory))
        if result.model.classifier is not None:
            self._log_pyfunc(Path(directory, MODEL_DIR))

    def _log_pyfunc(self, model_dir: Path) -> None:
        """The classifier as a pyfunc model scored by sparkdbn/serving.py, from its files."""
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Array, ColSpec, Schema

        from sparkdbn.serving import ARTIFACT, FEATURES, PREDICTION, PROBABILITY

        signature = ModelSignature(
            inputs=Schema([ColSpec(Array("double"), FEATURES)]),
            outputs=Schema([ColSpec("double", PREDICTION), ColSpec(Array("double"), PROBABILITY)]),
        )
        source = importlib.resources.files(sparkdbn).joinpath(SERVING).read_text()
        with tempfile.TemporaryDirectory(prefix="sparkdbn-pyfunc-") as tmp:
            code = Path(tmp, SERVING)
            code.write_text(source)
            self.mlflow.pyfunc.log_model(
                name=PYFUNC_NAME,
                python_model=str(code),
                artifacts={ARTIFACT: str(model_dir)},
                signature=signature,
                pip_requirements=[
                    f"sparkdbn=={sparkdbn.__version__}", f"numpy=={np.__version__}"
                ],
            )


def _param(value: Any) -> str:
    """A setting as MLflow keeps params: text; a list of sizes as the flag takes it."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
