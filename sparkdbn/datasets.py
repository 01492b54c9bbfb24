"""Dataset readers that need no Spark: IDX (MNIST format), CSV and Parquet into numpy.

Everything here runs on the driver with numpy and pyarrow only, so it can be tested and used
without a Spark session. Readers return ``(features float32 (n, d) in [0, 1], labels int64)``
in source row order; the row's position is its stable ``id``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sparkdbn.columns import features_to_numpy
from sparkdbn.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes (third magic byte) -> big-endian numpy dtypes, per the format's definition.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_SPLITS = ("train", "t10k")

# Debian's `dataset-fashion-mnist` package installs the four official files here.
FASHION_MNIST_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# MD5s of the official .gz files, as published in the zalandoresearch/fashion-mnist README.
# Debian's package ships re-compressed copies, whose .gz checksums differ from these.
FASHION_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def _one_line(err: Exception) -> str:
    """A library's (possibly multi-line) message folded into one line."""
    return " ".join(str(err).split())


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name)."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            if not gzipped:
                return raw.read()
            with gzip.GzipFile(fileobj=raw) as unzipped:
                return unzipped.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        raise InputError(f"{path}: no such file") from err
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise InputError(f"{path}: corrupt gzip data ({_one_line(err)})") from err


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-endian array of the declared shape.

    Header: two zero bytes, a type code, the number of dimensions, then one big-endian
    uint32 per dimension; the payload must hold exactly the declared number of values.
    """
    path = Path(path)
    data = _read_bytes(path)
    magic = data[:4]
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_DTYPES or magic[3] == 0:
        codes = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise InputError(
            f"{path}: not an IDX file: magic 0x{magic.hex().upper() or '(empty)'}, expected "
            f"0x0000 then a type code ({codes}) and a dimension count >= 1"
        )
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(
            f"{path}: truncated IDX header: expected {header} bytes, found {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "trailing bytes after the data"
        raise InputError(
            f"{path}: {problem}: dims {shape} of {dtype.itemsize}-byte values need "
            f"{expected} payload bytes, found {actual}"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _mnist_file(directory: Path, split: str, kind: str) -> Path | None:
    """The IDX file for split/kind ("images" or "labels"), in any of the usual spellings."""
    idx = "idx3" if kind == "images" else "idx1"
    for stem in (f"{split}-{kind}-{idx}-ubyte", f"{split}-{kind}.{idx}-ubyte"):
        for name in (f"{stem}.gz", stem):
            if (directory / name).is_file():
                return directory / name
    return None


def _check_split(split: str) -> None:
    if split not in MNIST_SPLITS:
        raise InputError(f"unknown MNIST split {split!r}: use one of {', '.join(MNIST_SPLITS)}")


def has_mnist_split(directory: str | os.PathLike[str], split: str) -> bool:
    """Whether the directory holds both the images and the labels file of the split."""
    directory = Path(directory)
    return all(_mnist_file(directory, split, kind) for kind in ("images", "labels"))


def load_mnist_dir(directory: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (n, rows*cols) scaled to [0, 1] by /255, and labels as int64."""
    _check_split(split)
    directory = Path(directory)
    paths = {kind: _mnist_file(directory, split, kind) for kind in ("images", "labels")}
    for kind, path in paths.items():
        if path is None:
            raise InputError(
                f"{directory}: no {split}-{kind} IDX file "
                f"(expected e.g. {split}-{kind}-{'idx3' if kind == 'images' else 'idx1'}-ubyte.gz)"
            )
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.dtype != np.uint8 or images.ndim < 2:
        raise InputError(
            f"{paths['images']}: expected unsigned byte images of 2 or more dims, "
            f"found {images.dtype} with shape {images.shape}"
        )
    if labels.ndim != 1:
        raise InputError(f"{paths['labels']}: expected 1-D labels, found shape {labels.shape}")
    if len(images) != len(labels):
        raise InputError(
            f"{directory}: {paths['images'].name} has {len(images)} images but "
            f"{paths['labels'].name} has {len(labels)} labels"
        )
    features = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    return features, labels.astype(np.int64)


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The first of data_dir and FASHION_MNIST_DIRS that holds all four Fashion-MNIST files."""
    candidates = ([Path(data_dir)] if data_dir is not None else []) + list(FASHION_MNIST_DIRS)
    for directory in candidates:
        if all(has_mnist_split(directory, split) for split in MNIST_SPLITS):
            return directory
    searched = ", ".join(str(d) for d in candidates)
    raise InputError(
        f"Fashion-MNIST not found in {searched}: run `apt-get install dataset-fashion-mnist`, "
        "pass --data-dir DIR, or add --download to fetch it into --data-dir"
    )


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of the file's bytes, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike[str], expected_md5: str) -> bool:
    """Whether the file exists and its MD5 matches (case-insensitive hex)."""
    return Path(path).is_file() and file_md5(path) == expected_md5.lower()


def download_fashion_mnist(
    target_dir: str | os.PathLike[str],
    base_url: str = FASHION_MNIST_URL,
    checksums: dict[str, str] | None = None,
) -> Path:
    """Fetch the four official files into target_dir, skipping those already verified.

    Each file is downloaded to a hidden temporary file in target_dir, checked against its
    published MD5 and only then renamed into place, so target_dir never holds a partial or
    corrupt file under the real name. A checksum mismatch raises OSError (not InputError:
    the user's input is fine, the download is not).
    """
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name, md5 in (checksums or FASHION_MNIST_MD5).items():
        dest = target / name
        if verify_checksum(dest, md5):
            continue
        handle, tmp_name = tempfile.mkstemp(dir=target, prefix=f".{name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(handle, "wb") as out,
                urllib.request.urlopen(base_url + name, timeout=60) as response,
            ):
                shutil.copyfileobj(response, out)
            actual = file_md5(tmp)
            if actual != md5:
                raise OSError(
                    f"{base_url + name}: downloaded file has MD5 {actual}, expected {md5}"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def scale_unit_interval(features: np.ndarray, source: str) -> np.ndarray:
    """Pixel values into [0, 1]: divided by 255 when the maximum exceeds 1, else kept.

    Anything that still falls outside [0, 1] (negative values, values above 255, NaN) is an
    InputError naming the source and the offending value.
    """
    if features.size == 0:
        return features
    if np.isnan(features).any():
        row = int(np.flatnonzero(np.isnan(features).any(axis=1))[0])
        raise InputError(f"{source}: feature value NaN in row {row}")
    if features.max() > 1:
        features = features / np.float32(255)
    low, high = features.min(), features.max()
    if low < 0 or high > 1:
        bad = low if low < 0 else high
        row = int(np.flatnonzero((features == bad).any(axis=1))[0])
        raise InputError(
            f"{source}: feature value {bad:g} in row {row} is outside [0, 1] "
            "(after dividing by 255, which applies when the maximum exceeds 1)"
        )
    return features


def _first_null_row(column: pa.Array | pa.ChunkedArray) -> int:
    return int(np.flatnonzero(np.asarray(column.is_null()))[0])


def _labels(column: pa.ChunkedArray | pa.Array, source: str, name: str) -> np.ndarray:
    """An integer label column as int64; nulls, fractions and values beyond int32 are errors."""
    if column.null_count:
        raise InputError(
            f"{source}: label column {name!r} is null in row {_first_null_row(column)}"
        )
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise InputError(f"{source}: label column {name!r} is {kind}, not an integer")
    values = np.asarray(column.to_numpy())
    info = np.iinfo(np.int32)
    bad = (np.mod(values, 1) != 0) | (values < info.min) | (values > info.max)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{source}: label column {name!r} holds {values[row]} in row {row}, not an int32"
        )
    return values.astype(np.int64)


def _data_files(path: Path, suffix: str) -> list[Path]:
    """The file itself, or a directory's visible data files in name order (Spark part files)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or directory")
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.name.endswith(suffix) and not p.name.startswith(("_", "."))
    )
    if not files:
        raise InputError(f"{path}: directory holds no *{suffix} files")
    return files


