"""The averaging engine against the numpy kernel, exactly: a Spark epoch must equal running
`cd_epoch` on each partition's rows (in id order, with the generator seeded by
(seed, layer, epoch, partition)) and averaging the states weighted by rows, in float64, in
partition order. Any difference in seeding, row order, weighting or chunking shows up as a
bit difference."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark import SparkFiles
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdbn.data import PackedData, prepare
from sparkdbn.engine.averaging import (
    GROUP_BYTES,
    SUM_GROUP,
    average_round,
    chunk_length,
)
from sparkdbn.engine.rbm_trainer import LayerTrainer, rbm_step
from sparkdbn.kernels.averaging import PRETRAINING, AveragingSettings, round_rows
from sparkdbn.kernels.rbm import CDConfig, RBMParams, cd_epoch, hidden_probs, initial_chains
from sparkdbn.metrics import RunLog

N, D, H = 90, 12, 5
SEED, LAYER = 11, 1
CFG = CDConfig(k=1, learning_rate=0.1, momentum=0.5, weight_decay=0.0002, batch_size=16)
PCD = dataclasses.replace(CFG, cd="pcd")
# The exact-likelihood toy: epochs per strategy, and the least lead of the default over plain.
TOY_EPOCHS, TOY_MARGIN = 20, 0.3


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
    """The reference: one cd_epoch per partition from `state`, states averaged by row count,
    added in partition order (up to 8 partitions are one sum group).

    Returns the averaged [params, velocity] vector and the summed squared reconstruction error.
    """
    assert len(parts) <= SUM_GROUP
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


PLAIN = AveragingSettings("plain")


def trainer(
    spark, seed: int = SEED, epochs: int = 2, averaging: AveragingSettings = PLAIN,
    cfg: CDConfig = CFG,
) -> LayerTrainer:
    run = RunLog("sequential", out=io.StringIO())
    return LayerTrainer(spark, LAYER, initial(), cfg, seed, epochs, run, averaging=averaging)


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
    assert three_parts.parts is not None  # staged: two tasks share the three partitions
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

    def step(table: pa.Table, s: np.ndarray, rng: np.random.Generator, rows: np.ndarray, _):
        n = rows.size
        return s + np.float32(n), n, np.array([n, 1.0])

    result = average_round(three_parts.df.select("x"), state, step, (0,), 1 << 20)
    acc = sum((state.astype(np.float64) + n) * n for n in sizes)
    assert np.array_equal(result.state, (acc / N).astype(np.float32))
    assert result.n_rows == N and result.sums.tolist() == [N, 3.0]
    moved = sum(n * 5000.0 * n * n for n in sizes)  # each partition moved every value by n
    assert result.spread == moved


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


def kernel_hidden(X: np.ndarray, parts: list[np.ndarray], state: np.ndarray, epoch: int,
                  sample: bool) -> dict[int, np.ndarray]:
    """The reference positive phase: each partition's cd_epoch with hidden_out, by row id."""
    size = D * H + D + H
    rows = {}
    for p, ids in enumerate(parts):
        params = RBMParams.from_flat(state[:size], D, H)
        velocity = RBMParams.from_flat(state[size:], D, H)
        out = np.empty((len(ids), H), np.float32)
        rng = np.random.default_rng([SEED, LAYER, epoch, p])
        cd_epoch(params, velocity, X[ids], CFG, rng, hidden_out=out, hidden_sample=sample)
        rows.update(zip(ids.tolist(), out, strict=True))
    return rows


