"""The fine-tuned classifier as an MLflow pyfunc model: numpy scoring, no Spark, no pickle.

MLflow loads this file as the model's code (its models-from-code form, so nothing is
cloudpickled): `sparkdbn.tracking` logs the file's path as `python_model` and the sparkdbn model
directory (npz + model.json) as the artifact `ARTIFACT`, which `load_context` reads with
`DBNModel.load` and its checks. Scoring is `kernels.mlp.class_scores`, the forward pass of the
jobs and the ml models, so the served model predicts what the Spark model predicts.

Input: a pandas DataFrame with a `features` column holding one array per example. Output: a
DataFrame of `prediction` (the class, as a double, as the ml models give it) and
`probability` (the softmax, one array per example).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from sparkdbn.kernels.mlp import class_scores
from sparkdbn.model import DBNModel

ARTIFACT = "dbn"
FEATURES, PREDICTION, PROBABILITY = "features", "prediction", "probability"


class DBNClassifierPyfunc(PythonModel):
    """A sparkdbn classifier, loaded from its model directory."""

    def load_context(self, context: PythonModelContext) -> None:
        model = DBNModel.load(context.artifacts[ARTIFACT])
        self.width = model.sizes[0]
        self.params = model.to_mlp()

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        rows = [np.asarray(row, np.float32) for row in model_input[FEATURES]]
        wrong = [i for i, row in enumerate(rows) if row.shape != (self.width,)]
        if wrong:
            raise ValueError(
                f"column {FEATURES!r} row {wrong[0]} has shape {rows[wrong[0]].shape}; "
                f"the model expects {self.width} values per row"
            )
        X = np.stack(rows) if rows else np.empty((0, self.width), np.float32)
        logits, proba = class_scores(self.params, X)
        return pd.DataFrame({
            PREDICTION: logits.argmax(axis=1).astype(np.float64),
            PROBABILITY: list(proba.astype(np.float64)),
        })


mlflow.models.set_model(DBNClassifierPyfunc())
