"""`sparkdbn.data.prepare` on real DataFrames: every accepted input type packs to exactly the
original float32 rows, and every bad input is an InputError naming the column and an example
row id or value, raised before anything is trained or written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdbn.columns import unpack_rows
from sparkdbn.data import PackedData, prepare
from sparkdbn.errors import InputError

N, D = 40, 6
INT = T.IntegerType()


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    """N × D float32 values in [0, 1], about half of them zero (so sparse vectors are sparse)."""
    rng = np.random.default_rng(5)
    values = rng.random((N, D), dtype=np.float32)
    values[rng.random((N, D)) < 0.5] = 0.0
    return values


def frame(
    spark: SparkSession,
    features: list,
    ftype: T.DataType,
    labels: list | None = None,
    ltype: T.DataType = INT,
    names: tuple[str, str] = ("features", "label"),
    with_id: bool = True,
) -> DataFrame:
    """A DataFrame of (id, features, label) with ids 0..n-1 and labels defaulting to id % 10."""
    n = len(features)
    labels = [i % 10 for i in range(n)] if labels is None else labels
    fields = [T.StructField(names[0], ftype), T.StructField(names[1], ltype)]
    rows = [[f, lab] for f, lab in zip(features, labels, strict=True)]
    if with_id:
        fields.insert(0, T.StructField("id", T.LongType()))
        rows = [[i, *row] for i, row in enumerate(rows)]
    return spark.createDataFrame(rows, T.StructType(fields))


def as_lists(X: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in X]


def unpacked(packed: PackedData) -> tuple[np.ndarray, np.ndarray]:
    """The packed frame's ids and float32 rows, in id order, read back through Arrow."""
    table = packed.df.orderBy("id").toArrow()
    return table.column("id").to_numpy(), unpack_rows(table.column("x"), packed.width)


def expect_rows(packed: PackedData, X: np.ndarray) -> None:
    ids, rows = unpacked(packed)
    np.testing.assert_array_equal(ids, np.arange(len(X)))
    assert rows.dtype == np.float32
    assert np.array_equal(rows, X.astype(np.float32))
    assert (packed.width, packed.n_rows) == (X.shape[1], len(X))


# --- accepted inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("element", [T.FloatType(), T.DoubleType()], ids=["float", "double"])
def test_arrays_pack_to_the_exact_rows(spark, X, element) -> None:
    """array<float> and array<double> columns unpack to the original values, bit for bit."""
    packed = prepare(spark, frame(spark, as_lists(X), T.ArrayType(element)))
    expect_rows(packed, X)
    assert packed.has_label
    packed.unpersist()


def test_double_values_are_rounded_to_float32(spark) -> None:
    """array<double> values that float32 cannot hold are rounded like numpy's astype."""
    X64 = np.random.default_rng(9).random((12, 4))
    packed = prepare(spark, frame(spark, as_lists(X64), T.ArrayType(T.DoubleType())))
    expect_rows(packed, X64.astype(np.float32))
    packed.unpersist()


def test_dense_vectors_pack_to_the_exact_rows(spark, X) -> None:
    """Dense pyspark.ml Vectors are read from their struct form without loss."""
    packed = prepare(spark, frame(spark, [Vectors.dense(row) for row in X], VectorUDT()))
    expect_rows(packed, X)
    packed.unpersist()


def test_sparse_vectors_pack_to_the_exact_rows(spark, X) -> None:
    """Sparse Vectors (and an all-zero one) become dense rows with zeros where nothing is set."""
    X = X.copy()
    X[3] = 0.0
    vectors = [Vectors.sparse(D, np.flatnonzero(row).tolist(), row[row != 0].tolist()) for row in X]
    packed = prepare(spark, frame(spark, vectors, VectorUDT()))
    expect_rows(packed, X)
    packed.unpersist()


def test_mixed_dense_and_sparse_vectors(spark, X) -> None:
    """A column mixing dense and sparse Vectors packs every row correctly."""
    vectors = [
        Vectors.dense(row)
        if i % 2
        else Vectors.sparse(D, np.flatnonzero(row).tolist(), row[row != 0].tolist())
        for i, row in enumerate(X)
    ]
    packed = prepare(spark, frame(spark, vectors, VectorUDT()))
    expect_rows(packed, X)
    packed.unpersist()


