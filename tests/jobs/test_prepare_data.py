"""jobs/prepare_data.py end to end: the real CLI in a subprocess on the Fashion-MNIST fixture,
plus in-process conversions of CSV and Spark-written Vector Parquet through sparkdbn.prepare.

Only one subprocess starts Spark (~10 s); the error cases fail before Spark starts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkdbn.datasets import load_mnist_dir
from sparkdbn.errors import InputError
from sparkdbn.prepare import load_datasets, prepare_mnist, write_datasets
from tests import conftest

FIXTURE = conftest.FIXTURE_DIR
LAYOUT = pa.schema(
    [("id", pa.int64()), ("features", pa.list_(pa.float32())), ("label", pa.int32())]
)


def run_job(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user runs it (tests/conftest.py's environment for jobs)."""
    return conftest.run_job("prepare_data", *args, timeout=300)


def read_layout(path: Path) -> pa.Table:
    """A prepared data set read with pyarrow alone, in id order, checked against the layout."""
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == LAYOUT
    return table.sort_by("id")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("prepare") / "fashion"
    result = run_job("--source", str(FIXTURE), "--output", str(output), "--partitions", "3")
    assert result.returncode == 0, result.stderr
    assert f"wrote 2000 rows to {output / 'train'}" in result.stdout
    return output


def test_help_exits_zero() -> None:
    result = run_job("--help")
    assert result.returncode == 0
    assert "--source" in result.stdout and "--if-exists" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("split", "split_dir", "rows"), [("train", "train", 2000), ("t10k", "test", 500)]
)
def test_cli_writes_the_layout(prepared: Path, split: str, split_dir: str, rows: int) -> None:
    table = read_layout(prepared / split_dir)
    images, labels = load_mnist_dir(FIXTURE, split)
    assert table.num_rows == rows
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(rows))
    features = table.column("features").combine_chunks().flatten().to_numpy().reshape(rows, -1)
    assert features.min() >= 0.0 and features.max() <= 1.0
    np.testing.assert_array_equal(features, images)
    np.testing.assert_array_equal(table.column("label").to_numpy(), labels)
    assert len(list((prepared / split_dir).glob("part-*.parquet"))) == 3
    assert sorted(p.name for p in prepared.parent.iterdir()) == ["fashion"]  # no staging left


@pytest.mark.slow
def test_spark_reads_the_layout(spark, prepared: Path) -> None:
    frame = spark.read.parquet(str(prepared / "test"))
    assert frame.schema.simpleString() == "struct<id:bigint,features:array<float>,label:int>"
    assert frame.count() == 500


@pytest.mark.slow
def test_existing_output_is_refused(prepared: Path) -> None:
    before = sorted(p.name for p in (prepared / "train").iterdir())
    result = run_job("--source", str(FIXTURE), "--output", str(prepared))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert str(prepared) in result.stderr and "--if-exists overwrite" in result.stderr
    assert sorted(p.name for p in (prepared / "train").iterdir()) == before


def test_missing_source_exits_2(tmp_path: Path) -> None:
    result = run_job("--source", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope'}: no such file or directory"
    assert not (tmp_path / "out").exists()


def test_csv_source(spark, tmp_path: Path) -> None:
    source = tmp_path / "small.csv"
    source.write_text("label,p0,p1\n3,0,255\n1,51,102\n0,255,0\n")
    output = tmp_path / "out"
    counts = write_datasets(spark, load_datasets(source), output, partitions=2)
    assert counts == {str(output): 3}
    table = read_layout(output)
    assert table.column("label").to_pylist() == [3, 1, 0]
    np.testing.assert_allclose(
        table.column("features").to_pylist(), [[0, 1], [0.2, 0.4], [1, 0]], rtol=1e-6
    )


def test_spark_vector_parquet_source(spark, tmp_path: Path) -> None:
    from pyspark.ml.linalg import DenseVector, SparseVector, VectorUDT
    from pyspark.sql.types import IntegerType, StructField, StructType

    rows = [(DenseVector([0.5, 0.0, 1.0]), 2), (SparseVector(3, {1: 0.25}), 5)]
    schema = StructType([StructField("vec", VectorUDT()), StructField("y", IntegerType())])
    source = tmp_path / "vectors"
    spark.createDataFrame(rows, schema).coalesce(1).write.parquet(str(source))
    datasets = load_datasets(source, "auto", features_col="vec", label_col="y")
    write_datasets(spark, datasets, tmp_path / "out", partitions=1)
    table = read_layout(tmp_path / "out")
    assert table.column("features").to_pylist() == [[0.5, 0.0, 1.0], [0.0, 0.25, 0.0]]
    assert table.column("label").to_pylist() == [2, 5]


def test_overwrite_replaces_whole_output(spark, tmp_path: Path) -> None:
    output = tmp_path / "out"
    (output / "stale").mkdir(parents=True)
    prepare_mnist(spark, FIXTURE, output, partitions=1, split="t10k", if_exists="overwrite")
    assert read_layout(output).num_rows == 500
    assert not (output / "stale").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(InputError, match="already exists"):
        prepare_mnist(spark, FIXTURE, output, split="t10k")


def test_split_only_for_mnist(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("label,p\n1,0\n")
    with pytest.raises(InputError, match=r"--split applies to MNIST sources only, this is csv"):
        load_datasets(tmp_path / "a.csv", split="train")
