"""Convert a source data set into the project's Parquet layout: id long, features, label int.

Sources are read on the driver into numpy (see sparkdbn.datasets), so the row's position in
the source is its stable ``id``; Spark then writes the rows as Parquet, range-partitioned by
id so that each part file holds a contiguous, sorted id range. Outputs are staged in a hidden
sibling directory and renamed into place (sparkdbn.fsutil), so a reader never sees a
half-written output. Only local paths (plain or file://) are supported, because the commit is
an os.rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from sparkdbn.datasets import (
    MNIST_SPLITS,
    has_mnist_split,
    load_mnist_dir,
    read_csv_dataset,
    read_parquet_dataset,
    to_arrow_table,
)
from sparkdbn.errors import InputError
from sparkdbn.fsutil import atomic_directory, check_target

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

FORMATS = ("auto", "mnist", "csv", "parquet")
# Output subdirectory of each MNIST split when both are converted.
SPLIT_DIRS = {"train": "train", "t10k": "test"}

Dataset = tuple[np.ndarray, np.ndarray]


def local_path(text: str, flag: str) -> Path:
    """An absolute local path from a plain path or file:// URI; other schemes are refused."""
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(parsed.path).absolute()
    if parsed.scheme:
        raise InputError(f"{flag} {text}: only local paths are supported, not {parsed.scheme}://")
    return Path(text).absolute()


def detect_format(source: Path) -> str:
    """mnist for a directory of IDX files, else parquet or csv by the data files' suffix."""
    if source.is_dir() and any(has_mnist_split(source, split) for split in MNIST_SPLITS):
        return "mnist"
    names = [p.name for p in source.iterdir()] if source.is_dir() else [source.name]
    for fmt in ("parquet", "csv"):
        if any(name.endswith(f".{fmt}") for name in names):
            return fmt
    raise InputError(
        f"{source}: cannot tell the format (no MNIST IDX, *.parquet or *.csv files); pass --format"
    )


def load_datasets(
    source: Path,
    fmt: str = "auto",
    split: str | None = None,
    features_col: str = "features",
    label_col: str = "label",
) -> dict[str, Dataset]:
    """The source's rows as {output subdirectory ("" = the output itself): (features, labels)}.

    An MNIST directory gives both splits (train/ and test/) unless one split is chosen;
    a CSV or Parquet source gives one data set.
    """
    if not source.exists():
        raise InputError(f"{source}: no such file or directory")
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt != "mnist" and split is not None:
        raise InputError(f"{source}: --split applies to MNIST sources only, this is {fmt}")
    if fmt == "csv":
        datasets = {"": read_csv_dataset(source, label_col)}
    elif fmt == "parquet":
        datasets = {"": read_parquet_dataset(source, features_col, label_col)}
    elif split is not None:
        datasets = {"": load_mnist_dir(source, split)}
    else:
        datasets = {SPLIT_DIRS[s]: load_mnist_dir(source, s) for s in MNIST_SPLITS}
    for name, (features, _) in datasets.items():
        if len(features) == 0:
            raise InputError(f"{source}: {name or 'the data set'} has no rows")
    return datasets


def write_dataset(spark: SparkSession, data: Dataset, path: Path, partitions: int) -> int:
    """Write one data set as Parquet in `partitions` files of contiguous id ranges; row count.

    The rows reach Spark as one Arrow table (zero-copy from numpy), not as Python objects.
    """
    features, labels = data
    frame = spark.createDataFrame(to_arrow_table(features, labels))
    ordered = frame.repartitionByRange(partitions, "id").sortWithinPartitions("id")
    # "overwrite": the staging directory is ours alone and already exists (atomic_directory).
    ordered.write.mode("overwrite").parquet(path.as_uri())
    return len(labels)


def write_datasets(
    spark: SparkSession,
    datasets: dict[str, Dataset],
    output: Path,
    partitions: int = 8,
    if_exists: str = "error",
) -> dict[str, int]:
    """Write every data set under output in one atomic commit; rows per output path."""
    if partitions < 1:
        raise InputError(f"--partitions {partitions}: must be at least 1")
    check_target(output, if_exists)
    counts = {}
    with atomic_directory(output) as staged:
        for name, data in datasets.items():
            counts[str(output / name)] = write_dataset(spark, data, staged / name, partitions)
    return counts


def prepare_mnist(
    spark: SparkSession,
    source_dir: str | Path,
    output_dir: str | Path,
    partitions: int = 8,
    split: str | None = None,
    if_exists: str = "error",
) -> dict[str, int]:
    """Convert an MNIST-format directory: both splits to output/train and output/test, or
    the chosen split to output itself. Returns the rows written per output path."""
    output = Path(output_dir).absolute()
    check_target(output, if_exists)
    datasets = load_datasets(Path(source_dir), "mnist", split)
    return write_datasets(spark, datasets, output, partitions, if_exists)