@pytest.mark.parametrize("sample", [False, True])
def test_emitting_round_writes_the_positive_phase_and_averages_like_a_round(
    spark, X, three_parts, tmp_path, sample: bool
) -> None:
    """An EmittingRound whose stage is written to Parquet: its state is bit-identical to
    average_round's (and the kernel average), and the written rows are each partition's
    kernel positive phase, by id (compared with chispa)."""
    from chispa import assert_df_equality

    from sparkdbn.engine.averaging import EmittingRound, can_emit
    from sparkdbn.engine.rbm_trainer import rbm_emitting_step

    sc = spark.sparkContext
    assert can_emit(sc, start_state().size, 3) and not can_emit(None, start_state().size, 3)
    assert not can_emit(sc, GROUP_BYTES, 3)
    key = (SEED, LAYER, 0)
    rnd = EmittingRound(sc, start_state(), rbm_emitting_step(D, H, CFG, sample), key)
    source = three_parts.df.select("id", "x")
    source.mapInArrow(rnd.batches, source.schema).write.parquet(str(tmp_path / "rows"))
    result = rnd.result()
    plain = average_round(source.select("x"), start_state(), rbm_step(D, H, CFG), key, 3)
    parts = partition_ids(three_parts)
    expected, recon = kernel_state(X, parts, start_state(), D, H, 0)
    assert np.array_equal(result.state, plain.state) and np.array_equal(result.state, expected)
    assert result.n_rows == N and result.sums.tolist() == [recon]

    hidden = kernel_hidden(X, parts, start_state(), 0, sample)
    want = spark.createDataFrame(
        [(i, hidden[i].tobytes()) for i in range(N)], "id long, x binary"
    )
    got = spark.read.parquet(str(tmp_path / "rows"))
    assert_df_equality(got, want, ignore_row_order=True, ignore_nullable=True)


def test_checksum_limbs_are_exact_through_the_average(spark, three_parts) -> None:
    """rbm_step(checksum=True) adds each partition's checksum terms as two limbs; summed over
    partitions they give back the exact total of the data's terms."""
    from sparkdbn.engine.averaging import exact_limbs, from_limbs
    from sparkdbn.engine.store import checksum_terms

    data_x = np.stack([np.frombuffer(r["x"], np.float32) for r in three_parts.df.collect()])
    step = rbm_step(D, H, CFG, checksum=True)
    result = average_round(three_parts.df.select("x"), start_state(), step, (SEED, LAYER, 0), 3)
    assert from_limbs(result.sums[1:3]) == checksum_terms(data_x)
    for value in (0, 1, (1 << 32) - 1, 1 << 32, 3 * (1 << 40) + 17, -5, -(1 << 35) - 3):
        assert from_limbs(np.array(exact_limbs(value))) == value


# Under local[2,4] (each task tried up to 4 times), partition 1's writing task fails on its
# first attempt after its state went into the accumulator and some rows were written. The
# round must average each partition once and the version hold each row once, exactly as a
# round without the fault, with either writer of the store. Prints what it compares.
RETRIED_EMITTING_ROUND = """
import json, sys
import numpy as np
from pyspark import TaskContext
from pyspark.sql import SparkSession
from sparkdbn.data import prepare
from sparkdbn.engine.averaging import EmittingRound, average_round
from sparkdbn.engine.rbm_trainer import rbm_emitting_step, rbm_step
from sparkdbn.engine.store import RepresentationStore
from sparkdbn.kernels.rbm import CDConfig, RBMParams

spark = (
    SparkSession.builder.master("local[2,4]").appName("retried-emitting-round")
    .config("spark.ui.enabled", "false").config("spark.driver.memory", "512m")
    .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10")
    .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    .getOrCreate()
)
X = (np.random.default_rng(3).random((90, 12)) < 0.4).astype(np.float32)
rows = [(i, [float(v) for v in X[i]]) for i in range(90)]
data = prepare(spark, spark.createDataFrame(rows, "id long, features array<float>"), partitions=3)
params = RBMParams.init(12, 5, np.random.default_rng(42), scale=0.1)
state = np.concatenate([params.to_flat(), params.zeros_like().to_flat()])
cfg = CDConfig(batch_size=16)
emitting = rbm_emitting_step(12, 5, cfg, False)

def failing_midway(table, s, rng, rows, local):
    result, batches = emitting(table, s, rng, rows, local)
    context = TaskContext.get()

    def rows():
        for i, batch in enumerate(batches):
            if i == 1 and context.partitionId() == 1 and context.attemptNumber() == 0:
                raise RuntimeError("injected fault: partition 1, first attempt, mid-write")
            yield batch

    return result, rows()

plain = average_round(data.df.select("x"), state, rbm_step(12, 5, cfg), (11, 1, 0), 3)
out = {}
for task_writes in (True, False):
    store = RepresentationStore(spark, f"{sys.argv[1]}/{task_writes}", task_writes=task_writes)
    rnd = EmittingRound(spark.sparkContext, state, failing_midway, (11, 1, 0))
    version = store.publish(data.df, 5, batches=rnd.batches)
    ids = sorted(r["id"] for r in store.read(version).select("id").collect())
    out[str(task_writes)] = {
        "same_state": bool(np.array_equal(rnd.result().state, plain.state)),
        "states": len(rnd._states.value), "n_rows": version.n_rows,
        "ids": ids == list(range(90)), "verified": store.verify(version),
    }
print(json.dumps(out))
"""


