"""Training data: check the user's columns once, then cache them packed for fast epochs.

`prepare` turns a DataFrame (or Parquet path) with a features column of `array<float>`,
`array<double>` or pyspark.ml Vector into a cached DataFrame of `id`, optional `label`, and `x`
(each row's float32 values as one binary value, see `sparkdbn.columns`); under a local master
the rows are staged in local partition files instead (`sparkdbn.staging`). It reads the source
once, validates the cached copy in one more pass, and raises `InputError` naming the column, an
example row id and the offending value before anything is trained or written.
`check_features` checks data to score the same way, without keeping it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from sparkdbn.columns import features_to_numpy, pack_rows, unpack_rows
from sparkdbn.errors import InputError
from sparkdbn.staging import StagedParts, StagedRows, local_master, stage_directory, staging
from sparkdbn.tables import Table, is_table, parse_location

INTEGER_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
PACKED_ID = "id"
PACKED_LABEL = "label"
PACKED_X = "x"
# Spark's FAILED_READ_FILE error (a corrupt, truncated or vanished input file) names the file.
_READ_FAILURE = re.compile(r"Encountered error while reading file (\S+?)\.?(?:\s|$)")
_EXCEPTION_PREFIX = re.compile(r"^(?:[\w$.]+(?:Exception|Error): )+")
MAX_CAUSE = 200
# The held-out fraction is decided per row by a hash of (seed, id) in this many buckets.
HOLD_OUT_BUCKETS = 1_000_000
# One summary row per partition; widths -1 mean a null features value.
_CHECK_SCHEMA = (
    "part int, n long, width int, null_id long, ragged_id long, "
    "ragged_width int, bad_id long, bad_value double, bad_pos int, null_label_id long, "
    "neg_label_id long, neg_label long, max_label long"
)


class FirstPassCheck(Protocol):
    """What the first pass over not yet verified data must confirm (see `PackedData.check`)."""

    def verify(self, n_rows: int, checksum: float) -> None: ...


@dataclass
class PackedData:
    """A cached, validated training set: `id`, `label` (if any), packed `x` and its width `w`.

    `partitions` is at least the number of non-empty partitions, which bounds the averaging's
    reduce groups. `check`, when set, is still owed: the first pass over the rows must count
    them and checksum them (`store.checksum_terms`), call `check.verify` and then clear it.
    With `parts`, the rows are staged in local files (`sparkdbn.staging`) and `df` reads them.
    """

    df: DataFrame
    width: int
    n_rows: int
    partitions: int
    has_label: bool
    max_label: int | None = None
    check: FirstPassCheck | None = None
    parts: StagedParts | None = None

    @property
    def shape(self) -> dict[str, int]:
        """What a checkpoint records of the data it was made on, to refuse other data."""
        return {"n_rows": self.n_rows, "width": self.width, "partitions": self.partitions}

    def rows(self, *columns: str) -> DataFrame | StagedRows:
        """The columns, for a stage whose tasks need whole partitions: staged rows are read
        by the task itself, cached ones come from Spark."""
        if self.parts is None:
            return self.df.select(*columns)
        return self.parts.rows(self.df.sparkSession, list(columns))

    def unpersist(self) -> None:
        self.df.unpersist()
        if self.parts is not None:
            self.parts.release()


def _explain(err: Exception) -> str:
    """The telling part of a Spark error, on one line: the file Spark could not read and the
    first cause, else the Java or Python message (not py4j's "An error occurred while…")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    causes = [
        _EXCEPTION_PREFIX.sub("", line.removeprefix("Caused by: "))
        for line in lines
        if line.startswith("Caused by: ")
    ]
    match = _READ_FAILURE.search(str(err))
    if match is not None:
        file = match.group(1)
        name = file.rsplit("/", 1)[-1]
        words = [word for word in (causes[0] if causes else "").split() if name not in word]
        cause = f" ({' '.join(words)[:MAX_CAUSE]})" if words else ""
        return f"cannot read file {file}{cause}"
    for line in lines:
        if line.startswith(": "):
            return _EXCEPTION_PREFIX.sub("", line[2:])
    return lines[0] if lines else type(err).__name__


