"""Warm a fresh layer application up while it waits for its first input version.

In a new application the first load of a version and the first epoch on it are slow: the
Python workers start, the JVM compiles its Parquet, cache and Arrow paths. On one core the
first load measured 8.7 s cold against 2.5 s warm, all of it on the pipeline's critical path.
An upper layer has nothing to do until the layer below publishes, so it runs the same kinds of
stage (a store write, a load, one CD round that checks it) on a little random data
first, in a scratch store beside its input store (which every application can reach), and
removes it afterwards. Nothing it computes is kept.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from sparkdbn.columns import pack_rows
from sparkdbn.data import PACKED_ID, PACKED_X
from sparkdbn.engine.averaging import average_round
from sparkdbn.engine.filesystem import filesystem
from sparkdbn.engine.rbm_trainer import initial_state, rbm_step
from sparkdbn.engine.store import RepresentationStore
from sparkdbn.kernels.rbm import CDConfig, RBMParams

WARMUP_DIR = "_warmup"
WARMUP_ROWS = 2000


def warm_up(
    spark: SparkSession,
    below: RepresentationStore,
    reader: str,
    n_visible: int,
    n_hidden: int,
    cfg: CDConfig,
    partitions: int | None,
    cache: bool = True,
) -> float:
    """Run a write, a load (`cache` as the layer's loads will) and a CD round of this layer's
    shape, over `partitions` partitions (None: Spark's default); return the seconds spent."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    X = rng.random((WARMUP_ROWS, n_visible), dtype=np.float32)
    ids = pa.array(np.arange(WARMUP_ROWS), pa.int64())
    table = pa.table({PACKED_ID: ids, PACKED_X: pack_rows(X)})
    parent = f"{below.base}/{WARMUP_DIR}"
    base = f"{parent}/{reader}"
    fs = filesystem(spark, base)
    fs.delete(base, recursive=True)  # a killed run's leftovers
    try:
        scratch = RepresentationStore(spark, base, keep=1)
        rows = spark.createDataFrame(table)
        if partitions is not None:
            rows = rows.repartition(partitions)
        version = scratch.publish(rows, n_visible)
        data = scratch.load(version, deferred=True, cache=cache)
        try:
            params = RBMParams.init(n_visible, n_hidden, rng)
            step = rbm_step(n_visible, n_hidden, cfg, checksum=data.check is not None)
            average_round(
                data.rows(PACKED_X), initial_state(params), step, (0,), data.partitions
            )
        finally:
            data.unpersist()
    finally:
        fs.delete(base, recursive=True)
        if not fs.list(parent):
            fs.delete(parent, recursive=True)
    return time.perf_counter() - start
