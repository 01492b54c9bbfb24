"""Regenerate tests/data/fashion-mnist-small: a small, stratified sample of Fashion-MNIST.

How the fixture was made (run from the repository root, with numpy installed):

    python tests/data/make_fixture.py [SOURCE_DIR]

SOURCE_DIR defaults to /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist,
the official files). With numpy.random.default_rng(0), the script draws 200 images per class
(2,000) from the train split and 50 per class (500) from the t10k split, without replacement,
keeps the chosen rows in their original relative order, and writes them in the same IDX
format, gzipped with mtime 0 so that a rerun reproduces the files byte for byte.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

SOURCE = Path("/usr/share/datasets/fashion-mnist")
TARGET = Path(__file__).resolve().parent / "fashion-mnist-small"
PER_CLASS = {"train": 200, "t10k": 50}
UBYTE = 0x08


def read_ubyte_idx(path: Path) -> np.ndarray:
    """A gzipped unsigned-byte IDX file (the only kind Fashion-MNIST ships)."""
    data = gzip.decompress(path.read_bytes())
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and code == UBYTE, f"{path}: unexpected magic"
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_ubyte_idx(path: Path, values: np.ndarray) -> None:
    """Header (0x0000, type code, ndim, big-endian dims) then the bytes; reproducible gzip."""
    header = struct.pack(f">HBB{values.ndim}I", 0, UBYTE, values.ndim, *values.shape)
    with open(path, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as out:
        out.write(header + np.ascontiguousarray(values, dtype=np.uint8).tobytes())


def stratified_rows(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """per_class row indices of every class, drawn in class order, returned sorted."""
    chosen = [
        rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def main(source: Path) -> None:
    rng = np.random.default_rng(0)
    TARGET.mkdir(parents=True, exist_ok=True)
    for split, per_class in PER_CLASS.items():
        images = read_ubyte_idx(source / f"{split}-images-idx3-ubyte.gz")
        labels = read_ubyte_idx(source / f"{split}-labels-idx1-ubyte.gz")
        rows = stratified_rows(labels, per_class, rng)
        write_ubyte_idx(TARGET / f"{split}-images-idx3-ubyte.gz", images[rows])
        write_ubyte_idx(TARGET / f"{split}-labels-idx1-ubyte.gz", labels[rows])
        print(f"{split}: {len(rows)} rows -> {TARGET}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
