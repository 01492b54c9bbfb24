"""sparkdbn.datasets: IDX reading against hand-built files, MNIST directories, checksums,
downloads (over file:// URLs, never the network), CSV/Parquet readers and the Arrow layout."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkdbn import datasets
from sparkdbn.datasets import (
    download_fashion_mnist,
    file_md5,
    find_fashion_mnist,
    load_mnist_dir,
    read_csv_dataset,
    read_idx,
    read_parquet_dataset,
    scale_unit_interval,
    to_arrow_table,
    verify_checksum,
)
from sparkdbn.errors import InputError

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-small"
FIXTURE_FILES = sorted(p.name for p in FIXTURE.glob("*-ubyte.gz"))

CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(values: np.ndarray, code: int) -> bytes:
    """An IDX file's bytes: 0x0000, type code, ndim, big-endian dims, big-endian values."""
    header = struct.pack(f">HBB{values.ndim}I", 0, code, values.ndim, *values.shape)
    return header + values.astype(CODES[code]).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# --- read_idx -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_ubyte_3d(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write(tmp_path / "images-idx3-ubyte", idx_bytes(images, 0x08), gz)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_ubyte_1d(tmp_path: Path, gz: bool) -> None:
    labels = np.array([9, 0, 3, 255], dtype=np.uint8)
    got = read_idx(write(tmp_path / "labels", idx_bytes(labels, 0x08), gz))
    np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize(
    ("code", "values"),
    [
        (0x09, np.array([-128, -1, 0, 127], dtype=np.int8)),
        (0x0B, np.array([[-300, 2], [32767, -32768]], dtype=np.int16)),
        (0x0C, np.array([[-70000, 1, 2], [3, 4, 2**31 - 1]], dtype=np.int32)),
        (0x0D, np.array([[0.5, -1.25], [3.0e38, 1e-7]], dtype=np.float32)),
        (0x0E, np.array([np.pi, -1e300, 0.0], dtype=np.float64)),
    ],
)
def test_read_idx_other_dtypes_native_endian(tmp_path: Path, code: int, values: np.ndarray) -> None:
    got = read_idx(write(tmp_path / "x.idx", idx_bytes(values, code), gz=True))
    assert got.dtype == values.dtype and got.dtype.isnative
    assert got.flags.writeable
    np.testing.assert_array_equal(got, values)


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.uint8).reshape(2, 3)
    gz_without_suffix = write(tmp_path / "plain-name", idx_bytes(values, 0x08), gz=True)
    raw_with_suffix = write(tmp_path / "looks.gz", idx_bytes(values, 0x08), gz=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), values)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), values)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload_names_file_and_byte_counts(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8), 0x08)[:-5]
    path = write(tmp_path / "short-idx3-ubyte", data, gz)
    with pytest.raises(InputError, match=r"short-idx3-ubyte: truncated.* 12 .*found 7") as err:
        read_idx(path)
    assert "\n" not in str(err.value)


def test_trailing_bytes_are_an_error(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros(4, dtype=np.int32), 0x0C) + b"\0\0"
    path = write(tmp_path / "long.idx", data)
    with pytest.raises(InputError, match=r"long\.idx: trailing bytes.*need 16 .*found 18"):
        read_idx(path)


def test_wrong_magic_names_file_and_magic(tmp_path: Path) -> None:
    path = write(tmp_path / "notidx.bin", b"\x89PNG\r\n\x1a\n" + bytes(16))
    with pytest.raises(InputError, match=r"notidx\.bin: not an IDX file: magic 0x89504E47"):
        read_idx(path)


def test_unknown_dtype_code_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.idx", struct.pack(">HBBI", 0, 0x07, 1, 1) + b"\0")
    with pytest.raises(InputError, match=r"odd\.idx: not an IDX file: magic 0x00000701.*0x08"):
        read_idx(path)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"", r"magic 0x\(empty\)"),
        (b"\0\0\x08", r"magic 0x000008"),
        (
            struct.pack(">HBB", 0, 0x08, 3) + bytes(5),
            r"truncated IDX header: expected 16 .*found 9",
        ),
    ],
)
def test_short_files_are_errors(tmp_path: Path, data: bytes, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        read_idx(write(tmp_path / "tiny", data))


def test_corrupt_gzip_and_missing_file(tmp_path: Path) -> None:
    full = gzip.compress(idx_bytes(np.zeros(1000, dtype=np.uint8), 0x08))
    path = write(tmp_path / "cut.gz", full[: len(full) // 2])
    with pytest.raises(InputError, match=r"cut\.gz: corrupt gzip data"):
        read_idx(path)
    with pytest.raises(InputError, match=r"absent: no such file"):
        read_idx(tmp_path / "absent")


# --- MNIST directories ----------------------------------------------------------------------


@pytest.mark.parametrize(("split", "per_class"), [("train", 200), ("t10k", 50)])
def test_load_mnist_dir_on_fixture(split: str, per_class: int) -> None:
    images, labels = load_mnist_dir(FIXTURE, split)
    assert images.shape == (10 * per_class, 784) and images.dtype == np.float32
    assert labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.99
    np.testing.assert_array_equal(np.bincount(labels), [per_class] * 10)


def test_load_mnist_dir_accepts_dotted_raw_names(tmp_path: Path) -> None:
    images = np.full((3, 2, 2), 255, dtype=np.uint8)
    write(tmp_path / "t10k-images.idx3-ubyte", idx_bytes(images, 0x08))
    write(tmp_path / "t10k-labels.idx1-ubyte", idx_bytes(np.array([1, 2, 3], np.uint8), 0x08))
    features, labels = load_mnist_dir(tmp_path, "t10k")
    np.testing.assert_array_equal(features, np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(labels, [1, 2, 3])


def test_load_mnist_dir_count_mismatch(tmp_path: Path) -> None:
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((3, 2, 2), np.uint8), 0x08))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(2, np.uint8), 0x08))
    with pytest.raises(InputError, match=r"3 images but .*train-labels-idx1-ubyte has 2 labels"):
        load_mnist_dir(tmp_path, "train")


