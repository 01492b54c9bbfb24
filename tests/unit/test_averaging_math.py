"""The averaging strategies' arithmetic (`kernels.averaging`, `engine.rounds`) against the
formulas written out in float64 numpy, without Spark."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparkdbn.engine.averaging import GROUP_BYTES, MAX_CHUNK, chunk_length
from sparkdbn.engine.rounds import divergence_warning
from sparkdbn.kernels.averaging import (
    FINETUNING,
    PRETRAINING,
    Averaging,
    AveragingSettings,
    block_start,
    block_update,
    replica_divergence,
    round_rows,
)


@pytest.mark.parametrize(("n", "batch", "rounds"), [(90, 16, 1), (90, 16, 3), (937, 100, 8),
                                                     (5, 2, 7), (100, 100, 4), (1, 20, 2)])
def test_rounds_cut_the_epoch_at_whole_mini_batches(n: int, batch: int, rounds: int) -> None:
    """The rounds' slices, in order, are the epoch's rows exactly once; every cut is a
    multiple of the batch size (so the mini-batches are the uninterrupted epoch's), and the
    rounds' batch counts differ by at most one (a round may get none)."""
    slices = [round_rows(n, batch, r, rounds) for r in range(rounds)]
    assert slices[0].start == 0 and slices[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:], strict=False))
    assert all(s.start % batch == 0 for s in slices[1:] if s.start < n)
    counts = [math.ceil((s.stop - s.start) / batch) for s in slices]
    assert sum(counts) == math.ceil(n / batch) and max(counts) - min(counts) <= 1


def test_block_update_is_the_written_formula() -> None:
    """Δ' = η·Δ + ζ·(ȳ − y), x' = x + Δ' (float64, then float32); Nesterov starts at x + η·Δ."""
    rng = np.random.default_rng(0)
    x, delta, mean = (rng.standard_normal(50).astype(np.float32) for _ in range(3))
    for strategy in ("block", "nesterov"):
        a = Averaging(strategy, 4, momentum=0.7, learning_rate=1.5)
        start = block_start(x, delta, a)
        want_start = x if strategy == "block" else (x + np.float32(0.7) * delta)
        assert np.array_equal(start, want_start.astype(np.float32))
        new_x, new_delta = block_update(x, delta, start, mean, a)
        step = 0.7 * delta.astype(np.float64) + 1.5 * (mean.astype(np.float64) - start)
        assert np.array_equal(new_delta, step.astype(np.float32))
        assert np.array_equal(new_x, (x.astype(np.float64) + step).astype(np.float32))


