"""The jobs' predictions and evaluation: `kernels.mlp.class_scores` inside mapInArrow, over
packed rows (main and evaluate jobs) or the user's columns (predict job, as the ml models)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdbn.columns import features_to_numpy, unpack_rows
from sparkdbn.data import PACKED_LABEL, PACKED_X, PackedData
from sparkdbn.engine.threads import task_blas_threads
from sparkdbn.kernels.mlp import MLPParams, class_scores, predict_proba
from sparkdbn.model import DBNModel

PREDICTION, PROBABILITY, HIDDEN = "prediction", "probability", "hidden"


def _predict_batches(params: MLPParams, keep: list[str]):
    width = params.sizes[0]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            with task_blas_threads():
                proba = predict_proba(params, unpack_rows(batch.column(PACKED_X), width))
            columns = {name: batch.column(name) for name in keep}
            columns["prediction"] = pa.array(proba.argmax(axis=1).astype(np.float64))
            columns["probability"] = _probability_column(proba)
            yield pa.RecordBatch.from_pydict(columns)

    return run


def predict_packed(data: PackedData, params: MLPParams) -> DataFrame:
    """id (and label) with `prediction` (double) and `probability` (array<double>)."""
    keep = [c for c in data.df.columns if c in ("id", PACKED_LABEL)]
    schema = ", ".join(
        f"{c} long" for c in keep
    ) + ", prediction double, probability array<double>"
    return data.df.mapInArrow(_predict_batches(params, keep), schema)


def score_columns(
    df: DataFrame, model: DBNModel, features_col: str, keep: list[str], hidden: bool = False
) -> DataFrame:
    """`keep` as they are, then `prediction` (double: the class of the largest logit, as the
    ml models say) and `probability` (array<double>), and with `hidden` the top layer's
    representation (array<float>, P(h = 1 | v) of the fine-tuned stack).

    The caller has checked the features (`data.check_features`): every row has the model's
    width, so a row here either scores or the task fails.
    """
    params, width = model.to_mlp(), model.sizes[0]
    fields = {f.name: f for f in df.schema.fields}
    out = [fields[name] for name in keep] + [
        T.StructField(PREDICTION, T.DoubleType()),
        T.StructField(PROBABILITY, T.ArrayType(T.DoubleType())),
    ]
    if hidden:
        out.append(T.StructField(HIDDEN, T.ArrayType(T.FloatType())))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            X = features_to_numpy(batch.column(features_col))[0].reshape(-1, width)
            with task_blas_threads():
                logits, proba = class_scores(params, X)
                top = model.transform(X) if hidden else None
            columns = {name: batch.column(name) for name in keep}
            columns[PREDICTION] = pa.array(logits.argmax(axis=1).astype(np.float64))
            columns[PROBABILITY] = _probability_column(proba)
            if top is not None:
                columns[HIDDEN] = _list_column(top, pa.float32())
            yield pa.RecordBatch.from_pydict(columns)

    read = list(dict.fromkeys([*keep, features_col]))
    return df.select(*read).mapInArrow(run, T.StructType(out))


@dataclass
class Evaluation:
    accuracy: float
    n_rows: int
    per_class_accuracy: list[float | None]
    confusion: list[list[int]]  # rows: true label, columns: predicted

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "n_rows": self.n_rows,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion_matrix": self.confusion,
        }

    def table(self) -> str:
        """Readable per-class accuracy and confusion matrix."""
        k = len(self.confusion)
        head = "true\\pred " + " ".join(f"{j:>6d}" for j in range(k)) + "   accuracy"
        lines = [f"accuracy {self.accuracy:.4f} on {self.n_rows} rows", head]
        for i, row in enumerate(self.confusion):
            acc = self.per_class_accuracy[i]
            shown = "     -" if acc is None else f"{acc:10.4f}"
            lines.append(f"{i:>9d} " + " ".join(f"{c:>6d}" for c in row) + f" {shown}")
        return "\n".join(lines)


def evaluate(predictions: DataFrame, n_classes: int) -> Evaluation:
    """Confusion matrix aggregated in Spark (at most n_classes² rows reach the driver)."""
    counts = (
        predictions.groupBy(PACKED_LABEL, F.col("prediction").cast("long").alias("pred"))
        .count()
        .collect()
    )
    k = max([n_classes] + [int(r[PACKED_LABEL]) + 1 for r in counts])
    confusion = np.zeros((k, k), np.int64)
    for r in counts:
        confusion[int(r[PACKED_LABEL]), int(r["pred"])] += int(r["count"])
    n = int(confusion.sum())
    totals = confusion.sum(axis=1)
    per_class = [
        None if totals[i] == 0 else float(confusion[i, i] / totals[i]) for i in range(k)
    ]
    return Evaluation(float(np.trace(confusion) / n), n, per_class, confusion.tolist())


def _probability_column(proba: np.ndarray) -> pa.Array:
    return _list_column(proba, pa.float64())


def _list_column(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """One list per row of a 2-D array."""
    flat = pa.array(np.ascontiguousarray(values, kind.to_pandas_dtype()).reshape(-1), kind)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1]).cast(pa.list_(kind))