def test_load_mnist_dir_missing_file_and_bad_split(tmp_path: Path) -> None:
    write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((1, 1, 1), np.uint8), 8))
    with pytest.raises(InputError, match=r"no train-labels IDX file"):
        load_mnist_dir(tmp_path, "train")
    with pytest.raises(InputError, match=r"unknown MNIST split 'test'"):
        load_mnist_dir(tmp_path, "test")


def test_find_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIRS", (tmp_path / "empty", FIXTURE))
    assert find_fashion_mnist() == FIXTURE
    assert find_fashion_mnist(tmp_path) == FIXTURE
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIRS", ())
    with pytest.raises(InputError, match=r"apt-get install dataset-fashion-mnist.*--download"):
        find_fashion_mnist(tmp_path)


# --- checksums and download -----------------------------------------------------------------


def test_verify_checksum(tmp_path: Path) -> None:
    path = write(tmp_path / "f", b"fashion")
    assert verify_checksum(path, "6c4ee4f5d11bb4a2df8e5a1e86fda9b1".upper()) is False
    good = file_md5(path)
    assert verify_checksum(path, good) is True
    assert verify_checksum(path, good.upper()) is True
    assert verify_checksum(tmp_path / "missing", good) is False


def test_download_fetches_verifies_and_skips_verified(tmp_path: Path) -> None:
    checksums = {name: file_md5(FIXTURE / name) for name in FIXTURE_FILES}
    target = download_fashion_mnist(tmp_path / "dl", FIXTURE.as_uri() + "/", checksums)
    assert sorted(p.name for p in target.iterdir()) == FIXTURE_FILES
    assert find_fashion_mnist(target) == target
    # A second call finds verified files and fetches nothing (the source may be gone).
    download_fashion_mnist(target, (tmp_path / "gone").as_uri() + "/", checksums)


def test_download_rejects_bad_checksum_and_leaves_nothing(tmp_path: Path) -> None:
    name = FIXTURE_FILES[0]
    with pytest.raises(OSError, match=rf"{name}: downloaded file has MD5 [0-9a-f]+, expected 0+"):
        download_fashion_mnist(tmp_path, FIXTURE.as_uri() + "/", {name: "0" * 32})
    assert list(tmp_path.iterdir()) == []


def test_official_checksums_are_the_published_ones() -> None:
    assert datasets.FASHION_MNIST_MD5["t10k-images-idx3-ubyte.gz"] == (
        "bef4ecab320f06d8554ea6380940ec79"
    )
    assert len(datasets.FASHION_MNIST_MD5) == 4


# --- CSV / Parquet / Arrow ------------------------------------------------------------------


def test_scale_unit_interval() -> None:
    pixels = np.array([[0, 255], [51, 102]], np.float32)
    np.testing.assert_allclose(scale_unit_interval(pixels, "s"), [[0, 1], [0.2, 0.4]])
    unit = np.array([[0.0, 0.5]], np.float32)
    assert scale_unit_interval(unit, "s") is unit
    with pytest.raises(InputError, match=r"src: feature value 1.17647 in row 1 is outside"):
        scale_unit_interval(np.array([[0, 1], [300, 2]], np.float32), "src")
    with pytest.raises(InputError, match=r"src: feature value -1 in row 0"):
        scale_unit_interval(np.array([[-1, 0.5]], np.float32), "src")
    with pytest.raises(InputError, match=r"src: feature value NaN in row 1"):
        scale_unit_interval(np.array([[0, 1], [np.nan, 0]], np.float32), "src")


