"""Persistent CD (cd="pcd") in the kernel against exact math: the gradient from chains that have
mixed, the update recomputed in float64 from replayed draws, and chains that carry over from
one call (a round, an epoch) to the next."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sparkdbn.kernels.rates import learning_rate_at
from sparkdbn.kernels.rbm import DTYPE, CDConfig, RBMParams, cd_epoch, initial_chains
from tests import exact as ex
from tests.unit.test_rbm_exact import (
    GRADIENT_PROBE,
    _assert_within_noise,
    _cd_estimate,
    _chains,
    _flat,
    _random_params,
    _sigmoid,
)


def test_pcd_from_mixed_chains_estimates_the_exact_gradient() -> None:
    """Chains run 200 Gibbs steps under fixed weights (a learning rate too small to change a
    float32 weight) reach the model's distribution, so one PCD-1 update from them is the exact
    log-likelihood gradient up to sampling noise, with strong weights where CD-1 from the data
    is off by over 20 noise norms."""
    params = _random_params(6, 4, 2.0, seed=2)
    X = _chains("bernoulli")
    exact_grad = _flat(ex.log_likelihood_gradient(params, X, "bernoulli"))
    _, model_var = ex.model_moments(params, "bernoulli")
    se = np.sqrt(_flat(model_var) / len(X)) + 1e-6
    chains = initial_chains(X, len(X))
    still = CDConfig(k=200, learning_rate=1e-30, momentum=0.0, weight_decay=0.0,
                     batch_size=len(X), sample_visible=True, cd="pcd")
    mixed = params.copy()
    cd_epoch(mixed, mixed.zeros_like(), X, still, np.random.default_rng(0), shuffle=False,
             chains=chains)
    assert np.array_equal(mixed.to_flat(), params.to_flat())

    probe = CDConfig(k=1, batch_size=len(X), sample_visible=True, cd="pcd", **GRADIENT_PROBE)
    velocity = params.zeros_like()
    cd_epoch(params.copy(), velocity, X, probe, np.random.default_rng(1), shuffle=False,
             chains=chains)
    _assert_within_noise(_flat((velocity.W, velocity.vbias, velocity.hbias)), exact_grad, se)
    cd1 = CDConfig(k=1, batch_size=len(X), sample_visible=True, **GRADIENT_PROBE)
    assert np.linalg.norm(_cd_estimate(params, X, cd1) - exact_grad) > 20 * np.linalg.norm(se)


@pytest.mark.parametrize("sampled", [False, True])
def test_pcd_update_is_its_recursion_from_the_chains(sampled: bool) -> None:
    """Three shuffled PCD-2 batches (4, 4 and a short 2 rows) with 3 chains follow
    v ← m·v + lr·(v0ᵀh0/n − vkᵀhk/c − wd·W, …), θ ← θ + v, where vk is 2 Gibbs steps from the
    chains, which then hold vk: recomputed in float64 from the same draws (the permutation,
    then per batch the h0 uniforms, and per Gibbs step the chains' hidden uniforms and, if
    sampled, their visible uniforms). The reconstruction error is CD's, from the sampled h0."""
    params = _random_params(5, 3, 1.0, seed=14)
    r = np.random.default_rng(14)
    X = (r.random((10, 5)) < 0.5).astype(DTYPE)
    lr, mom, wd, k = 0.05, 0.5, 0.1, 2
    cfg = CDConfig(k=k, learning_rate=lr, momentum=mom, weight_decay=wd, batch_size=4,
                   sample_visible=sampled, cd="pcd")
    chains = initial_chains(X, 3)
    np.testing.assert_array_equal(chains, X[:3])
    trained, velocity = params.copy(), params.zeros_like()
    stats = cd_epoch(trained, velocity, X, cfg, np.random.default_rng(15), chains=chains)

    rng = np.random.default_rng(15)
    theta = [a.astype(np.float64) for a in (params.W, params.vbias, params.hbias)]
    vel = [np.zeros_like(a) for a in theta]
    fantasy = X[:3].astype(np.float64)
    recon_sq_error = 0.0
    for rows in np.split(rng.permutation(len(X)), [4, 8]):
        W, b, c = theta
        v0 = X[rows].astype(np.float64)
        h0 = _sigmoid(v0 @ W + c)
        v1 = _sigmoid((rng.random(h0.shape, dtype=DTYPE) < h0) @ W.T + b)
        recon_sq_error += ((v1 - v0) ** 2).sum()
        for _ in range(k):
            hk = _sigmoid(fantasy @ W + c)
            fantasy = _sigmoid((rng.random(hk.shape, dtype=DTYPE) < hk) @ W.T + b)
            if sampled:
                fantasy = (rng.random(fantasy.shape, dtype=DTYPE) < fantasy) * 1.0
        hk = _sigmoid(fantasy @ W + c)
        grads = (
            v0.T @ h0 / len(rows) - fantasy.T @ hk / 3 - wd * W,
            v0.mean(0) - fantasy.mean(0),
            h0.mean(0) - hk.mean(0),
        )
        vel = [mom * v + lr * g for v, g in zip(vel, grads, strict=True)]
        theta = [t + v for t, v in zip(theta, vel, strict=True)]

    np.testing.assert_allclose(chains, fantasy, rtol=1e-5, atol=1e-6)
    assert stats.recon_sq_error == pytest.approx(recon_sq_error, rel=1e-5)
    for got, want in zip((velocity.W, velocity.vbias, velocity.hbias), vel, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip((trained.W, trained.vbias, trained.hbias), theta, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_chains_an_epoch_leaves_are_where_the_next_one_starts() -> None:
    """Two epochs over the chains array equal, to the bit, one pass over both epochs' rows in
    a row, which never restarts its chains; restarting them at the data for the second epoch
    gives another model (strong weights: the chains' states matter to their next samples).
    The chains after an epoch are no longer the rows they started at."""
    r = np.random.default_rng(20)
    X = (r.random((40, 6)) < 0.4).astype(DTYPE)
    cfg = CDConfig(k=1, learning_rate=0.1, batch_size=5, sample_visible=True, cd="pcd")
    start = _random_params(6, 4, 2.0, seed=21)
    first, second = r.permutation(40), r.permutation(40)

    def two_epochs(restart: bool) -> tuple[np.ndarray, np.ndarray]:
        params, velocity, chains = start.copy(), start.zeros_like(), initial_chains(X, 5)
        rng = np.random.default_rng(22)
        cd_epoch(params, velocity, X, cfg, rng, rows=first, chains=chains)
        assert not np.array_equal(chains, X[:5])
        if restart:
            chains = initial_chains(X, 5)
        cd_epoch(params, velocity, X, cfg, rng, rows=second, chains=chains)
        return np.concatenate([params.to_flat(), velocity.to_flat()]), chains

    params, velocity, chains = start.copy(), start.zeros_like(), initial_chains(X, 5)
    both = np.concatenate([first, second])
    cd_epoch(params, velocity, X, cfg, np.random.default_rng(22), rows=both, chains=chains)
    carried, carried_chains = two_epochs(restart=False)
    assert np.array_equal(carried, np.concatenate([params.to_flat(), velocity.to_flat()]))
    assert np.array_equal(carried_chains, chains)
    restarted, _ = two_epochs(restart=True)
    assert not np.array_equal(restarted, carried)


def toy_log_likelihood(cd: str, schedule: str, seed: int, epochs: int = 60) -> float:
    """The 8×4 toy (2,000 rows, batch 20, momentum 0.5, rate 0.1) after `epochs` epochs of
    CD-1 or PCD-1 (100 chains) with sampled visible states; its mean exact log-likelihood."""
    from tests.unit.test_likelihood import toy_rows

    X = toy_rows()
    params = RBMParams.init(8, 4, np.random.default_rng(seed))
    velocity = params.zeros_like()
    cfg = CDConfig(k=1, momentum=0.5, weight_decay=0.0, batch_size=20, sample_visible=True,
                   cd=cd)
    chains = initial_chains(X, cfg.pcd_chains) if cd == "pcd" else None
    for epoch in range(epochs):
        rate = learning_rate_at(0.1, epoch, epochs, schedule)
        epoch_cfg = dataclasses.replace(cfg, learning_rate=rate)
        cd_epoch(params, velocity, X, epoch_cfg, np.random.default_rng([seed, epoch]),
                 chains=chains)
    return ex.mean_log_likelihood(params, X, "bernoulli")


def test_pcd_on_its_schedule_beats_cd1_on_the_toy() -> None:
    """PCD with Tieleman's linearly decaying rate ends at a higher exact log-likelihood than
    CD-1, at CD-1's constant rate and on the same schedule alike: CD-1 settles where its
    biased gradient vanishes, PCD follows the true one. At a constant rate PCD's chains
    cannot follow the weights and the model oscillates (docs/architecture.md, "Persistent
    CD")."""
    seeds = range(3)
    pcd = np.mean([toy_log_likelihood("pcd", "linear", s) for s in seeds])
    cd_constant = np.mean([toy_log_likelihood("cd", "exponential", s) for s in seeds])
    cd_linear = np.mean([toy_log_likelihood("cd", "linear", s) for s in seeds])
    assert pcd > cd_constant and pcd > cd_linear
    assert pcd > 8 * np.log(0.5) + 2  # far above the uniform model's 8·log ½


def test_initial_chains_are_the_first_rows_cycled() -> None:
    X = np.arange(6, dtype=DTYPE).reshape(3, 2)
    np.testing.assert_array_equal(initial_chains(X, 2), X[:2])
    np.testing.assert_array_equal(initial_chains(X, 5), X[[0, 1, 2, 0, 1]])
    assert initial_chains(X, 2).dtype == DTYPE
    with pytest.raises(ValueError, match="cannot start 2 chains from 0 rows"):
        initial_chains(X[:0], 2)


def test_chains_are_for_pcd_only() -> None:
    """CD takes no chains and PCD needs float32 chains as wide as the visible layer."""
    params = _random_params(6, 4, 0.1, seed=19)
    X = np.zeros((10, 6), DTYPE)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="chains are for cd='pcd'"):
        cd_epoch(params, params.zeros_like(), X, CDConfig(), rng, chains=X[:2].copy())
    pcd = CDConfig(cd="pcd")
    with pytest.raises(ValueError, match="cd='pcd' needs chains"):
        cd_epoch(params, params.zeros_like(), X, pcd, rng)
    with pytest.raises(ValueError, match=r"expected float32\[chains, 6\]"):
        cd_epoch(params, params.zeros_like(), X, pcd, rng, chains=np.zeros((2, 5), DTYPE))
    with pytest.raises(ValueError, match=r"invalid CD setting cd='fast'"):
        CDConfig(cd="fast")