def _require_columns(names: list[str], wanted: dict[str, str], where: Path) -> None:
    """Each role's column ({"label": "label", ...}) must exist; the error lists what does."""
    for role, name in wanted.items():
        if name not in names:
            raise InputError(
                f"{where}: no {role} column {name!r} (columns: {', '.join(names)}); "
                f"pass --{role}-col"
            )


def read_csv_dataset(
    path: str | os.PathLike[str], label_col: str = "label"
) -> tuple[np.ndarray, np.ndarray]:
    """A CSV file (or directory of CSV files, in name order) with a header row.

    The label column holds the class; every other column is a pixel feature, so the CSV must
    contain nothing else (e.g. no id column). Features are scaled by scale_unit_interval.
    """
    source = Path(path)
    try:
        tables = [pacsv.read_csv(f) for f in _data_files(source, ".csv")]
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InputError(f"{source}: cannot read CSV: {_one_line(err)}") from err
    _require_columns(table.column_names, {"label": label_col}, source)
    labels = _labels(table.column(label_col), str(source), label_col)
    pixels = table.drop_columns([label_col])
    for name, column in zip(pixels.column_names, pixels.columns, strict=True):
        if not pa.types.is_integer(column.type) and not pa.types.is_floating(column.type):
            raise InputError(f"{source}: feature column {name!r} is {column.type}, not numeric")
        if column.null_count:
            raise InputError(
                f"{source}: feature column {name!r} is empty in row {_first_null_row(column)}"
            )
    columns = [np.asarray(c.to_numpy(), dtype=np.float32) for c in pixels.columns]
    features = np.stack(columns, axis=1) if columns else np.empty((len(labels), 0), np.float32)
    return scale_unit_interval(features, str(source)), labels


