"""Exact log Z and AIS (kernels/likelihood.py) against brute-force sums over every joint state
of tiny RBMs (tests/exact.py), and AIS against exact enumeration on trained RBMs."""

from __future__ import annotations

import numpy as np
import pytest

from sparkdbn.datasets import load_mnist_dir
from sparkdbn.engine.likelihood import AISSettings
from sparkdbn.kernels import likelihood as lk
from sparkdbn.kernels.rbm import DTYPE, CDConfig, RBMParams, cd_epoch, free_energy
from tests import exact as ex
from tests.conftest import FIXTURE_DIR


def random_rbm(n_v: int, n_h: int, scale: float, seed: int) -> RBMParams:
    r = np.random.default_rng(seed)
    return RBMParams(
        (r.standard_normal((n_v, n_h)) * scale).astype(DTYPE),
        (r.standard_normal(n_v) * scale).astype(DTYPE),
        (r.standard_normal(n_h) * scale).astype(DTYPE),
    )


def trained(X: np.ndarray, n_hidden: int, epochs: int, batch: int, seed: int = 0) -> RBMParams:
    rng = np.random.default_rng(seed)
    params = RBMParams.init(X.shape[1], n_hidden, rng)
    velocity = params.zeros_like()
    cfg = CDConfig(batch_size=batch, weight_decay=0.0)
    for _ in range(epochs):
        cd_epoch(params, velocity, X, cfg, rng)
    return params


def toy_rows(n: int = 2000, flip: float = 0.05, seed: int = 0) -> np.ndarray:
    """8-bit rows from four prototypes, each bit flipped with probability `flip`."""
    r = np.random.default_rng(seed)
    protos = np.array(
        [[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0, 1, 0],
         [0, 1, 1, 0, 0, 1, 1, 0]], np.float32,
    )
    X = protos[r.integers(0, 4, n)]
    return np.abs(X - (r.random(X.shape) < flip)).astype(np.float32)


@pytest.mark.parametrize(("n_v", "n_h", "scale"), [(6, 4, 1.0), (5, 9, 1.0), (7, 7, 8.0)])
def test_both_sides_of_the_enumeration_equal_the_sum_over_all_joint_states(
    n_v: int, n_h: int, scale: float
) -> None:
    params = random_rbm(n_v, n_h, scale, seed=n_v)
    brute = ex.log_partition(params, "bernoulli")
    for side in ("visible", "hidden"):
        assert lk.log_z_by_enumeration(params, side) == pytest.approx(brute, rel=1e-12)
    # Blocks smaller than the states, not dividing them: the log-space combination.
    assert lk.log_z_by_enumeration(params, "visible", block=3) == pytest.approx(brute, rel=1e-12)
    assert lk.exact_log_z(params) == pytest.approx(brute, rel=1e-12)


def test_exact_mean_log_likelihood_is_the_brute_force_one() -> None:
    params = random_rbm(6, 4, 1.0, seed=3)
    X = ex.binary_states(6)[::3]
    got = lk.mean_log_likelihood(params, X, lk.exact_log_z(params))
    assert got == pytest.approx(ex.mean_log_likelihood(params, X, "bernoulli"), rel=1e-12)


def test_enumeration_refuses_too_many_units() -> None:
    with pytest.raises(ValueError, match="at most 20 units"):
        lk.exact_log_z(random_rbm(21, 21, 0.1, seed=0))


def test_the_annealing_path_ends_at_the_base_model_and_at_the_target() -> None:
    """β = 0: the base-rate model, whose closed-form log Z is the brute-force one of an RBM with
    zero weights and hidden biases; β = 1: -F of the target; between them the RBM with βW, βc
    and βb + (1-β)b_A, each checked by enumerating every visible state."""
    params = random_rbm(6, 4, 1.0, seed=5)
    base = lk.base_rate_vbias(np.array([0.0, 1, 2, 3, 4, 5]), 5)
    V = ex.binary_states(6)
    zeros = RBMParams(np.zeros((6, 4), DTYPE), base, np.zeros(4, DTYPE))
    assert lk.base_log_z(base, 4) == pytest.approx(ex.log_partition(zeros, "bernoulli"), rel=1e-12)
    at_zero = lk.path_log_prob(params, base, 0.0, V)
    assert ex.logsumexp(at_zero) == pytest.approx(lk.base_log_z(base, 4), rel=1e-12)
    np.testing.assert_allclose(lk.path_log_prob(params, base, 1.0, V),
                               -free_energy(params, V, "bernoulli"), rtol=1e-12)
    for beta in (0.3, 0.9):
        mixed = RBMParams(params.W * beta, beta * params.vbias + (1 - beta) * base,
                          params.hbias * beta)
        expected = ex.log_partition(mixed, "bernoulli")
        got = ex.logsumexp(lk.path_log_prob(params, base, beta, V))
        assert got == pytest.approx(expected, rel=1e-6)


