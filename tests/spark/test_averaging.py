"""The averaging engine against the numpy kernel, exactly: a Spark epoch must equal running
`cd_epoch` on each partition's rows (in id order, with the generator seeded by
(seed, layer, epoch, partition)) and averaging the states weighted by rows, in float64, in
partition order. Any difference in seeding, row order, weighting or chunking shows up as a
bit difference."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdbn.data import PackedData, prepare
from sparkdbn.engine.averaging import GROUP_BYTES, MAX_CHUNK, average_round, chunk_length
from sparkdbn.engine.rbm_trainer import LayerTrainer, rbm_step
from sparkdbn.kernels.rbm import CDConfig, RBMParams, cd_epoch
from sparkdbn.metrics import RunLog

N, D, H = 90, 12, 5
SEED, LAYER = 11, 1
CFG = CDConfig(k=1, learning_rate=0.1, momentum=0.5, weight_decay=0.0002, batch_size=16)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return (np.random.default_rng(3).random((N, D)) < 0.4).astype(np.float32)


def packed_data(spark, X: np.ndarray, partitions: int) -> PackedData:
    schema = T.StructType(
        [T.StructField("id", T.LongType()), T.StructField("features", T.ArrayType(T.FloatType()))]
    )
    rows = [[i, [float(v) for v in row]] for i, row in enumerate(X)]
    return prepare(spark, spark.createDataFrame(rows, schema), partitions=partitions)


@pytest.fixture(scope="module")
def one_part(spark, X) -> Iterator[PackedData]:
    data = packed_data(spark, X, 1)
    yield data
    data.unpersist()


@pytest.fixture(scope="module")
def three_parts(spark, X) -> Iterator[PackedData]:
    data = packed_data(spark, X, 3)
    yield data
    data.unpersist()


def partition_ids(data: PackedData) -> list[np.ndarray]:
    """Each partition's row ids, in the order the partition holds them, by partition id."""
    placed = data.df.select(F.spark_partition_id().alias("p"), "id").collect()
    parts: dict[int, list[int]] = {}
    for row in placed:
        parts.setdefault(row["p"], []).append(row["id"])
    assert sorted(parts) == list(range(len(parts)))
    return [np.array(parts[p]) for p in range(len(parts))]


def initial(n_visible: int = D, n_hidden: int = H) -> RBMParams:
    return RBMParams.init(n_visible, n_hidden, np.random.default_rng(42), scale=0.1)


def kernel_state(
    X: np.ndarray,
    parts: list[np.ndarray],
    state: np.ndarray,
    n_v: int,
    n_h: int,
    epoch: int,
    seed: int = SEED,
) -> tuple[np.ndarray, float]:
    """The reference: one cd_epoch per partition from `state`, states averaged by row count.

    Returns the averaged [params, velocity] vector and the summed squared reconstruction error.
    """
    size = n_v * n_h + n_v + n_h
    acc, total, recon = None, 0, 0.0
    for p, ids in enumerate(parts):
        params = RBMParams.from_flat(state[:size], n_v, n_h)
        velocity = RBMParams.from_flat(state[size:], n_v, n_h)
        rng = np.random.default_rng([seed, LAYER, epoch, p])
        stats = cd_epoch(params, velocity, X[ids], CFG, rng)
        flat = np.concatenate([params.to_flat(), velocity.to_flat()]).astype(np.float64)
        acc = flat * len(ids) if acc is None else acc + flat * len(ids)
        total += len(ids)
        recon = stats.recon_sq_error if p == 0 else recon + stats.recon_sq_error
    return (acc / total).astype(np.float32), recon


def trainer(spark, seed: int = SEED, epochs: int = 2) -> LayerTrainer:
    run = RunLog("sequential", out=io.StringIO())
    return LayerTrainer(spark, LAYER, initial(), CFG, seed, epochs, run)


def start_state(n_v: int = D, n_h: int = H) -> np.ndarray:
    params = initial(n_v, n_h)
    return np.concatenate([params.to_flat(), params.zeros_like().to_flat()])


def test_one_partition_equals_the_kernel(spark, X, one_part) -> None:
    """With one partition, two Spark epochs are bit-identical to two direct cd_epoch calls on
    the rows in id order, seeded (seed, layer, epoch, 0), momentum carried between epochs."""
    [ids] = partition_ids(one_part)
    np.testing.assert_array_equal(ids, np.arange(N))
    t = trainer(spark)
    params, velocity = initial(), initial().zeros_like()
    for epoch in range(2):
        record = t.train_epoch(one_part)
        stats = cd_epoch(params, velocity, X, CFG, np.random.default_rng([SEED, LAYER, epoch, 0]))
        assert record.epoch == epoch
        assert record.recon_error == stats.recon_sq_error / N
    assert t.done
    assert np.array_equal(t.params.W, params.W)
    assert np.array_equal(t.params.vbias, params.vbias)
    assert np.array_equal(t.params.hbias, params.hbias)
    assert np.array_equal(t.state, np.concatenate([params.to_flat(), velocity.to_flat()]))


