"""The version checksum's integer terms against exact arithmetic, across its blocks."""

from __future__ import annotations

import numpy as np

from sparkdbn.engine.store import checksum_of, checksum_terms

SCALE = 2**20


def test_terms_are_the_exact_sum_of_rounded_values_across_blocks() -> None:
    k = (np.arange(200_000, dtype=np.int64) % 2001) - 1000  # past three block ends
    X = (k.astype(np.float32) / np.float32(SCALE)).reshape(-1, 5)
    assert checksum_terms(X) == int(k.sum())
    assert checksum_of(checksum_terms(X)) == int(k.sum()) / SCALE


def test_terms_round_half_to_even_and_ignore_row_shape() -> None:
    halves = np.array([0.5, 1.5, 2.5, -0.5, 3.25], np.float32) / np.float32(SCALE)
    assert checksum_terms(halves.reshape(1, 5)) == 0 + 2 + 2 + 0 + 3
    assert checksum_terms(halves.reshape(5, 1)) == checksum_terms(halves.reshape(1, 5))
    assert checksum_terms(np.empty((0, 4), np.float32)) == 0
