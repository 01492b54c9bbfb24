"""Arrow columns ↔ 2-D float32 numpy, without per-row Python.

Training data is cached once as a `binary` column holding each row's float32 values
(little-endian). Spark hands a binary column to Python as one contiguous Arrow buffer, so
`unpack_rows` is a zero-copy view: cheaper than `array<float>`, which Spark converts element by
element on every epoch. `features_to_numpy` reads the user's column types once, when packing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

FLOAT32 = np.dtype("<f4")


def pack_rows(X: np.ndarray) -> pa.BinaryArray:
    """One binary value per row of X (n × d float32), sharing X's memory."""
    X = np.ascontiguousarray(X, dtype=FLOAT32)
    n, d = X.shape
    offsets = np.arange(0, (n + 1) * d * 4, d * 4, dtype=np.int32)
    return pa.BinaryArray.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(X.reshape(-1))]
    )


def unpack_rows(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """The rows of a packed binary column as an (n × width) float32 array.

    Each chunk whose values are contiguous (always, for a column written by `pack_rows`) is
    viewed in place; several chunks are concatenated once.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [_unpack_chunk(chunk, width) for chunk in chunks if len(chunk)]
    if not parts:
        return np.empty((0, width), FLOAT32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _unpack_chunk(chunk: pa.Array, width: int) -> np.ndarray:
    if chunk.null_count:
        raise ValueError("packed feature column has nulls")
    _, offsets_buf, data_buf = chunk.buffers()
    start = chunk.offset
    offsets = np.frombuffer(offsets_buf, np.int32, count=len(chunk) + 1, offset=start * 4)
    n = len(chunk)
    if offsets[-1] - offsets[0] != n * width * 4:
        raise ValueError(f"packed rows are not {width} float32 values wide")
    data = np.frombuffer(data_buf, FLOAT32, count=n * width, offset=int(offsets[0]))
    return data.reshape(n, width)


def features_to_numpy(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Read a features column as float32 rows of equal width, plus each row's width.

    Handles `array<float>`, `array<double>` (list arrays) and pyspark.ml Vectors (struct of
    type, size, indices, values; dense or sparse). Null rows get width -1 and null elements
    become NaN, so the caller can report them. When rows differ in width, the matrix has the
    widest width and shorter rows are padded with NaN; the widths tell which rows are ragged.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_struct(column.type):
        return _vectors_to_numpy(column)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return _lists_to_numpy(column)
    raise TypeError(f"unsupported features type {column.type}")


def _lengths(column: pa.Array) -> np.ndarray:
    offsets = column.offsets.to_numpy()
    widths = np.diff(offsets).astype(np.int64)
    if column.null_count:
        widths[column.is_null().to_numpy(zero_copy_only=False)] = -1
    return widths


def _lists_to_numpy(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    widths = _lengths(column)
    values = column.flatten()  # respects slicing; null rows contribute nothing
    flat = values.to_numpy(zero_copy_only=False).astype(FLOAT32, copy=False)
    n = len(column)
    width = int(widths.max()) if n else 0
    if n and np.all(widths == width):
        return flat.reshape(n, width), widths
    return _scatter_ragged(flat, widths, n, max(width, 0)), widths


def _scatter_ragged(flat: np.ndarray, widths: np.ndarray, n: int, width: int) -> np.ndarray:
    out = np.full((n, width), np.nan, FLOAT32)
    lengths = np.maximum(widths, 0)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    cols = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
    out[rows, cols] = flat
    return out


def _vectors_to_numpy(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """pyspark.ml Vectors arrive as struct<type: int8, size: int32, indices, values>.

    type 1 is dense (values only); type 0 is sparse (size, indices, values).
    """
    n = len(column)
    null = column.is_null().to_numpy(zero_copy_only=False)
    kind = column.field("type").to_numpy(zero_copy_only=False)
    size = column.field("size").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.field("values")
    value_widths = np.diff(values.offsets.to_numpy()).astype(np.int64)
    widths = np.where(kind == 1, value_widths, size)
    widths[null] = -1
    width = int(widths.max()) if n else 0
    out = np.full((n, max(width, 0)), np.nan, FLOAT32)
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(FLOAT32, copy=False)
    row_of_value = np.repeat(np.arange(n), value_widths)
    dense = kind[row_of_value] == 1
    starts = np.cumsum(value_widths) - value_widths
    position = np.arange(len(flat)) - np.repeat(starts, value_widths)
    out[row_of_value[dense], position[dense]] = flat[dense]
    sparse_rows = (kind == 0) & ~null
    if sparse_rows.any():
        out[sparse_rows] = np.where(np.arange(width) < size[sparse_rows, None], 0.0, np.nan)
        indices = column.field("indices").flatten().to_numpy(zero_copy_only=False)
        out[row_of_value[~dense], indices.astype(np.int64)] = flat[~dense]
    return out, widths
