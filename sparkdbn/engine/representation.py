"""Hidden representations of a whole training set: the next layer's input."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema

from sparkdbn.columns import pack_rows, unpack_rows
from sparkdbn.config import REPRESENTATIONS
from sparkdbn.data import PACKED_ID, PACKED_LABEL, PACKED_X, PackedData
from sparkdbn.engine.threads import task_blas_threads
from sparkdbn.kernels.rbm import DTYPE, RBMParams, hidden_probs, sample_bernoulli
from sparkdbn.staging import StagedParts, StagedWriter, row_count, stage_directory, written


def hidden_batches(params: RBMParams, mode: str, seed_key: tuple[int, ...]):
    """The mapInArrow function behind `hidden_frame`: x becomes the layer's hidden units.

    Samples are drawn from a generator seeded by (seed key, partition), so they repeat.
    """
    if mode not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {mode!r}")

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        rng = np.random.default_rng([*seed_key, TaskContext.get().partitionId()])
        for batch in batches:
            X = unpack_rows(batch.column(PACKED_X), params.n_visible)
            with task_blas_threads():
                H = hidden_probs(params, X)
            if mode == "sample":
                H = sample_bernoulli(H, rng, out=np.empty_like(H, dtype=DTYPE))
            columns = {name: batch.column(name) for name in batch.schema.names}
            columns[PACKED_X] = pack_rows(H)
            yield pa.RecordBatch.from_pydict(columns)

    return run


def hidden_frame(
    df: DataFrame, params: RBMParams, mode: str, seed_key: tuple[int, ...]
) -> DataFrame:
    """`df` (id, x[, label]) with x replaced by the layer's hidden probabilities or samples."""
    batches = hidden_batches(params, mode, seed_key)
    keep = [c for c in (PACKED_ID, PACKED_X, PACKED_LABEL) if c in df.columns]
    df = df.select(*keep)
    return df.mapInArrow(batches, df.schema)


def transform_cached(
    data: PackedData, params: RBMParams, mode: str, seed_key: tuple[int, ...]
) -> PackedData:
    """The next layer's training set, cached in Spark (the sequential schedule's hand-off), or
    staged in local partition files like `data` when it is staged (`sparkdbn.staging`)."""
    if data.parts is not None:
        return _transform_staged(data, params, mode, seed_key)
    out = hidden_frame(data.df, params, mode, seed_key).persist(StorageLevel.MEMORY_AND_DISK)
    n_rows = out.count()
    return PackedData(
        out, params.n_hidden, n_rows, data.partitions, data.has_label, data.max_label
    )


def _transform_staged(
    data: PackedData, params: RBMParams, mode: str, seed_key: tuple[int, ...]
) -> PackedData:
    """The tasks transform their staged partition and write the result as a new one."""
    spark = data.df.sparkSession
    rows = data.rows(*[c for c in (PACKED_ID, PACKED_X, PACKED_LABEL) if c in data.df.columns])
    directory = stage_directory(spark)
    parts = StagedParts(directory, data.parts.partitions, rows.schema.json())
    transform = hidden_batches(params, mode, seed_key)
    new_writer = partial(StagedWriter, directory, to_arrow_schema(rows.schema))
    batches = written(transform, new_writer, row_count)
    try:
        n_rows = sum(r["n"] for r in rows.mapInArrow(batches, "n long").collect())
    except BaseException:
        parts.release()
        raise
    return PackedData(
        parts.rows(spark).frame(), params.n_hidden, n_rows, data.partitions, data.has_label,
        data.max_label, parts=parts,
    )