def test_a_retried_emitting_task_counts_once(tmp_path) -> None:
    """A writing task that fails after adding its state and writing rows is retried: the
    state is averaged once (bit-identical to a plain round) and each row is written once."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), PYSPARK_PYTHON=sys.executable)
    result = subprocess.run(
        [sys.executable, "-c", RETRIED_EMITTING_ROUND, str(tmp_path / "store")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "injected fault: partition 1, first attempt, mid-write" in result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"same_state": True, "states": 3, "n_rows": 90, "ids": True, "verified": True}
    assert got == {"True": expected, "False": expected}


def rough_publish(store, data, sample: bool = False):
    from sparkdbn.engine.rbm_trainer import RoughPublish

    def write(batches, before_commit) -> None:
        store.publish(data.df, H, {"in_epoch": True}, batches=batches, before_commit=before_commit)

    return RoughPublish(sample, write)


def test_trainer_publishes_its_epochs_positive_phase(spark, X, three_parts, tmp_path) -> None:
    """train_epoch with a RoughPublish keeps the same state as a plain epoch, and the committed
    version holds each row's positive phase from the kernel (ids and labels kept)."""
    from sparkdbn.engine.store import RepresentationStore

    store = RepresentationStore(spark, str(tmp_path / "store"))
    plain, publishing = trainer(spark), trainer(spark)
    assert publishing.can_publish_rough(three_parts)
    for _ in range(2):
        plain.train_epoch(three_parts)
        before = publishing.state.copy()
        publishing.train_epoch(three_parts, publish=rough_publish(store, three_parts))
    assert np.array_equal(plain.state, publishing.state)
    latest = store.latest()
    assert latest.number == 2 and latest.n_rows == N and latest.meta == {"in_epoch": True}
    hidden = kernel_hidden(X, partition_ids(three_parts), before, 1, False)
    rows = store.read(latest).collect()
    assert sorted(r["id"] for r in rows) == list(range(N))
    for r in rows:
        assert np.array_equal(np.frombuffer(r["x"], np.float32), hidden[r["id"]])


def test_a_diverging_epoch_commits_no_rough_version(spark, three_parts, tmp_path) -> None:
    """The divergence guard runs before the marker: the run stops with nothing published."""
    from sparkdbn.engine.store import RepresentationStore
    from sparkdbn.errors import DivergenceError

    store = RepresentationStore(spark, str(tmp_path / "store"))
    exploding = dataclasses.replace(CFG, learning_rate=1e38, momentum=0.0)
    t = LayerTrainer(
        spark, LAYER, initial(), exploding, SEED, 2, RunLog("x", out=io.StringIO()),
        averaging=PLAIN,
    )
    with pytest.raises(DivergenceError, match="diverged at layer 1, epoch 1/2"):
        t.train_epoch(three_parts, publish=rough_publish(store, three_parts))
    assert store.versions() == [] and t.epoch == 0
    assert np.array_equal(t.state, start_state())


def test_an_epoch_stage_stopped_by_its_guard_leaves_the_session_clean(spark, three_parts):
    """Three rounds run as one barrier stage (`StagedEpoch`); the guard stops it after the
    first round: its tasks end, its exchange directory goes, and the next epoch trains."""
    from sparkdbn.errors import DivergenceError

    assert three_parts.parts is not None  # staged rows: the stage, not a stage per round
    exploding = dataclasses.replace(CFG, learning_rate=1e38, momentum=0.0)
    settings = AveragingSettings("plain", 3)
    t = LayerTrainer(
        spark, LAYER, initial(), exploding, SEED, 2, RunLog("x", out=io.StringIO()),
        averaging=settings,
    )
    with pytest.raises(DivergenceError, match="diverged at layer 1, epoch 1/2"):
        t.train_epoch(three_parts)
    assert not list(Path(SparkFiles.getRootDirectory()).glob("sparkdbn-epoch-*"))
    assert spark.sparkContext.statusTracker().getActiveJobsIds() == []
    healthy = trainer(spark, averaging=settings)
    healthy.train_epoch(three_parts)
    assert healthy.epoch == 1 and np.isfinite(healthy.state).all()


