"""Staged partitions (local Parquet files read by the tasks) against Spark's cache: the same
rows in the same partitions and order, bit-identical training, files that go away with the data
and never stay behind on bad input."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark import SparkFiles
from pyspark.sql import types as T

from sparkdbn.data import PACKED_X, PackedData, prepare
from sparkdbn.engine.rbm_trainer import LayerTrainer
from sparkdbn.engine.store import CorruptVersionError, RepresentationStore
from sparkdbn.errors import InputError
from sparkdbn.kernels.rbm import CDConfig, RBMParams
from sparkdbn.metrics import RunLog
from sparkdbn.staging import local_master

N, D, H = 90, 12, 5
CFG = CDConfig(k=1, learning_rate=0.1, momentum=0.5, batch_size=16)
SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("features", T.ArrayType(T.FloatType())),
        T.StructField("label", T.IntegerType()),
    ]
)


def frame(spark, X: np.ndarray):
    rows = [[i, [float(v) for v in row], i % 3] for i, row in enumerate(X)]
    return spark.createDataFrame(rows, SCHEMA)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return (np.random.default_rng(8).random((N, D)) < 0.4).astype(np.float32)


def staged_dirs() -> set[str]:
    root = Path(SparkFiles.getRootDirectory())
    return {p.name for p in root.glob("sparkdbn-staged-*")}


def trained(spark, data: PackedData, epochs: int = 2) -> np.ndarray:
    params = RBMParams.init(D, H, np.random.default_rng(42), scale=0.1)
    t = LayerTrainer(spark, 0, params, CFG, 5, epochs, RunLog("x", out=io.StringIO()))
    for _ in range(epochs):
        t.train_epoch(data)
    return t.state


@pytest.mark.parametrize("partitions", [3, 7, 19])
def test_staged_rows_train_like_cached_rows(spark, X, partitions) -> None:
    """The same partitions in the same order, so a layer trains bit-identically; 7 partitions
    of 90 rows leave some empty, which have no file; 19 make three sum groups, one of them
    split between the two tasks, which the average must add as the cached path does."""
    assert local_master(spark)
    staged = prepare(spark, frame(spark, X), partitions=partitions)
    cached = prepare(spark, frame(spark, X), partitions=partitions, stage=False)
    try:
        assert staged.parts is not None and cached.parts is None
        assert (staged.n_rows, staged.width, staged.partitions, staged.max_label) == (
            cached.n_rows, cached.width, cached.partitions, cached.max_label
        )
        assert_df_equality(staged.df, cached.df)  # row order included
        files = sorted(os.listdir(staged.parts.directory))
        assert len(files) == staged.partitions <= staged.parts.partitions == partitions
        assert np.array_equal(trained(spark, staged), trained(spark, cached))
    finally:
        staged.unpersist()
        cached.unpersist()
    assert not os.path.exists(staged.parts.directory)


def test_a_staged_hand_off_matches_the_cached_one(spark, X) -> None:
    """The sequential hand-off of staged data is staged too, with the same rows in the same
    order, sampled states included (they are seeded by partition)."""
    from sparkdbn.engine.representation import transform_cached

    params = RBMParams.init(D, H, np.random.default_rng(4), scale=0.5)
    staged = prepare(spark, frame(spark, X), partitions=3)
    cached = prepare(spark, frame(spark, X), partitions=3, stage=False)
    upper = [transform_cached(d, params, "sample", (5, 0, 2)) for d in (staged, cached)]
    try:
        assert upper[0].parts is not None and upper[1].parts is None
        assert (upper[0].n_rows, upper[0].width, upper[0].partitions) == (N, H, 3)
        assert_df_equality(upper[0].df, upper[1].df)
        assert np.array_equal(trained_upper(spark, upper[0]), trained_upper(spark, upper[1]))
    finally:
        for d in (*upper, staged, cached):
            d.unpersist()
    assert not os.path.exists(upper[0].parts.directory)


def trained_upper(spark, data: PackedData) -> np.ndarray:
    params = RBMParams.init(H, 3, np.random.default_rng(1), scale=0.1)
    t = LayerTrainer(spark, 1, params, CFG, 5, 1, RunLog("x", out=io.StringIO()))
    t.train_epoch(data)
    return t.state


def test_bad_input_leaves_no_staged_files(spark, X) -> None:
    before = staged_dirs()
    bad = X.copy()
    bad[17, 3] = np.nan
    with pytest.raises(InputError, match="row id 17"):
        prepare(spark, frame(spark, bad), partitions=2, stage=True)
    assert staged_dirs() == before


def test_a_task_written_version_is_read_by_its_tasks(spark, X, tmp_path) -> None:
    """A version the store's tasks wrote loads as staged partitions that belong to the store
    (unpersist keeps them); its deferred check still catches rewritten rows."""
    data = prepare(spark, frame(spark, X), partitions=3)
    store = RepresentationStore(spark, str(tmp_path / "store"))
    try:
        good = store.publish(data.rows("id", PACKED_X, "label"), D)
        bad = store.publish(data.rows("id", PACKED_X, "label"), D)
    finally:
        data.unpersist()
    loaded = store.load(good, deferred=True, cache=False)
    assert loaded.parts is not None and loaded.parts.partitions == 3
    assert_df_equality(loaded.df, store.read(good), ignore_row_order=True)
    trained(spark, loaded, epochs=1)
    assert loaded.check is None  # settled by the epoch
    loaded.unpersist()
    assert store.verify(good)

    part = Path(bad.path) / "part-00001.parquet"
    table = pq.read_table(part)
    x = np.frombuffer(table.column(PACKED_X).combine_chunks().buffers()[2], np.float32) * 2
    halved = pa.BinaryArray.from_buffers(
        pa.binary(), table.num_rows,
        [None, table.column(PACKED_X).combine_chunks().buffers()[1], pa.py_buffer(x)],
    )
    pq.write_table(table.set_column(1, PACKED_X, halved), part)
    with pytest.raises(CorruptVersionError, match="version 2 "):
        trained(spark, store.load(bad, deferred=True, cache=False), epochs=1)
    cached = store.load(good, cache=True)  # Spark's cache when asked for
    assert cached.parts is None
    cached.unpersist()