def test_read_csv_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("p1,y,p2\n0,3,255\n51,7,0\n")
    features, labels = read_csv_dataset(path, label_col="y")
    np.testing.assert_allclose(features, [[0, 1], [0.2, 0]])
    np.testing.assert_array_equal(labels, [3, 7])
    with pytest.raises(InputError, match=r"d\.csv: no label column 'label' \(columns: p1, y, p2\)"):
        read_csv_dataset(path)


def test_read_csv_directory_in_name_order_and_bad_values(tmp_path: Path) -> None:
    (tmp_path / "part-1.csv").write_text("label,a\n2,0.5\n")
    (tmp_path / "part-0.csv").write_text("label,a\n1,0.25\n")
    (tmp_path / "_SUCCESS").write_text("")
    features, labels = read_csv_dataset(tmp_path)
    np.testing.assert_array_equal(labels, [1, 2])
    np.testing.assert_allclose(features, [[0.25], [0.5]])
    (tmp_path / "part-2.csv").write_text("label,a\n1.5,0.1\n")
    with pytest.raises(InputError, match=r"label column 'label' holds 1.5 in row 2"):
        read_csv_dataset(tmp_path)


def test_read_csv_rejects_text_and_empty_features(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("label,a,b\n1,x,1\n")
    with pytest.raises(InputError, match=r"feature column 'a' is string, not numeric"):
        read_csv_dataset(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("label,a,b\n1,0,1\n2,,1\n")
    with pytest.raises(InputError, match=r"feature column 'a' is empty in row 1"):
        read_csv_dataset(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("label,a,b\n1,0,1\n2,1\n")
    with pytest.raises(InputError, match=r"t\.csv: cannot read CSV: .*columns") as err:
        read_csv_dataset(tmp_path / "t.csv")
    assert "\n" not in str(err.value)


def spark_vectors(rows: list[tuple[int, int | None, list[int] | None, list[float]]]) -> pa.Array:
    """pyspark.ml Vectors as Spark writes them to Parquet: type 1 dense, 0 sparse."""
    return pa.array(
        [{"type": t, "size": s, "indices": i, "values": v} for t, s, i, v in rows],
        pa.struct(
            [
                ("type", pa.int8()),
                ("size", pa.int32()),
                ("indices", pa.list_(pa.int32())),
                ("values", pa.list_(pa.float64())),
            ]
        ),
    )


def test_read_parquet_arrays_and_vectors(tmp_path: Path) -> None:
    arrays = pa.array([[0.0, 255.0, 51.0], [255.0, 0.0, 0.0]], pa.list_(pa.float64()))
    pq.write_table(pa.table({"x": arrays, "label": [4, 5]}), tmp_path / "a.parquet")
    features, labels = read_parquet_dataset(tmp_path / "a.parquet", features_col="x")
    np.testing.assert_allclose(features, [[0, 1, 0.2], [1, 0, 0]])
    np.testing.assert_array_equal(labels, [4, 5])

    vectors = spark_vectors([(1, None, None, [0.5, 0.0, 1.0]), (0, 3, [2], [0.25])])
    pq.write_table(pa.table({"features": vectors, "label": [1, 2]}), tmp_path / "v.parquet")
    features, _ = read_parquet_dataset(tmp_path / "v.parquet")
    np.testing.assert_allclose(features, [[0.5, 0, 1], [0, 0, 0.25]])


def test_read_parquet_errors(tmp_path: Path) -> None:
    ragged = pa.array([[0.0, 1.0], [0.5]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"features": ragged, "label": [0, 1]}), tmp_path / "r.parquet")
    with pytest.raises(InputError, match=r"'features' has 1 values in row 1 but 2 in row 0"):
        read_parquet_dataset(tmp_path / "r.parquet")
    with pytest.raises(InputError, match=r"no label column 'y' \(columns: features, label\)"):
        read_parquet_dataset(tmp_path / "r.parquet", label_col="y")
    nulls = pa.array([[0.0], None], pa.list_(pa.float32()))
    pq.write_table(pa.table({"features": nulls, "label": [0, 1]}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"'features' is null in row 1"):
        read_parquet_dataset(tmp_path / "n.parquet")
    pq.write_table(pa.table({"features": ["a"], "label": [0]}), tmp_path / "s.parquet")
    with pytest.raises(InputError, match=r"'features' is string; expected an array"):
        read_parquet_dataset(tmp_path / "s.parquet")
    with pytest.raises(InputError, match=r"nothing: no such file or directory"):
        read_parquet_dataset(tmp_path / "nothing")


def test_to_arrow_table_layout() -> None:
    features = np.array([[0.0, 0.5], [1.0, 0.25], [0.75, 0.0]], np.float32)
    table = to_arrow_table(features, np.array([7, 8, 9]))
    assert table.schema == pa.schema(
        [("id", pa.int64()), ("features", pa.list_(pa.float32())), ("label", pa.int32())]
    )
    assert table.column("id").to_pylist() == [0, 1, 2]
    assert table.column("features").to_pylist() == features.tolist()
    assert table.column("label").to_pylist() == [7, 8, 9]