def test_a_changed_version_fails_the_first_epoch_on_it(spark, tmp_path) -> None:
    """A deferred load is checked by the first epoch on it: changed rows raise
    CorruptVersionError and the epoch is not kept; intact rows pass and the debt is paid."""
    from sparkdbn.engine.store import CorruptVersionError, RepresentationStore

    store = RepresentationStore(spark, str(tmp_path / "store"))
    rng = np.random.default_rng(5)
    rows = [(i, rng.random(D, dtype=np.float32).tobytes(), 0) for i in range(N)]
    df = spark.createDataFrame(rows, "id long, x binary, label long").repartition(2)
    good, bad = store.publish(df, D), store.publish(df, D)
    changed = [(i, (np.frombuffer(x, np.float32) * 0.5).tobytes(), y) for i, x, y in rows]
    spark.createDataFrame(changed, "id long, x binary, label long").write.mode(
        "overwrite").parquet(bad.path)
    t = trainer(spark)
    data = store.load(bad, deferred=True)
    with pytest.raises(CorruptVersionError, match="version 2 "):
        t.train_epoch(data)
    assert t.epoch == 0 and np.array_equal(t.state, start_state())
    data.unpersist()
    data = store.load(good, deferred=True)
    t.train_epoch(data)
    assert data.check is None and t.epoch == 1
    t.train_epoch(data)  # no check owed any more
    data.unpersist()


# -- rounds and strategies (engine.rounds) ------------------------------------------------------


def cached(data: PackedData) -> PackedData:
    """The same rows through Spark's DataFrame path instead of the staged files."""
    return dataclasses.replace(data, parts=None)


@pytest.mark.parametrize("strategy", ["auto", "plain", "block", "nesterov"])
@pytest.mark.parametrize("rounds", [None, 3])
def test_one_partition_is_the_kernel_under_every_strategy(spark, X, one_part, strategy, rounds):
    """One partition has nothing to average: any strategy, cut into any number of rounds,
    trains bit-identically to two uninterrupted cd_epoch calls (its generator continues
    from round to round), at the mini-batch the strategy derives (auto's is smaller for
    these 90 rows)."""
    settings = AveragingSettings(strategy, rounds)
    batch = settings.resolve(1, N, CFG.batch_size, 2, PRETRAINING).batch_size
    cfg = dataclasses.replace(CFG, batch_size=batch or CFG.batch_size)
    assert (batch is not None) == (strategy == "auto")
    for data in (one_part, cached(one_part)):
        t = trainer(spark, averaging=settings)
        params, velocity = initial(), initial().zeros_like()
        for epoch in range(2):
            record = t.train_epoch(data)
            rng = np.random.default_rng([SEED, LAYER, epoch, 0])
            stats = cd_epoch(params, velocity, X, cfg, rng)
            assert record.rounds == (rounds or 1)
            assert record.recon_error == pytest.approx(stats.recon_sq_error / N, rel=1e-12)
        assert np.array_equal(t.state, np.concatenate([params.to_flat(), velocity.to_flat()]))


def test_a_round_of_block_momentum_is_its_formula(spark, X, three_parts) -> None:
    """Nesterov block momentum, one round per epoch, local momentum reset: each epoch starts
    the partitions at x + η·Δ with zero velocity, and Δ' = η·Δ + ζ·(ȳ − start), x' = x + Δ',
    with ȳ the row-weighted kernel average; the velocity is the averaged one."""
    eta, zeta = 0.6, 1.5
    settings = AveragingSettings("nesterov", 1, eta, zeta, "reset", 1.0, 0.0)
    t = trainer(spark, epochs=3, averaging=settings)
    parts = partition_ids(three_parts)
    size = D * H + D + H
    x, delta = start_state(), np.zeros(size, np.float32)
    for epoch in range(3):
        t.train_epoch(three_parts)
        start = np.concatenate([x[:size] + np.float32(eta) * delta, np.zeros(size, np.float32)])
        mean, _ = kernel_state(X, parts, start.astype(np.float32), D, H, epoch)
        change = mean[:size].astype(np.float64) - start[:size]
        step = eta * delta.astype(np.float64) + zeta * change
        x = np.concatenate([(x[:size] + step).astype(np.float32), mean[size:]])
        delta = step.astype(np.float32)
        assert np.array_equal(t.state, x) and np.array_equal(t.loop.delta, delta)