def _unreadable(source: str | DataFrame, err: Exception) -> InputError:
    if not isinstance(source, str):
        where = "the input DataFrame"
    elif is_table(source):
        where = f"table {parse_location(source).name!r}"
    else:
        where = f"Parquet data at {source!r}"
    return InputError(f"cannot read {where}: {_explain(err)}")


def read_source(spark: SparkSession, source: str | DataFrame) -> DataFrame:
    """A DataFrame as is, a catalog table (`table:NAME`, `sparkdbn.tables`) or a Parquet
    path, read with a clear error when it is missing."""
    if isinstance(source, DataFrame):
        return source
    location = parse_location(source)
    try:
        if isinstance(location, Table):
            return spark.table(location.name)
        return spark.read.parquet(location)
    except Exception as err:  # AnalysisException and friends, classic or Connect
        raise _unreadable(source, err) from err


def _check_schema(
    df: DataFrame, features_col: str, label_col: str | None, require_label: bool
) -> bool:
    fields = {f.name: f.dataType for f in df.schema.fields}
    if features_col not in fields:
        raise InputError(
            f"features column {features_col!r} not found; columns are {sorted(fields)}"
        )
    ftype = fields[features_col]
    is_vector = ftype.typeName() == "vector" or type(ftype).__name__ == "VectorUDT"
    is_array = isinstance(ftype, T.ArrayType) and isinstance(
        ftype.elementType, T.FloatType | T.DoubleType
    )
    if not (is_vector or is_array):
        raise InputError(
            f"features column {features_col!r} has type {ftype.simpleString()}; expected "
            "array<float>, array<double> or a pyspark.ml Vector"
        )
    if label_col is None or label_col not in fields:
        if require_label:
            raise InputError(
                f"label column {label_col!r} not found; columns are {sorted(fields)} "
                "(fine-tuning and test data need labels: set label_col to their column)"
            )
        return False
    if not isinstance(fields[label_col], INTEGER_TYPES):
        raise InputError(
            f"label column {label_col!r} has type {fields[label_col].simpleString()}; "
            "expected an integer type"
        )
    return True