def test_ids_and_labels_are_kept(spark, X) -> None:
    """The packed frame's id and label columns equal the input's (labels widened to long)."""
    df = frame(spark, as_lists(X), T.ArrayType(T.FloatType()))
    packed = prepare(spark, df)
    assert_df_equality(
        packed.df.select("id", "label"),
        df.select("id", F.col("label").cast("long")),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    packed.unpersist()


def test_custom_column_names_and_generated_ids(spark, X) -> None:
    """Custom features/label names work; without an id column every row gets a unique id."""
    df = frame(
        spark,
        as_lists(X),
        T.ArrayType(T.FloatType()),
        labels=list(range(N)),  # the row's index, to find it again after ids are generated
        ltype=T.LongType(),
        names=("pixels", "digit"),
        with_id=False,
    )
    packed = prepare(spark, df, features_col="pixels", label_col="digit")
    assert packed.has_label and sorted(packed.df.columns) == ["id", "label", "w", "x"]
    assert packed.df.select("id").distinct().count() == N
    table = packed.df.orderBy("label").toArrow()
    np.testing.assert_array_equal(table.column("label").to_numpy(), np.arange(N))
    assert np.array_equal(unpack_rows(table.column("x"), D), X)
    assert_df_equality(
        packed.df.select(F.col("label").alias("digit")),
        df.select("digit"),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    packed.unpersist()


def test_missing_label_is_fine_unless_required(spark, X) -> None:
    """Unsupervised data needs no label column; require_label turns its absence into an error."""
    df = frame(spark, as_lists(X), T.ArrayType(T.FloatType())).drop("label")
    packed = prepare(spark, df)
    assert not packed.has_label and "label" not in packed.df.columns
    expect_rows(packed, X)
    packed.unpersist()
    with pytest.raises(InputError, match="label column 'label' not found"):
        prepare(spark, df, require_label=True)


def test_repartitioning_gives_non_empty_sorted_partitions(spark, X) -> None:
    """partitions=3 makes 3 non-empty partitions, ids ascending in each, holding the same rows."""
    packed = prepare(spark, frame(spark, as_lists(X), T.ArrayType(T.FloatType())), partitions=3)
    assert packed.partitions == 3
    placed = packed.df.select(F.spark_partition_id().alias("p"), "id").collect()
    by_part: dict[int, list[int]] = {}
    for row in placed:
        by_part.setdefault(row["p"], []).append(row["id"])
    assert sorted(by_part) == [0, 1, 2]
    assert all(ids and ids == sorted(ids) for ids in by_part.values())
    expect_rows(packed, X)
    packed.unpersist()


def test_parquet_file(spark, X, tmp_path: Path) -> None:
    """A Parquet file written by pyarrow is read from its path and packed exactly."""
    path = tmp_path / "train.parquet"
    features = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), D)
    table = pa.table(
        {
            "id": pa.array(np.arange(N, dtype=np.int64)),
            "features": features.cast(pa.list_(pa.float32())),
            "label": pa.array(np.arange(N, dtype=np.int32) % 10),
        }
    )
    pq.write_table(table, path)
    packed = prepare(spark, str(path), partitions=2)
    expect_rows(packed, X)
    packed.unpersist()


def test_gaussian_accepts_values_outside_unit_interval(spark, X) -> None:
    """visible='gaussian' takes standardized values; -2.5 and 3.25 survive packing unchanged."""
    X = X.copy()
    X[4, 1], X[7, 0] = -2.5, 3.25
    df = frame(spark, as_lists(X), T.ArrayType(T.FloatType()))
    packed = prepare(spark, df, visible="gaussian")
    expect_rows(packed, X)
    packed.unpersist()


# --- rejected inputs ------------------------------------------------------------------------


def array_rows(X: np.ndarray, edits: dict[int, object]) -> list:
    """X as lists with some rows replaced (by None, a shorter list, a list holding None...)."""
    rows: list = as_lists(X)
    for i, value in edits.items():
        rows[i] = value
    return rows


def test_missing_features_column(spark, X) -> None:
    """A features column that does not exist is named, with the columns that do."""
    df = frame(spark, as_lists(X), T.ArrayType(T.FloatType()))
    with pytest.raises(InputError, match=r"features column 'nope' not found.*'features'"):
        prepare(spark, df, features_col="nope")


@pytest.mark.parametrize(
    ("ftype", "values", "shown"),
    [
        (T.StringType(), lambda X: [str(row) for row in X], "string"),
        (T.ArrayType(INT), lambda X: [[int(v) for v in row] for row in X], "array<int>"),
    ],
    ids=["string", "array<int>"],
)
def test_features_of_wrong_type(spark, X, ftype, values, shown) -> None:
    """A features column of an unsupported type is named with its type."""
    df = frame(spark, values(X), ftype)
    with pytest.raises(InputError, match=rf"features column 'features' has type {shown};"):
        prepare(spark, df)