def rounds_reference(X, parts, state, epoch, rounds, hidden=None, cfg=CFG, chains=None):
    """Plain averaging in `rounds` rounds, written out: each partition's epoch order and
    generator come from (seed, layer, epoch, partition); round r trains its r-th slice of
    whole mini-batches, the generator continuing where round r - 1 left it. With `hidden` (a
    dict), the last round's positive phase goes in by row id: the slice's from its own
    mini-batches, the partition's other rows' under the weights the round starts from. PCD
    keeps each partition's chains in `chains` (a dict), from its first rows on, across
    rounds and epochs."""
    size = D * H + D + H
    generators = {}
    for r in range(rounds):
        if hidden is not None and r == rounds - 1:
            start = RBMParams.from_flat(state[:size], D, H)
            hidden.update(zip(range(N), hidden_probs(start, X), strict=True))
        acc, n = None, 0
        for p, ids in enumerate(parts):
            rng = np.random.default_rng([SEED, LAYER, epoch, p])
            order = rng.permutation(len(ids))
            if p in generators:
                rng.bit_generator.state = generators[p]
            rows = order[round_rows(len(ids), CFG.batch_size, r, rounds)]
            params = RBMParams.from_flat(state[:size], D, H)
            velocity = RBMParams.from_flat(state[size:], D, H)
            out = np.empty((len(ids), H), np.float32)
            if chains is not None:
                chains.setdefault(p, initial_chains(X[ids], CFG.pcd_chains))
            cd_epoch(params, velocity, X[ids], cfg, rng, rows=rows, hidden_out=out,
                     chains=None if chains is None else chains[p])
            if hidden is not None and r == rounds - 1:
                hidden.update(zip(ids[rows].tolist(), out[rows], strict=True))
            generators[p] = rng.bit_generator.state
            flat = np.concatenate([params.to_flat(), velocity.to_flat()]).astype(np.float64)
            acc = flat * len(rows) if acc is None else acc + flat * len(rows)
            n += len(rows)
        state = (acc / n).astype(np.float32)
    return state


@pytest.mark.parametrize("cfg", [CFG, PCD], ids=["cd", "pcd"])
def test_rounds_train_each_partitions_next_slice(spark, X, three_parts, cfg) -> None:
    """Three rounds per epoch of plain averaging equal `rounds_reference`, to the bit, staged
    (one stage per epoch) and cached (one per round); PCD's chains stay each partition's own,
    from round to round and epoch to epoch."""
    parts = partition_ids(three_parts)
    for data in (three_parts, cached(three_parts)):
        t = trainer(spark, averaging=AveragingSettings("plain", 3), cfg=cfg)
        expected, chains = start_state(), {} if cfg.cd == "pcd" else None
        for epoch in range(2):
            record = t.train_epoch(data)
            expected = rounds_reference(X, parts, expected, epoch, 3, cfg=cfg, chains=chains)
            assert np.array_equal(t.state, expected)
            assert record.rounds == 3 and len(record.replica_divergence) == 3
        assert sorted(t.loop.local) == ([0, 1, 2] if chains is not None else [])
        for p, kept in t.loop.local.items():
            assert np.array_equal(kept, chains[p])