def test_three_partitions_equal_the_weighted_kernel_average(spark, X, three_parts) -> None:
    """With 3 partitions, each epoch's parameters and momentum buffers are the row-weighted
    float64 average (partition order) of 3 kernel runs seeded (seed, layer, epoch, p)."""
    parts = partition_ids(three_parts)
    assert len(parts) == 3 and sum(map(len, parts)) == N
    assert all(len(ids) and np.all(np.diff(ids) > 0) for ids in parts)
    assert len({len(ids) for ids in parts}) > 1  # unequal sizes, so weighting matters
    t = trainer(spark)
    expected = start_state()
    for epoch in range(2):
        record = t.train_epoch(three_parts)
        expected, recon = kernel_state(X, parts, expected, D, H, epoch)
        assert np.array_equal(t.state, expected)
        assert record.recon_error == recon / N


def test_round_metrics_sum_the_kernel_runs(spark, X, three_parts) -> None:
    """average_round reports all rows and the exact sum of the partitions' recon_sq_error."""
    parts = partition_ids(three_parts)
    result = average_round(
        three_parts.df.select("x"), start_state(), rbm_step(D, H, CFG), (SEED, LAYER, 0), 3
    )
    expected, recon = kernel_state(X, parts, start_state(), D, H, 0)
    assert result.n_rows == N
    assert result.sums.tolist() == [recon]
    assert np.array_equal(result.state, expected)


def test_chunk_length_bounds_groups() -> None:
    """Chunks cover a small state whole, shrink as partitions grow, and keep a group
    (partitions × chunk floats) within GROUP_BYTES down to the 1024-float floor."""
    assert chunk_length(154, 3) == 154
    assert chunk_length(5000, 3) == 5000
    assert chunk_length(5000, 1 << 20) == 1024
    assert chunk_length(10**8, 1) == MAX_CHUNK
    sizes = [chunk_length(10**8, p) for p in (1, 16, 256, 4096, 1 << 16, 1 << 20)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1024
    for p, size in zip((1, 16, 256, 4096), sizes, strict=False):
        assert size * p * 4 <= GROUP_BYTES


def test_state_split_in_chunks_is_reassembled(spark, X, three_parts) -> None:
    """A state cut into several chunks (many `partitions` ⇒ 1024-float chunks) averages to
    the same bits as one chunk and as the kernel reference."""
    n_h = 48
    state = start_state(D, n_h)
    assert chunk_length(state.size, 1 << 20) < state.size <= chunk_length(state.size, 3)
    step = rbm_step(D, n_h, CFG)
    key = (SEED, LAYER, 0)
    whole = average_round(three_parts.df.select("x"), state, step, key, 3)
    chunked = average_round(three_parts.df.select("x"), state, step, key, 1 << 20)
    expected, recon = kernel_state(X, partition_ids(three_parts), state, D, n_h, 0)
    assert np.array_equal(chunked.state, whole.state)
    assert np.array_equal(chunked.state, expected)
    assert chunked.sums.tolist() == whole.sums.tolist() == [recon]


def test_chunks_are_weighted_and_put_back_in_order(spark, three_parts) -> None:
    """A step that adds its row count to a 5000-float ramp: 5 chunks come back in order, each
    element the row-weighted mean of the partitions' values."""
    sizes = [len(ids) for ids in partition_ids(three_parts)]
    state = np.arange(5000, dtype=np.float32)

    def step(table: pa.Table, s: np.ndarray, rng: np.random.Generator):
        n = table.num_rows
        return s + np.float32(n), n, np.array([n, 1.0])

    result = average_round(three_parts.df.select("x"), state, step, (0,), 1 << 20)
    acc = sum((state.astype(np.float64) + n) * n for n in sizes)
    assert np.array_equal(result.state, (acc / N).astype(np.float32))
    assert result.n_rows == N and result.sums.tolist() == [N, 3.0]


def test_same_seed_is_bit_identical_and_seed_matters(spark, X, three_parts) -> None:
    """Two runs with one seed, even on a freshly prepared copy of the data, agree to the bit;
    another seed gives other parameters."""
    again = packed_data(spark, X, 3)
    runs = []
    for data, seed in ((three_parts, SEED), (again, SEED), (three_parts, SEED + 1)):
        t = trainer(spark, seed=seed, epochs=1)
        t.train_epoch(data)
        runs.append(t.state)
    again.unpersist()
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_width_mismatch_is_refused(spark, three_parts) -> None:
    """A trainer never runs on data of another width."""
    run = RunLog("sequential", out=io.StringIO())
    t = LayerTrainer(spark, 0, initial(D + 1, H), CFG, SEED, 1, run)
    with pytest.raises(ValueError, match=f"layer 0 expects {D + 1} inputs, got {D}"):
        t.train_epoch(three_parts)