def _is_numeric_list(kind: pa.DataType) -> bool:
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    return is_list and (
        pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
    )


def _is_vector(kind: pa.DataType) -> bool:
    """Spark ML writes a pyspark.ml.linalg Vector to Parquet as this struct."""
    names = {kind.field(i).name for i in range(kind.num_fields)} if pa.types.is_struct(kind) else ()
    return names == {"type", "size", "indices", "values"}


def _feature_rows(column: pa.ChunkedArray, source: str, name: str) -> np.ndarray:
    """An array-of-numbers or Vector column as (n, d) float32; null or ragged rows are errors."""
    if not (_is_numeric_list(column.type) or _is_vector(column.type)):
        raise InputError(
            f"{source}: features column {name!r} is {column.type}; expected an array of "
            "numbers or a pyspark.ml.linalg Vector"
        )
    features, widths = features_to_numpy(column)
    if np.any(widths < 0):
        row = int(np.flatnonzero(widths < 0)[0])
        raise InputError(f"{source}: features column {name!r} is null in row {row}")
    if np.any(widths != widths[0]):
        row = int(np.flatnonzero(widths != widths[0])[0])
        raise InputError(
            f"{source}: features column {name!r} has {widths[row]} values in row {row} "
            f"but {widths[0]} in row 0"
        )
    return features


def read_parquet_dataset(
    path: str | os.PathLike[str], features_col: str = "features", label_col: str = "label"
) -> tuple[np.ndarray, np.ndarray]:
    """A Parquet file or directory (files in name order, as Spark names its parts).

    The features column may be an array of numbers or a Spark ML Vector (dense or sparse);
    null elements become NaN and are reported as such. Features are scaled by
    scale_unit_interval.
    """
    source = Path(path)
    files = _data_files(source, ".parquet")
    try:
        wanted = {"features": features_col, "label": label_col}
        _require_columns(pq.read_schema(files[0]).names, wanted, files[0])
        tables = [pq.read_table(f, columns=[features_col, label_col]) for f in files]
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{source}: cannot read Parquet: {_one_line(err)}") from err
    if table.num_rows == 0:
        raise InputError(f"{source}: no rows")
    labels = _labels(table.column(label_col), str(source), label_col)
    features = _feature_rows(table.column(features_col), str(source), features_col)
    return scale_unit_interval(features, str(source)), labels


def to_arrow_table(features: np.ndarray, labels: np.ndarray) -> pa.Table:
    """The project's row layout as Arrow: id (row index), features list<float>, label int32.

    The features column wraps the float32 buffer without copying it, so Spark's
    createDataFrame(table) ships it as Arrow batches instead of per-row Python objects.
    """
    n, width = features.shape
    flat = pa.array(np.ascontiguousarray(features, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "features": pa.ListArray.from_arrays(offsets, flat, type=pa.list_(pa.float32())),
            "label": pa.array(labels.astype(np.int32)),
        }
    )
