"""Empty partitions on every path: a `limit`, a filter, more partitions than rows.

Each case holds partitions without a row: staged and Spark-cached training data, emitting
rounds and the store's readers (pipelined schedule), fine-tuning, prediction of the ml models
and of the engine. The Connect path is in tests/cluster/test_connect.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkdbn.config import TrainConfig
from sparkdbn.data import prepare
from sparkdbn.engine.predict import predict_packed
from sparkdbn.engine.training import train
from sparkdbn.ml import RBM, DBNClassifier


def empty_partitions(df) -> int:
    return sum(1 for n in df.rdd.glom().map(len).collect() if n == 0)


@pytest.fixture(scope="module")
def rows(spark, fashion_parquet: Path):
    return spark.read.parquet(str(fashion_parquet / "train")).cache()


@pytest.fixture(scope="module")
def sparse_rows(rows):
    """8 partitions, 5 of them empty: what a selective filter leaves."""
    df = rows.repartition(8).filter("id < 3").cache()
    assert empty_partitions(df) >= 5
    return df


def test_rbm_with_more_partitions_than_rows(rows) -> None:
    """numPartitions = 64 on 40 rows: most partitions are empty, the fit and transform work."""
    few = rows.limit(40)
    model = RBM(numHidden=4, numPartitions=64, maxIter=2, seed=1, averaging="plain").fit(few)
    hidden = np.array([r.hidden for r in model.transform(few).collect()])
    assert hidden.shape == (40, 4) and np.isfinite(hidden).all()


def test_rbm_on_a_filtered_input_keeps_its_partitions(sparse_rows) -> None:
    model = RBM(numHidden=4, maxIter=2, seed=1, averaging="plain").fit(sparse_rows)
    out = model.transform(sparse_rows)
    assert out.count() == 3
    assert np.isfinite(np.array([r.hidden for r in out.collect()])).all()


def test_pipelined_classifier_fits_and_predicts_with_empty_partitions(rows, sparse_rows) -> None:
    """Pipelined layers (emitting rounds, rough versions read back from the store) and
    fine-tuning over 16 partitions of 30 rows; prediction on a frame with empty partitions.
    The one case here at the default averaging: its rounds over empty partitions, in
    pretraining and fine-tuning (the other cases average once per epoch)."""
    few = rows.limit(30)
    model = DBNClassifier(
        layers=[16, 8], schedule="pipelined", numPartitions=16, maxIter=3, startAfter=1,
        finalEpochs=1, finetuneEpochs=2, seed=2,
    ).fit(few)
    predicted = model.transform(sparse_rows).select("id", "prediction", "probability")
    got = predicted.collect()
    assert len(got) == 3
    for row in got:
        assert 0 <= row.prediction < model.numClasses
        assert abs(sum(row.probability) - 1.0) < 1e-6


@pytest.mark.parametrize("cache_versions", ["always", "never"])
def test_engine_trains_and_scores_with_empty_partitions(
    spark, rows, sparse_rows, tmp_path: Path, cache_versions: str
) -> None:
    """The library call with the versions in Spark's cache and read from the store: training
    data with 12 partitions for 20 rows, test data with empty partitions."""
    cfg = TrainConfig(
        layers=[784, 8, 6], epochs=2, schedule="pipelined", start_after=1, final_epochs=1,
        finetune_epochs=2, partitions=12, cache_versions=cache_versions, seed=3,
        averaging="plain",
    ).validate()
    result = train(
        spark, cfg, str(tmp_path / "store"), train_data=rows.limit(20),
        test_data=sparse_rows, out=io.StringIO(),
    )
    assert result.evaluation is not None and result.evaluation.n_rows == 3
    packed = prepare(spark, sparse_rows.select("id", "features", "label"))
    try:
        assert packed.n_rows == 3
        scored = predict_packed(packed, result.model.to_mlp()).collect()
    finally:
        packed.unpersist()
    assert len(scored) == 3 and all(len(r.probability) == 10 for r in scored)


def test_empty_frame_is_refused_clearly(rows) -> None:
    from sparkdbn.errors import InputError

    with pytest.raises(InputError, match="no rows|no non-null rows"):
        RBM(numHidden=4).fit(rows.filter(F.col("id") < 0))
