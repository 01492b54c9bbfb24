"""The monitors' math (kernels/monitors.py) against enumeration of tiny models (tests/exact.py):
the pseudo-log-likelihood against its definition, the DBN lower bound against a brute-force
sum of the same bound and against the exact log p(v) of the DBN's generative model."""

from __future__ import annotations

import numpy as np
import pytest

from sparkdbn.kernels.monitors import dbn_bound_terms, flip_bits, pseudo_log_likelihood
from sparkdbn.kernels.rbm import DTYPE, RBMParams
from tests import exact


def rbm(n_v: int, n_h: int, seed: int, scale: float = 1.0) -> RBMParams:
    r = np.random.default_rng(seed)
    return RBMParams(
        (r.standard_normal((n_v, n_h)) * scale).astype(DTYPE),
        (r.standard_normal(n_v) * 0.5).astype(DTYPE),
        (r.standard_normal(n_h) * 0.5).astype(DTYPE),
    )


def brute_pll(params: RBMParams, V: np.ndarray) -> np.ndarray:
    """Σ_i log P(v_i | v_-i) with P from the joint's free energy, each flip enumerated."""
    out = np.zeros(len(V))
    for i in range(V.shape[1]):
        flipped = V.copy()
        flipped[:, i] = 1 - flipped[:, i]
        own = exact.neg_free_energy(params, V, "bernoulli")
        other = exact.neg_free_energy(params, flipped, "bernoulli")
        out += own - np.logaddexp(own, other)
    return out


def test_exact_pseudo_log_likelihood_is_its_definition() -> None:
    params = rbm(6, 4, seed=0)
    V = exact.binary_states(6)
    np.testing.assert_allclose(pseudo_log_likelihood(params, V), brute_pll(params, V), rtol=1e-10)
    # More bits than units is every bit, exactly.
    np.testing.assert_allclose(pseudo_log_likelihood(params, V, bits=9), brute_pll(params, V),
                               rtol=1e-10)


def test_sampled_bits_are_scikit_learns_estimator_and_unbiased() -> None:
    params = rbm(6, 4, seed=1)
    V = exact.binary_states(6)
    # One bit: n_visible · log σ(F(v') - F(v)), scikit-learn's score_samples, same bit.
    [index] = flip_bits(len(V), 6, 1, np.random.default_rng(5)).T
    flipped = V.copy()
    flipped[np.arange(len(V)), index] = 1 - flipped[np.arange(len(V)), index]
    own = exact.neg_free_energy(params, V, "bernoulli")
    expected = 6 * (own - np.logaddexp(own, exact.neg_free_energy(params, flipped, "bernoulli")))
    got = pseudo_log_likelihood(params, V, bits=1, rng=np.random.default_rng(5))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Three distinct bits per row: averaged over rows and draws, the exact sum's mean.
    rng = np.random.default_rng(6)
    mean = np.mean([pseudo_log_likelihood(params, V, 3, rng).mean() for _ in range(1000)])
    assert mean == pytest.approx(brute_pll(params, V).mean(), rel=0.005)
    assert {len(set(row)) for row in flip_bits(50, 6, 3, rng)} == {3}


@pytest.mark.parametrize("sizes", [[5, 4, 3], [4, 3, 3, 2]], ids=["2 layers", "3 layers"])
def test_lower_bound_against_enumeration(sizes: list[int]) -> None:
    pairs = zip(sizes[:-1], sizes[1:], strict=True)
    layers = [rbm(a, b, seed=10 + i) for i, (a, b) in enumerate(pairs)]
    V = exact.binary_states(sizes[0])
    log_p, bound = exact.dbn_log_prob_and_bound(layers, V)
    assert np.all(bound <= log_p + 1e-12)
    assert np.any(bound < log_p - 0.05)  # the factorial q is not the posterior here
    log_z = exact.log_partition(layers[-1], "bernoulli")
    estimate = dbn_bound_terms(layers, V, np.random.default_rng(0), samples=20000) - log_z
    np.testing.assert_allclose(estimate, bound, atol=0.03)


def test_lower_bound_is_tight_where_q_is_the_posterior() -> None:
    """With W¹ = 0, v says nothing of h¹, so the posterior is the prior p(h¹); with W² = 0 the
    prior is factorial, σ(b²), and q(h¹ | v) = σ(c¹) equals it when c¹ = b²."""
    r = np.random.default_rng(3)
    b2 = r.standard_normal(3).astype(DTYPE)
    lower = RBMParams(np.zeros((5, 3), DTYPE), r.standard_normal(5).astype(DTYPE), b2.copy())
    top = RBMParams(np.zeros((3, 2), DTYPE), b2, r.standard_normal(2).astype(DTYPE))
    V = exact.binary_states(5)
    log_p, bound = exact.dbn_log_prob_and_bound([lower, top], V)
    np.testing.assert_allclose(bound, log_p, atol=1e-10)
    log_z = exact.log_partition(top, "bernoulli")
    estimate = dbn_bound_terms([lower, top], V, np.random.default_rng(1), samples=4000) - log_z
    np.testing.assert_allclose(estimate, log_p, atol=0.03)