def test_no_momentum_and_unit_rate_is_plain_averaging_to_the_bit() -> None:
    """With η = 0 and ζ = 1 every strategy hands back the average itself, so one partition
    under any strategy trains exactly as the kernel does."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000).astype(np.float32)
    mean = (x + rng.standard_normal(1000).astype(np.float32) * np.float32(1e-3))
    for strategy in ("plain", "block", "nesterov"):
        a = Averaging(strategy, 3)
        start = block_start(x, np.zeros_like(x), a)
        new_x, _ = block_update(x, np.zeros_like(x), start, mean, a)
        assert np.array_equal(new_x, mean)


def test_replica_divergence_is_the_rms_distance_over_the_mean_change() -> None:
    rng = np.random.default_rng(2)
    changes = rng.standard_normal((5, 40))
    rows = np.array([3, 9, 1, 7, 4])
    mean = (changes * rows[:, None]).sum(axis=0) / rows.sum()
    spread = float((rows * (changes**2).sum(axis=1)).sum())
    apart = (rows * ((changes - mean) ** 2).sum(axis=1)).sum() / rows.sum()
    want = math.sqrt(apart / (mean @ mean))
    assert replica_divergence(spread, int(rows.sum()), mean) == pytest.approx(want, rel=1e-12)
    same = np.ones((3, 4))
    assert replica_divergence(float(3 * 4), 3, same[0]) == 0.0


def test_divergence_warning_comes_beyond_the_noise_level() -> None:
    """Independent noise gives √(P − 1); the warning starts at twice that in the square."""
    assert divergence_warning(100.0, 1) is None
    assert divergence_warning(math.sqrt(2 * 15) - 0.01, 16) is None
    message = divergence_warning(math.sqrt(2 * 15) + 0.01, 16)
    assert message is not None and "16 partitions" in message and "rounds_per_epoch" in message


def test_learning_rate_warm_up_reaches_the_scale_linearly() -> None:
    a = Averaging("plain", rounds=4, lr_scale=5.0, warmup_epochs=2.0)
    factors = [a.lr_factor(e, r) for e in range(3) for r in range(4)]
    assert factors[0] == pytest.approx(1 + 4 * 0.25 / 2)
    assert factors[7] == pytest.approx(5.0) and factors[-1] == 5.0
    assert factors == sorted(factors)
    assert Averaging("plain", 4, lr_scale=3.0).lr_factor(0, 0) == 3.0


@pytest.mark.parametrize("strategy", ["auto", "plain", "block", "nesterov"])
@pytest.mark.parametrize("phase", [PRETRAINING, FINETUNING])
def test_one_partition_derives_its_own_uninterrupted_epoch(strategy: str, phase: str) -> None:
    a = AveragingSettings(strategy).resolve(1, 60000, 100, 5, phase)
    assert (a.rounds, a.momentum, a.learning_rate, a.lr_scale) == (1, 0.0, 1.0, 1.0)
    assert not a.reset_local_momentum and a.strategy in ("plain", strategy)


def test_plain_is_the_papers_averaging_once_per_epoch() -> None:
    for phase in (PRETRAINING, FINETUNING):
        assert AveragingSettings("plain").resolve(64, 60000, 100, 5, phase) == Averaging("plain")


def test_auto_derives_from_partitions_and_rows() -> None:
    """Small partitions get smaller mini-batches, so that each takes 150 steps per epoch, but
    an epoch takes at most 2,000 mini-batches over all partitions; the gain is
    G = P·√(mini-batch / batch_size), the combined batch C = P·mini-batch / batch_size.
    Pretraining: block momentum and learning rate share min(G, 16); fine-tuning: plain
    averaging of 24 rounds with the learning rate scaled by min(G, 32/√C), warmed up; rounds
    bounded by mini-batches."""
    pre = AveragingSettings().resolve(16, 60000, 100, 5, PRETRAINING)  # 3,750 rows; 60,000 / 2,000
    g16 = 16 * math.sqrt(30 / 100)
    gain = math.sqrt(g16)
    assert pre == Averaging("block", 8, 1 - 1 / gain, 1.0, True, gain, 1.0, 30)
    tune16 = AveragingSettings().resolve(16, 60000, 100, 5, FINETUNING)
    assert tune16 == Averaging("plain", 24, 0.0, 1.0, False, g16, 2.0, 30)
    eight = AveragingSettings().resolve(8, 60000, 100, 5, FINETUNING)  # 7,500 rows: 150 steps
    assert (eight.batch_size, eight.lr_scale) == (50, 8 * math.sqrt(0.5))
    many = AveragingSettings().resolve(64, 60000, 100, 5, PRETRAINING)
    assert (many.batch_size, many.momentum, many.lr_scale) == (30, 0.75, 4.0)
    tune = AveragingSettings().resolve(64, 60000, 100, 5, FINETUNING)
    assert (tune.batch_size, tune.rounds) == (30, 24)
    assert tune.lr_scale == pytest.approx(32 / math.sqrt(64 * 30 / 100))
    two = AveragingSettings().resolve(2, 60000, 100, 5, FINETUNING)  # large partitions
    assert (two.batch_size, two.rounds, two.lr_scale) == (None, 24, 2.0)
    few = AveragingSettings().resolve(8, 200, 20, 60, PRETRAINING)  # 25 rows each
    assert (few.batch_size, few.rounds, few.warmup_epochs) == (8, 4, 1.0)
    alone = AveragingSettings().resolve(1, 898, 100, 10, FINETUNING)  # one small partition
    assert (alone.batch_size, alone.rounds, alone.lr_scale) == (8, 1, 1.0)
    given = AveragingSettings(local_batch_size=64).resolve(4, 60000, 100, 5, FINETUNING)
    assert given.batch_size == 64


def test_settings_given_are_kept() -> None:
    given = AveragingSettings("nesterov", 3, 0.9, 0.5, "averaged", 2.0, 0.0)
    a = given.resolve(16, 60000, 100, 5, FINETUNING)
    assert a == Averaging("nesterov", 3, 0.9, 0.5, False, 2.0, 0.0)
    bm = AveragingSettings("block").resolve(16, 60000, 100, 5, FINETUNING)
    assert (bm.momentum, bm.rounds, bm.reset_local_momentum) == (1 - 1 / 16, 8, True)


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