@pytest.mark.parametrize("cfg", [CFG, PCD], ids=["cd", "pcd"])
def test_a_rough_version_of_an_epoch_of_rounds(spark, X, three_parts, tmp_path, cfg) -> None:
    """With three rounds per epoch the epoch's last round writes the rough version: the state
    (and PCD's chains) is the non-publishing epoch's, and each row holds `rounds_reference`'s
    positive phase."""
    from sparkdbn.engine.store import RepresentationStore

    store = RepresentationStore(spark, str(tmp_path / "store"))
    settings = AveragingSettings("plain", 3)
    plain = trainer(spark, averaging=settings, cfg=cfg)
    publishing = trainer(spark, averaging=settings, cfg=cfg)
    plain.train_epoch(three_parts)
    publishing.train_epoch(three_parts, publish=rough_publish(store, three_parts))
    assert np.array_equal(plain.state, publishing.state)
    assert plain.loop.local.keys() == publishing.loop.local.keys()
    assert all(np.array_equal(plain.loop.local[p], publishing.loop.local[p])
               for p in plain.loop.local)
    hidden: dict[int, np.ndarray] = {}
    chains = {} if cfg.cd == "pcd" else None
    rounds_reference(X, partition_ids(three_parts), start_state(), 0, 3, hidden, cfg, chains)
    rows = store.read(store.latest()).collect()
    assert sorted(r["id"] for r in rows) == list(range(N))
    for r in rows:
        assert np.array_equal(np.frombuffer(r["x"], np.float32), hidden[r["id"]])


def test_empty_partitions_and_idle_rounds(spark, X) -> None:
    """More partitions than rows and more rounds than mini-batches: empty partitions and
    partitions with nothing left in a round add nothing; staged and cached alike."""
    data = packed_data(spark, X[:5], 8)
    try:
        for rows in (data, cached(data)):
            t = trainer(spark, averaging=AveragingSettings("auto", 4))
            record = t.train_epoch(rows)
            assert np.isfinite(t.state).all() and np.isfinite(record.recon_error)
            assert record.rows_per_second > 0 and record.rounds == 4
    finally:
        data.unpersist()


def toy(n: int = 2000, flip: float = 0.05, seed: int = 0) -> tuple[np.ndarray, float]:
    """8-bit rows from four prototypes with each bit flipped with probability `flip`, and the
    data distribution's exact mean log-probability (no model can score higher on average)."""
    from tests import exact as ex

    r = np.random.default_rng(seed)
    protos = np.array(
        [[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0, 1, 0],
         [0, 1, 1, 0, 0, 1, 1, 0]], np.float32,
    )
    X = protos[r.integers(0, 4, n)]
    X = np.abs(X - (r.random(X.shape) < flip)).astype(np.float32)
    flips = (ex.binary_states(8)[:, None, :] != protos[None]).sum(axis=-1)
    p = (flip**flips * (1 - flip) ** (8 - flips)).mean(axis=1)
    return X, float((p * np.log(p)).sum())


def test_the_default_beats_plain_averaging_in_exact_likelihood(spark) -> None:
    """8×4 RBM, CD-1 in batches of 20, 2,000 rows over 8 partitions: at equal epochs the
    default's exact mean log-likelihood beats plain once-per-epoch averaging."""
    from tests import exact as ex

    X, bound = toy()
    rows = [(i, [float(v) for v in X[i]]) for i in range(len(X))]
    data = prepare(spark, spark.createDataFrame(rows, "id long, features array<float>"),
                   partitions=8)
    cfg = CDConfig(k=1, learning_rate=0.1, momentum=0.5, weight_decay=0.0, batch_size=20)
    scores = {}
    try:
        for strategy in ("plain", "auto"):
            params = RBMParams.init(8, 4, np.random.default_rng(7))
            t = LayerTrainer(spark, 0, params, cfg, 3, TOY_EPOCHS, RunLog("x", out=io.StringIO()),
                             averaging=AveragingSettings(strategy))
            while not t.done:
                t.train_epoch(data)
            scores[strategy] = ex.mean_log_likelihood(t.params, X, "bernoulli")
    finally:
        data.unpersist()
    assert scores["auto"] > scores["plain"] + TOY_MARGIN, scores
    assert scores["auto"] < bound


def test_the_rate_follows_its_schedule_over_the_epochs(spark) -> None:
    """lr_schedule reaches the epochs' CD settings; the default (exponential, decay 1) keeps
    the configured rate itself."""
    t = LayerTrainer(spark, 0, initial(), CFG, SEED, 10, RunLog("x", out=io.StringIO()),
                     lr_schedule="linear")
    rates = []
    for epoch in range(10):
        t.epoch = epoch
        rates.append(t.epoch_config().learning_rate)
    assert rates == pytest.approx([CFG.learning_rate * (1 - e / 10) for e in range(10)])
    assert trainer(spark).epoch_config().learning_rate == CFG.learning_rate