def test_label_of_non_integer_type(spark, X) -> None:
    """A double label column is rejected with its name and type."""
    df = frame(spark, as_lists(X), T.ArrayType(T.FloatType()), [0.5] * N, T.DoubleType())
    with pytest.raises(InputError, match="label column 'label' has type double"):
        prepare(spark, df)


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({5: None}, "column 'features', row id 5: features are null"),
        ({11: [0.1, 0.2, 0.3, 0.4, 0.5]}, "column 'features', row id 11: ragged rows, 5 values"),
        ({3: [0.1, None, 0.3, 0.4, 0.5, 0.6]}, "row id 3: value nan at position 1 is not finite"),
        ({4: [0.1, 0.2, float("nan"), 0.4, 0.5, 0.6]}, "row id 4: value nan at position 2"),
        ({8: [0.1, 0.2, 0.3, float("inf"), 0.5, 0.6]}, "row id 8: value inf at position 3"),
        ({9: [1.5, 0.2, 0.3, 0.4, 0.5, 0.6]}, "row id 9: value 1.5 at position 0 is outside"),
        ({2: [0.1, 0.2, 0.3, 0.4, 0.5, -0.25]}, "row id 2: value -0.25 at position 5 is outside"),
    ],
    ids=["null-row", "ragged", "null-element", "nan", "inf", "above-1", "below-0"],
)
def test_bad_feature_values_in_one_partition(spark, X, edits, message) -> None:
    """Bad rows are reported by column, row id, value and position, whatever the partition."""
    df = frame(spark, array_rows(X, edits), T.ArrayType(T.DoubleType())).coalesce(1)
    with pytest.raises(InputError) as err:
        prepare(spark, df)
    assert message in str(err.value)
    assert "column 'features'" in str(err.value)


def test_a_longer_row_is_named_as_the_ragged_one(spark, X) -> None:
    """One row with 7 values among rows of 6 is the example row, not one of the 6-value rows."""
    df = frame(spark, array_rows(X, {13: [0.5] * 7}), T.ArrayType(T.FloatType())).coalesce(1)
    with pytest.raises(InputError) as err:
        prepare(spark, df)
    assert "column 'features', row id 13: ragged rows, 7 values" in str(err.value)


def test_ragged_across_partitions(spark, X) -> None:
    """Partitions that are each consistent but differ in width: the first row off the width
    most rows have is named."""
    rows = as_lists(X[:25]) + as_lists(X[25:, :5])
    df = frame(spark, rows, T.ArrayType(T.FloatType())).repartitionByRange(2, F.col("id") >= 25)
    widths = df.groupBy(F.spark_partition_id().alias("p")).agg(
        F.countDistinct(F.size("features")).alias("widths")
    )
    assert [r["widths"] for r in widths.collect()] == [1, 1]  # each partition is consistent
    with pytest.raises(InputError) as err:
        prepare(spark, df)
    expected = "column 'features', row id 25: ragged rows, 5 values where other rows have 6"
    assert expected in str(err.value)


def test_bad_vector_value(spark, X) -> None:
    """Out-of-range values inside dense Vectors are caught like array values."""
    X = X.copy()
    X[6, 2] = 2.0
    df = frame(spark, [Vectors.dense(row) for row in X], VectorUDT())
    with pytest.raises(InputError, match=r"column 'features', row id 6: value 2.0 at position 2"):
        prepare(spark, df)


def test_gaussian_still_rejects_non_finite_values(spark, X) -> None:
    """visible='gaussian' lifts the [0, 1] bound but not the finiteness check."""
    df = frame(
        spark,
        array_rows(X, {7: [0.0, 0.0, 0.0, 0.0, float("-inf"), 0.0]}),
        T.ArrayType(T.FloatType()),
    )
    with pytest.raises(InputError, match=r"row id 7: value -inf at position 4 is not finite"):
        prepare(spark, df, visible="gaussian")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({2: None}, "column 'label', row id 2: label is null"),
        ({6: -1}, "column 'label', row id 6: label -1 is negative"),
    ],
    ids=["null", "negative"],
)
def test_bad_labels(spark, X, labels, message) -> None:
    """Null and negative labels are reported with the label column and the row id."""
    values = [labels.get(i, i % 10) for i in range(N)]
    df = frame(spark, as_lists(X), T.ArrayType(T.FloatType()), values)
    with pytest.raises(InputError) as err:
        prepare(spark, df)
    assert message in str(err.value)


def test_empty_dataframe(spark, X) -> None:
    """A DataFrame with the right schema but no rows is an error naming the features column."""
    df = frame(spark, as_lists(X), T.ArrayType(T.FloatType())).limit(0)
    with pytest.raises(InputError, match="the training data has no rows .*'features'"):
        prepare(spark, df)


def test_nonexistent_parquet_path(spark, tmp_path: Path) -> None:
    """A Parquet path that does not exist is named in the error."""
    missing = tmp_path / "nothing-here"
    with pytest.raises(InputError, match=f"cannot read Parquet data at '{missing}'"):
        prepare(spark, str(missing))