def _pack_batches(features_col: str, label_col: str | None):
    def pack(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            X, widths = features_to_numpy(batch.column(features_col))
            columns = {
                PACKED_ID: batch.column(PACKED_ID),
                "w": pa.array(widths.astype(np.int32)),
                PACKED_X: pack_rows(X),
            }
            if label_col is not None:
                columns[PACKED_LABEL] = batch.column(label_col).cast(pa.int64())
            yield pa.RecordBatch.from_pydict(columns)

    return pack


def _check_batches(bernoulli: bool, has_label: bool):
    def first(ids: np.ndarray, mask: np.ndarray) -> int | None:
        hits = np.flatnonzero(mask)
        return int(ids[hits[0]]) if hits.size else None

    def check(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        for batch in batches:
            ids = batch.column(PACKED_ID).to_numpy()
            widths = batch.column("w").to_numpy()
            valid = widths[widths >= 0]
            width = _most_common(valid)
            row = {
                "part": part,
                "n": batch.num_rows,
                "width": width,
                "null_id": first(ids, widths < 0),
                "ragged_id": None,
                "ragged_width": None,
                "bad_id": None,
                "bad_value": None,
                "bad_pos": None,
                "null_label_id": None,
                "neg_label_id": None,
                "neg_label": None,
                "max_label": None,
            }
            ragged = (widths >= 0) & (widths != width)
            if ragged.any():
                i = int(np.flatnonzero(ragged)[0])
                row.update(ragged_id=int(ids[i]), ragged_width=int(widths[i]), width=width)
            if width and row["null_id"] is None and row["ragged_id"] is None:
                X = unpack_rows(batch.column(PACKED_X), width)
                bad = ~np.isfinite(X)
                if bernoulli:
                    bad |= (X < 0) | (X > 1)
                rows = bad.any(axis=1)
                if rows.any():
                    i = int(np.flatnonzero(rows)[0])
                    pos = int(np.flatnonzero(bad[i])[0])
                    row.update(bad_id=int(ids[i]), bad_value=float(X[i, pos]), bad_pos=pos)
            if has_label:
                labels = batch.column(PACKED_LABEL)
                nulls = labels.is_null().to_numpy(zero_copy_only=False)
                row["null_label_id"] = first(ids, nulls)
                values = labels.fill_null(0).to_numpy()
                row["max_label"] = int(values.max()) if values.size else None
                if (values < 0).any():
                    i = int(np.flatnonzero(values < 0)[0])
                    row.update(neg_label_id=int(ids[i]), neg_label=int(values[i]))
            yield pa.RecordBatch.from_pylist([row], schema=_check_arrow_schema())

    return check


def _check_arrow_schema() -> pa.Schema:
    types = {"long": pa.int64(), "int": pa.int32(), "double": pa.float64()}
    fields = [part.strip().split(" ") for part in _CHECK_SCHEMA.split(",")]
    return pa.schema([(name, types[kind]) for name, kind in fields])


def _raise_first_problem(
    rows: list, features_col: str, label_col: str | None, bernoulli: bool,
    what: str = "the training data",
) -> int | None:
    """Raise InputError for the first problem any partition found.

    Returns the common width, or None when partitions disagree on it (each one is consistent
    inside, so the caller looks for an example row across partitions).
    """
    n = sum(r["n"] for r in rows)
    if n == 0:
        raise InputError(f"{what} has no rows (features column {features_col!r})")
    for r in rows:
        if r["null_id"] is not None:
            raise InputError(f"column {features_col!r}, row id {r['null_id']}: features are null")
    for r in rows:
        if r["ragged_id"] is not None:
            raise InputError(
                f"column {features_col!r}, row id {r['ragged_id']}: ragged rows, "
                f"{r['ragged_width']} values where other rows have {r['width']}"
            )
    widths = {r["width"] for r in rows if r["n"]}
    width = widths.pop() if len(widths) == 1 else None
    if width is None:
        return None
    if width == 0:
        raise InputError(f"column {features_col!r}: feature vectors are empty")
    for r in rows:
        if r["bad_id"] is not None:
            value = r["bad_value"]
            why = "not finite" if not np.isfinite(value) else "outside [0, 1]"
            hint = (
                "; Bernoulli visible units need data in [0, 1] (use --visible gaussian for "
                "standardized real values)"
                if bernoulli and np.isfinite(value)
                else ""
            )
            raise InputError(
                f"column {features_col!r}, row id {r['bad_id']}: value {value} at position "
                f"{r['bad_pos']} is {why}{hint}"
            )
    for r in rows:
        if r["null_label_id"] is not None:
            raise InputError(f"column {label_col!r}, row id {r['null_label_id']}: label is null")
        if r["neg_label_id"] is not None:
            raise InputError(
                f"column {label_col!r}, row id {r['neg_label_id']}: label {r['neg_label']} "
                "is negative"
            )
    return width


def _most_common(widths: np.ndarray) -> int:
    """The width most rows have: the reference that an odd row is reported against."""
    if not widths.size:
        return 0
    values, counts = np.unique(widths, return_counts=True)
    return int(values[np.argmax(counts)])


def _raise_ragged_across_partitions(packed: DataFrame, features_col: str) -> None:
    """Partitions agree inside but not with each other: name a row off the common width."""
    usual = packed.groupBy("w").count().orderBy(F.desc("count"), "w").first()["w"]
    other = packed.filter(F.col("w") != usual).select("id", "w").orderBy("id").first()
    raise InputError(
        f"column {features_col!r}, row id {other['id']}: ragged rows, {other['w']} values where "
        f"other rows have {usual}"
    )


def _with_long_id(df: DataFrame) -> DataFrame:
    """`id` as long, or a generated one when the data has no integer id column."""
    id_field = next((f for f in df.schema.fields if f.name == PACKED_ID), None)
    if id_field is None or not isinstance(id_field.dataType, INTEGER_TYPES):
        return df.withColumn(PACKED_ID, F.monotonically_increasing_id())
    return df.withColumn(PACKED_ID, F.col(PACKED_ID).cast("long"))


def held_out(fraction: float, seed: int, validation: bool) -> Column:
    """The rows of a held-out validation set (or, with `validation` False, the others): about
    `fraction` of them, chosen by a hash of (seed, id), so the same rows on every run."""
    bucket = F.pmod(F.xxhash64(F.lit(seed), F.col(PACKED_ID)), F.lit(HOLD_OUT_BUCKETS))
    cut = F.lit(round(fraction * HOLD_OUT_BUCKETS))
    return bucket < cut if validation else bucket >= cut


def check_features(df: DataFrame, features_col: str, visible: str = "bernoulli") -> tuple[int, int]:
    """Rows and width of data to score, checked as `prepare` checks training data (column
    type, nulls, ragged rows, values), in one pass that keeps nothing: scoring reads the rows
    once more rather than hold all of them."""
    _check_schema(df, features_col, None, require_label=False)
    bernoulli = visible == "bernoulli"
    packed = _with_long_id(df).select(PACKED_ID, features_col).mapInArrow(
        _pack_batches(features_col, None), "id long, w int, x binary"
    )
    try:
        rows = packed.mapInArrow(_check_batches(bernoulli, False), _CHECK_SCHEMA).collect()
    except Exception as err:
        if _READ_FAILURE.search(str(err)) is None:
            raise
        raise InputError(f"cannot read the data to score: {_explain(err)}") from err
    width = _raise_first_problem(rows, features_col, None, bernoulli, what="the data")
    if width is None:
        _raise_ragged_across_partitions(packed, features_col)
    return sum(r["n"] for r in rows), width


def prepare(
    spark: SparkSession,
    source: str | DataFrame,
    features_col: str = "features",
    label_col: str = "label",
    visible: str = "bernoulli",
    partitions: int | None = None,
    require_label: bool = False,
    stage: bool | None = None,
    rows: Column | None = None,
) -> PackedData:
    """Validate and cache a training set: in Spark's cache, or with `stage` (by default when
    the master is local) in local partition files (`sparkdbn.staging`) in the application's
    scratch space. Nothing is written anywhere else. `rows`, a condition on `id` (`held_out`),
    keeps only the rows that meet it."""
    df = read_source(spark, source)
    has_label = _check_schema(df, features_col, label_col, require_label)
    columns = [PACKED_ID, features_col] + ([label_col] if has_label else [])
    df = _with_long_id(df).select(*columns)
    if rows is not None:
        df = df.where(rows)
    if partitions is not None:
        # Hash of the id, then id order inside each partition: the same rows land in the same
        # order on every run, whatever order the shuffle fetched them in.
        df = df.repartition(partitions, PACKED_ID).sortWithinPartitions(PACKED_ID)
    out_schema = "id long, w int, x binary" + (", label long" if has_label else "")
    pack = _pack_batches(features_col, label_col if has_label else None)
    packed = df.mapInArrow(pack, out_schema)
    check = _check_batches(visible == "bernoulli", has_label)
    parts = None
    stage = local_master(spark) if stage is None else stage
    if stage:
        directory = stage_directory(spark)
        parts = StagedParts(directory, packed.rdd.getNumPartitions(), packed.schema.json())
        check = staging(check, directory, to_arrow_schema(packed.schema))
    else:
        packed = packed.persist(StorageLevel.MEMORY_AND_DISK)
    data = PackedData(packed, 0, 0, 0, has_label, parts=parts)
    try:
        # Spark reads lazily: a corrupt or truncated file shows up here, in the first pass.
        rows = packed.mapInArrow(check, _CHECK_SCHEMA).collect()
    except Exception as err:
        data.unpersist()
        if _READ_FAILURE.search(str(err)) is None:
            raise
        raise _unreadable(source, err) from err
    if parts is not None:
        packed = parts.rows(spark).frame()
    try:
        width = _raise_first_problem(rows, features_col, label_col, visible == "bernoulli")
        if width is None:
            _raise_ragged_across_partitions(packed, features_col)
    except InputError:
        data.unpersist()
        raise
    return PackedData(
        df=packed,
        width=width,
        n_rows=sum(r["n"] for r in rows),
        partitions=len({r["part"] for r in rows}),
        has_label=has_label,
        max_label=max((r["max_label"] for r in rows if r["max_label"] is not None), default=None),
        parts=parts,
    )