def test_ais_of_the_base_model_itself_is_exact() -> None:
    """Every weight is 1 when the target is the base model: log Z exactly, no uncertainty."""
    base = lk.base_rate_vbias(np.array([1.0, 7, 3, 9, 5]), 10)
    target = RBMParams(np.zeros((5, 3), DTYPE), base.astype(DTYPE), np.zeros(3, DTYPE))
    est = lk.ais(target, target.vbias.astype(np.float64), (0,), n_chains=10, n_betas=20)
    exact = ex.log_partition(target, "bernoulli")
    assert est.log_z == pytest.approx(exact, rel=1e-12)
    assert est.lower == pytest.approx(exact, rel=1e-12) and est.upper == est.log_z


def test_the_schedules() -> None:
    paper = lk.annealing_schedule(14500, "paper")
    assert paper.size == 14501 and paper[0] == 0 and paper[-1] == 1
    assert (np.diff(paper) > 0).all()
    assert [(paper < edge).sum() for edge in (0.5, 0.9, 1.0)] == [500, 4500, 14500]
    np.testing.assert_array_equal(lk.annealing_schedule(4, "linear"), [0, 0.25, 0.5, 0.75, 1])
    assert lk.annealing_schedule(1, "linear").tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="at least 3"):
        lk.annealing_schedule(2, "paper")


def test_combined_weights_and_their_interval() -> None:
    log_w = np.log([1.0, 2.0, 3.0, 6.0])
    est = lk.combine_log_weights(log_w + 1000.0, log_z_base=5.0)
    se = np.std([1.0, 2, 3, 6], ddof=1) / 2
    assert est.log_z == pytest.approx(1005 + np.log(3.0), rel=1e-14)
    assert est.upper == pytest.approx(1005 + np.log(3.0 + 3 * se), rel=1e-14)
    assert est.lower == -np.inf  # 3 - 3·1.08 < 0
    assert est.chains == 4


def test_groups_are_the_kernel_run_group_by_group_and_repeat_bit_for_bit() -> None:
    params = random_rbm(6, 4, 1.0, seed=2)
    base = lk.base_rate_vbias(np.full(6, 3.0), 10)
    est = lk.ais(params, base, (4, 0), n_chains=7, n_betas=30, n_groups=3)
    betas = lk.annealing_schedule(30)
    assert lk.chain_groups(7, 3) == [3, 2, 2]
    weights = np.concatenate([
        lk.ais_log_weights(params, base, betas, size, np.random.default_rng([4, 0, g]))
        for g, size in enumerate(lk.chain_groups(7, 3))
    ])
    assert est == lk.combine_log_weights(weights, lk.base_log_z(base, 4))
    assert est == lk.ais(params, base, (4, 0), n_chains=7, n_betas=30, n_groups=3)


def check_ais(params: RBMParams, X: np.ndarray) -> None:
    """At the default settings: within 0.1 nats of exact and inside its own interval."""
    exact_log_z = lk.exact_log_z(params)
    base = lk.base_rate_vbias(X.sum(axis=0, dtype=np.float64), len(X))
    est = lk.ais(params, base, (0, 0))
    exact = lk.mean_log_likelihood(params, X, exact_log_z)
    estimate = lk.mean_log_likelihood(params, X, est.log_z)
    assert abs(estimate - exact) < 0.1, (estimate, exact)
    assert est.lower <= exact_log_z <= est.upper, (est, exact_log_z)


def test_ais_on_the_8x4_toy() -> None:
    X = toy_rows()
    params = trained(X, 4, epochs=30, batch=20)
    check_ais(params, X)


def test_ais_on_a_784x16_rbm_trained_on_the_fixture() -> None:
    images, _ = load_mnist_dir(FIXTURE_DIR, "train")
    X = images.astype(np.float32)
    params = trained(X, 16, epochs=5, batch=20)
    check_ais(params, X)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 2 chains"):
        AISSettings(chains=1)
    with pytest.raises(ValueError, match="schedule must be one of"):
        AISSettings(schedule="cosine")
