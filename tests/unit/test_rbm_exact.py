"""The RBM kernel against exact math: every reference value comes from enumerating states of the
energy function in float64 (tests/exact.py), never from the kernel itself."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sparkdbn.kernels.rbm import (
    DTYPE,
    CDConfig,
    RBMParams,
    cd_epoch,
    free_energy,
    hidden_probs,
    reconstruction_sq_error,
    sample_bernoulli,
    sample_visible,
    visible_mean,
)
from tests import exact as ex

# One full-batch update with these settings leaves velocity == the CD gradient estimate.
GRADIENT_PROBE = {"learning_rate": 1.0, "momentum": 0.0, "weight_decay": 0.0}


def _random_params(n_v: int, n_h: int, weight_scale: float, seed: int) -> RBMParams:
    r = np.random.default_rng(seed)
    return RBMParams(
        (r.standard_normal((n_v, n_h)) * weight_scale).astype(DTYPE),
        (r.standard_normal(n_v) * 0.5).astype(DTYPE),
        (r.standard_normal(n_h) * 0.5).astype(DTYPE),
    )


def _flat(arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _chains(visible: str, n_distinct: int = 8, repeats: int = 2000, seed: int = 1) -> np.ndarray:
    """A few distinct training vectors (6 units), each repeated: one CD chain per row."""
    r = np.random.default_rng(seed)
    base = (
        r.random((n_distinct, 6)) < 0.5
        if visible == "bernoulli"
        else r.standard_normal((n_distinct, 6))
    )
    return np.repeat(base.astype(DTYPE), repeats, axis=0)


def _cd_estimate(params: RBMParams, X: np.ndarray, cfg: CDConfig, seed: int = 0) -> np.ndarray:
    """The kernel's CD gradient estimate: the velocity after one full-batch GRADIENT_PROBE step."""
    velocity = params.zeros_like()
    cd_epoch(params.copy(), velocity, X, cfg, np.random.default_rng(seed), shuffle=False)
    return _flat((velocity.W, velocity.vbias, velocity.hbias))


def _assert_within_noise(estimate: np.ndarray, target: np.ndarray, se: np.ndarray) -> None:
    """Every entry within 5 standard errors, the whole vector within 3 noise norms, and the target
    far above the noise, so that a wrong gradient could not pass."""
    noise = np.linalg.norm(se)
    assert np.linalg.norm(target) > 50 * noise
    assert np.max(np.abs(estimate - target) / se) < 5
    assert np.linalg.norm(estimate - target) < 3 * noise
    cosine = estimate @ target / (np.linalg.norm(estimate) * np.linalg.norm(target))
    assert cosine > 0.99


# --- the reference itself ---------------------------------------------------------------------


def test_exact_reference_is_normalized() -> None:
    """exact.log_prob is a distribution: Bernoulli probabilities sum to 1 and the Gaussian density
    integrates to 1 on a fine grid, so log Z is right for both unit types."""
    params = _random_params(6, 4, 1.0, seed=0)
    V = ex.binary_states(6)
    assert np.exp(ex.log_prob(params, V, "bernoulli")).sum() == pytest.approx(1, abs=1e-12)

    small = _random_params(2, 3, 0.8, seed=0)
    axis = np.arange(-12, 12, 0.05)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    mass = np.exp(ex.log_prob(small, grid, "gaussian")).sum() * 0.05**2
    assert mass == pytest.approx(1, abs=1e-9)


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_exact_gradient_matches_finite_differences(visible: str) -> None:
    """exact.log_likelihood_gradient is the derivative of exact.mean_log_likelihood."""
    r = np.random.default_rng(1)
    theta = [r.standard_normal((4, 3)) * 0.7, r.standard_normal(4) * 0.5, r.standard_normal(3)]
    X = (r.random((10, 4)) < 0.5) * 1.0 if visible == "bernoulli" else r.standard_normal((10, 4))

    def mean_ll(arrays: list[np.ndarray]) -> float:
        p = SimpleNamespace(W=arrays[0], vbias=arrays[1], hbias=arrays[2])
        return ex.mean_log_likelihood(p, X, visible)

    analytic = ex.log_likelihood_gradient(
        SimpleNamespace(W=theta[0], vbias=theta[1], hbias=theta[2]), X, visible
    )
    eps = 1e-6
    for arr, grad in zip(theta, analytic, strict=True):
        numeric = np.empty_like(arr)
        for idx in np.ndindex(arr.shape):
            saved = arr[idx]
            arr[idx] = saved + eps
            up = mean_ll(theta)
            arr[idx] = saved - eps
            numeric[idx] = (up - mean_ll(theta)) / (2 * eps)
            arr[idx] = saved
        np.testing.assert_allclose(grad, numeric, atol=1e-8)


# --- 1. free energy ----------------------------------------------------------------------------


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_free_energy_is_minus_log_sum_over_hidden_states(visible: str) -> None:
    """F(v) = -log Σ_h exp(-E(v, h)) (all 64 binary v, or random real v), and F(v) - F(v')
    equals log P(v') - log P(v) from the exact normalized distribution."""
    params = _random_params(6, 4, 1.0, seed=3)
    r = np.random.default_rng(3)
    V = ex.binary_states(6) if visible == "bernoulli" else r.standard_normal((50, 6)) * 1.5
    V = V.astype(DTYPE)  # the kernel and the reference see the same float32 points
    F = free_energy(params, V, visible)
    np.testing.assert_allclose(F, -ex.neg_free_energy(params, V, visible), rtol=1e-9, atol=1e-12)
    log_p = ex.log_prob(params, V, visible)
    np.testing.assert_allclose(
        F[:, None] - F[None, :], log_p[None, :] - log_p[:, None], rtol=0, atol=1e-9
    )


# --- 2. conditionals ---------------------------------------------------------------------------


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_hidden_probs_are_exact_posterior_marginals(visible: str) -> None:
    """hidden_probs(v)_j = P(h_j = 1 | v), summed over all hidden states of the joint."""
    params = _random_params(6, 4, 1.0, seed=4)
    r = np.random.default_rng(4)
    V = ex.binary_states(6) if visible == "bernoulli" else r.standard_normal((50, 6))
    V = V.astype(DTYPE)
    expected = ex.hidden_posterior(params, V, visible) @ ex.binary_states(4)
    got = hidden_probs(params, V)
    assert got.dtype == DTYPE
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_visible_mean_bernoulli_is_exact_conditional() -> None:
    """visible_mean(h)_i = P(v_i = 1 | h), summed over all 64 visible states for each h."""
    params = _random_params(6, 4, 1.0, seed=5)
    V, H = ex.binary_states(6), ex.binary_states(4)
    neg_e = -ex.energy(params, V, H, "bernoulli")
    p_v_given_h = np.exp(neg_e - ex.logsumexp(neg_e, axis=0))
    got = visible_mean(params, H.astype(DTYPE), "bernoulli")
    np.testing.assert_allclose(got, (V.T @ p_v_given_h).T, rtol=1e-5, atol=1e-6)


def test_visible_mean_gaussian_is_center_of_energy() -> None:
    """E(m + δ, h) - E(m, h) = ½‖δ‖² for m = visible_mean(h): v | h is N(m, I), so m = b + Wh."""
    params = _random_params(6, 4, 1.0, seed=6)
    H = ex.binary_states(4)
    m = visible_mean(params, H.astype(DTYPE), "gaussian").astype(np.float64)
    delta = np.random.default_rng(6).standard_normal(m.shape)
    shift = np.diag(ex.energy(params, m + delta, H, "gaussian")) - np.diag(
        ex.energy(params, m, H, "gaussian")
    )
    np.testing.assert_allclose(shift, 0.5 * (delta**2).sum(axis=1), rtol=1e-5, atol=1e-5)


# --- 3. sampling -------------------------------------------------------------------------------


def test_sample_bernoulli_moments() -> None:
    """Draws are 0/1 with mean p and variance p(1 - p), within 5 standard errors."""
    p = np.array([0.0, 0.02, 0.3, 0.5, 0.9, 1.0], DTYPE)
    n = 200_000
    out = np.empty((n, p.size), DTYPE)
    draws = sample_bernoulli(p, np.random.default_rng(7), out)
    assert draws is out
    assert set(np.unique(draws)) <= {0.0, 1.0}
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(draws.mean(axis=0) - p) <= 5 * se)
    assert np.all(np.abs(draws.var(axis=0) - p * (1 - p)) <= 5 * se)
    bern = sample_visible(p, "bernoulli", np.random.default_rng(7), np.empty_like(out))
    np.testing.assert_array_equal(bern, draws)


def test_sample_visible_gaussian_moments() -> None:
    """Gaussian draws have mean `mean` and unit variance, within 5 standard errors."""
    mean = np.array([-2.0, 0.0, 0.5, 3.0], DTYPE)
    n = 200_000
    draws = sample_visible(mean, "gaussian", np.random.default_rng(8), np.empty((n, 4), DTYPE))
    assert np.all(np.abs(draws.mean(axis=0) - mean) <= 5 / np.sqrt(n))
    assert np.all(np.abs(draws.var(axis=0) - 1) <= 5 * np.sqrt(2 / n))


# --- 4. reconstruction error -------------------------------------------------------------------


def test_reconstruction_sq_error_by_hand() -> None:
    """Zero weights: Bernoulli units reconstruct to ½ (error ¼ per unit), Gaussian units to b;
    random weights: Σ (v - σ(σ(vW + c)Wᵀ + b))² computed in float64."""
    zeros = RBMParams(np.zeros((4, 2), DTYPE), np.zeros(4, DTYPE), np.ones(2, DTYPE))
    v = np.array([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], DTYPE)
    assert reconstruction_sq_error(zeros, v, "bernoulli") == 3.0
    shifted = RBMParams(np.zeros((2, 1), DTYPE), np.array([1, 1], DTYPE), np.zeros(1, DTYPE))
    g = np.array([[1, 2], [0, 0]], DTYPE)
    assert reconstruction_sq_error(shifted, g, "gaussian") == 3.0  # (0 + 1) + (1 + 1)

    params = _random_params(6, 4, 1.0, seed=9)
    V = ex.binary_states(6)
    W, b, c = (a.astype(np.float64) for a in (params.W, params.vbias, params.hbias))
    recon = _sigmoid(_sigmoid(V @ W + c) @ W.T + b)
    expected = ((V - recon) ** 2).sum()
    got = reconstruction_sq_error(params, V.astype(DTYPE), "bernoulli")
    assert got == pytest.approx(expected, rel=1e-5)


# --- 5. CD gradient vs the exact gradient -------------------------------------------------------


def test_cd_long_chain_estimates_exact_gradient_bernoulli() -> None:
    """CD-200 over 16 000 chains is the exact log-likelihood gradient up to sampling noise.

    The exact CD-200 mean equals the exact gradient here (the chain has mixed), and the noise is
    bounded by the exact per-chain variance of the negative statistics at step 200."""
    params = _random_params(6, 4, 1.0, seed=2)
    X = _chains("bernoulli")
    exact_grad = _flat(ex.log_likelihood_gradient(params, X, "bernoulli"))
    cd_mean, cd_var = ex.cd_moments_bernoulli(params, X, 200)
    np.testing.assert_allclose(_flat(cd_mean), exact_grad, atol=1e-10)
    se = np.sqrt(_flat(cd_var) / len(X)) + 1e-6  # floor: float32 rounding of exact-0/1 statistics
    cfg = CDConfig(k=200, batch_size=len(X), sample_visible=True, **GRADIENT_PROBE)
    _assert_within_noise(_cd_estimate(params, X, cfg), exact_grad, se)


def test_cd_long_chain_estimates_exact_gradient_gaussian() -> None:
    """Same for unit-variance Gaussian visible units, with the model variance of v_i h_j, v_i,
    h_j (an upper bound for the Rao-Blackwellized statistics) as the noise level."""
    params = _random_params(6, 4, 0.5, seed=2)
    X = _chains("gaussian")
    exact_grad = _flat(ex.log_likelihood_gradient(params, X, "gaussian"))
    _, model_var = ex.model_moments(params, "gaussian")
    se = np.sqrt(_flat(model_var) / len(X)) + 1e-6
    cfg = CDConfig(
        k=200, batch_size=len(X), visible="gaussian", sample_visible=True, **GRADIENT_PROBE
    )
    _assert_within_noise(_cd_estimate(params, X, cfg), exact_grad, se)


def test_cd1_matches_its_exact_expectation_and_is_biased() -> None:
    """With strong weights the kernel's CD-1 matches the exact CD-1 mean (p_data T¹), which is
    measurably off the exact gradient (so is mean-field CD-1), while CD-200 is not; exact CD-2
    differs too, so a chain one step too long or short would fail."""
    params = _random_params(6, 4, 2.0, seed=2)
    X = _chains("bernoulli")
    exact_grad = _flat(ex.log_likelihood_gradient(params, X, "bernoulli"))
    cd1_mean, cd1_var = (_flat(t) for t in ex.cd_moments_bernoulli(params, X, 1))
    se = np.sqrt(cd1_var / len(X)) + 1e-6
    noise = np.linalg.norm(se)
    sampled = CDConfig(k=1, batch_size=len(X), sample_visible=True, **GRADIENT_PROBE)
    _assert_within_noise(_cd_estimate(params, X, sampled), cd1_mean, se)
    assert np.linalg.norm(cd1_mean - exact_grad) > 20 * noise
    assert np.linalg.norm(cd1_mean - _flat(ex.cd_moments_bernoulli(params, X, 2)[0])) > 20 * noise

    mean_field = CDConfig(k=1, batch_size=len(X), **GRADIENT_PROBE)
    long_chain = CDConfig(k=200, batch_size=len(X), sample_visible=True, **GRADIENT_PROBE)
    assert np.linalg.norm(_cd_estimate(params, X, mean_field) - exact_grad) > 20 * noise
    assert np.linalg.norm(_cd_estimate(params, X, long_chain) - exact_grad) < 3 * noise


# --- 6. training raises the exact likelihood ---------------------------------------------------


def test_training_raises_exact_log_likelihood_bernoulli() -> None:
    """CD-1 on two noisy prototypes lifts the exact mean log-likelihood well above the init and
    the uniform baseline 6·log ½."""
    r = np.random.default_rng(10)
    prototypes = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]], DTYPE)
    X = prototypes[r.integers(0, 2, 200)]
    X = np.abs(X - (r.random(X.shape) < 0.1)).astype(DTYPE)
    params = RBMParams.init(6, 4, r)
    velocity = params.zeros_like()
    before = ex.mean_log_likelihood(params, X, "bernoulli")
    cfg = CDConfig(k=1, learning_rate=0.1, momentum=0.5, batch_size=20)
    for _ in range(100):
        cd_epoch(params, velocity, X, cfg, r)
    after = ex.mean_log_likelihood(params, X, "bernoulli")
    assert after > before + 1.0
    assert after > 6 * np.log(0.5) + 1.0


def test_training_raises_exact_log_likelihood_gaussian() -> None:
    """CD-1 on standardized 3-D data from two Gaussian clusters lifts the exact mean
    log-likelihood above the init, which is about that of N(0, I)."""
    r = np.random.default_rng(11)
    direction = np.ones(3) / np.sqrt(3)
    X = np.where(r.random((200, 1)) < 0.5, 2.0, -2.0) * direction + 0.5 * r.standard_normal(
        (200, 3)
    )
    X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(DTYPE)
    params = RBMParams.init(3, 4, r)
    velocity = params.zeros_like()
    before = ex.mean_log_likelihood(params, X, "gaussian")
    assert before == pytest.approx(-1.5 * np.log(2 * np.pi) - 1.5, abs=0.01)
    cfg = CDConfig(k=1, learning_rate=0.01, momentum=0.5, batch_size=20, visible="gaussian")
    for _ in range(100):
        cd_epoch(params, velocity, X, cfg, r)
    assert ex.mean_log_likelihood(params, X, "gaussian") > before + 0.3


# --- 7. determinism and validation -------------------------------------------------------------


def test_cd_epoch_is_deterministic_in_the_seed() -> None:
    """Same seed ⇒ bit-identical params and velocity; another seed ⇒ different params."""
    X = _chains("bernoulli", repeats=30)
    cfg = CDConfig(k=2, batch_size=32, sample_visible=True)

    def train(seed: int) -> np.ndarray:
        params = _random_params(6, 4, 0.1, seed=12)
        velocity = params.zeros_like()
        rng = np.random.default_rng(seed)
        for _ in range(3):
            cd_epoch(params, velocity, X, cfg, rng)
        return np.concatenate([params.to_flat(), velocity.to_flat()])

    assert np.array_equal(train(1), train(1))
    assert not np.array_equal(train(1), train(2))


def test_flat_round_trip() -> None:
    """from_flat(to_flat(p)) == p, in the documented layout; a wrong length is refused."""
    params = _random_params(5, 3, 1.0, seed=13)
    flat = params.to_flat()
    assert flat.dtype == DTYPE and flat.shape == (5 * 3 + 5 + 3,)
    np.testing.assert_array_equal(flat[:15], params.W.ravel())
    back = RBMParams.from_flat(flat, 5, 3)
    for a, b in zip(
        (back.W, back.vbias, back.hbias), (params.W, params.vbias, params.hbias), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        RBMParams.from_flat(flat[:-1], 5, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("k", 0),
        ("learning_rate", 0.0),
        ("learning_rate", -0.1),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight_decay", -1e-4),
        ("batch_size", 0),
        ("visible", "poisson"),
    ],
)
def test_cd_config_rejects_invalid_values(field: str, value: object) -> None:
    """CDConfig refuses each invalid setting with a ValueError that names the field."""
    with pytest.raises(ValueError, match=rf"\b{field}="):
        CDConfig(**{field: value})


# --- 8. momentum and weight decay ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "sampled"),
    [("bernoulli", False), ("bernoulli", True), ("gaussian", False), ("gaussian", True)],
)
def test_velocity_recursion_with_momentum_and_weight_decay(visible: str, sampled: bool) -> None:
    """Three shuffled CD-1 batches (4, 4 and a short 2 rows) follow v ← m·v + lr·(grad - wd·W),
    θ ← θ + v, recomputed in float64 from the same random draws (replayed from an identically
    seeded Generator: the permutation, then per batch the h0 uniforms and, if sampled, the
    visible noise). The epoch's reconstruction error is that of the sampled-h0 reconstruction,
    as in Hinton's rbm.m."""
    params = _random_params(5, 3, 1.0, seed=14)
    r = np.random.default_rng(14)
    X = r.random((10, 5)) < 0.5 if visible == "bernoulli" else r.standard_normal((10, 5))
    X = X.astype(DTYPE)
    lr, mom, wd = 0.05, 0.5, 0.1
    cfg = CDConfig(
        k=1,
        learning_rate=lr,
        momentum=mom,
        weight_decay=wd,
        batch_size=4,
        visible=visible,
        sample_visible=sampled,
    )
    trained, velocity = params.copy(), params.zeros_like()
    stats = cd_epoch(trained, velocity, X, cfg, np.random.default_rng(15))

    rng = np.random.default_rng(15)
    theta = [a.astype(np.float64) for a in (params.W, params.vbias, params.hbias)]
    vel = [np.zeros_like(a) for a in theta]
    recon_sq_error = 0.0  # per batch, before its update, from the sampled-h0 reconstruction
    for rows in np.split(rng.permutation(len(X)), [4, 8]):
        W, b, c = theta
        v0 = X[rows].astype(np.float64)
        h0 = _sigmoid(v0 @ W + c)
        v1 = (rng.random(h0.shape, dtype=DTYPE) < h0) @ W.T + b
        v1 = _sigmoid(v1) if visible == "bernoulli" else v1
        recon_sq_error += ((v1 - v0) ** 2).sum()
        if sampled and visible == "bernoulli":
            v1 = (rng.random(v1.shape, dtype=DTYPE) < v1) * 1.0
        elif sampled:
            v1 = v1 + rng.standard_normal(v1.shape, dtype=DTYPE)
        h1 = _sigmoid(v1 @ W + c)
        grads = ((v0.T @ h0 - v1.T @ h1) / len(rows) - wd * W, (v0 - v1).mean(0), (h0 - h1).mean(0))
        vel = [mom * v + lr * g for v, g in zip(vel, grads, strict=True)]
        theta = [t + v for t, v in zip(theta, vel, strict=True)]

    for got, want in zip((velocity.W, velocity.vbias, velocity.hbias), vel, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert stats.n_rows == len(X)
    assert stats.recon_sq_error == pytest.approx(recon_sq_error, rel=1e-5)
    for got, want in zip((trained.W, trained.vbias, trained.hbias), theta, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --- 8. the positive phase as a rough representation ---------------------------------------------


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_hidden_out_is_each_rows_exact_posterior_under_the_weights_its_batch_met(
    visible: str,
) -> None:
    """With hidden_out, row i holds P(h = 1 | v_i), enumerated exactly, under the parameters
    in force when its mini-batch came up (in the epoch's shuffled order), and the training
    itself is bit-identical to an epoch without hidden_out."""
    r = np.random.default_rng(14)
    X = (r.random((23, 6)) < 0.5 if visible == "bernoulli" else r.standard_normal((23, 6)))
    X = X.astype(DTYPE)
    cfg = CDConfig(learning_rate=0.5, momentum=0.5, batch_size=5, visible=visible)
    start = _random_params(6, 4, 0.5, seed=15)
    params, velocity = start.copy(), start.zeros_like()
    H = np.full((23, 4), np.nan, DTYPE)
    cd_epoch(params, velocity, X, cfg, np.random.default_rng(16), hidden_out=H)

    # The same epoch one mini-batch at a time: the order is the generator's first draw, and an
    # unshuffled epoch over one batch draws exactly what the shuffled epoch draws for it.
    rng = np.random.default_rng(16)
    order = rng.permutation(23)
    ref, ref_velocity = start.copy(), start.zeros_like()
    changed = 0
    for s in range(0, 23, 5):
        rows = order[s : s + 5]
        expected = ex.hidden_posterior(ref, X[rows], visible) @ ex.binary_states(4)
        np.testing.assert_allclose(H[rows], expected, rtol=1e-5, atol=1e-6)
        before = ex.hidden_posterior(start, X[rows], visible) @ ex.binary_states(4)
        changed += s > 0 and not np.allclose(H[rows], before, atol=1e-4)
        cd_epoch(ref, ref_velocity, X[rows], cfg, rng, shuffle=False)
    assert changed >= 3  # later batches saw updated weights, not the epoch's first ones
    assert np.array_equal(params.to_flat(), ref.to_flat())
    assert np.array_equal(velocity.to_flat(), ref_velocity.to_flat())
    plain, plain_velocity = start.copy(), start.zeros_like()
    cd_epoch(plain, plain_velocity, X, cfg, np.random.default_rng(16))
    assert np.array_equal(params.to_flat(), plain.to_flat())


def test_hidden_out_samples_are_binary_draws_of_the_posterior() -> None:
    """With hidden_sample, rows hold 0/1 states whose means over many copies of one vector
    match its exact posterior within 5 standard errors (learning rate ~0: fixed weights)."""
    params = _random_params(6, 4, 1.0, seed=17)
    v = np.array([[1, 0, 1, 1, 0, 0]], DTYPE)
    n = 40_000
    X = np.repeat(v, n, axis=0)
    cfg = CDConfig(learning_rate=1e-12, momentum=0.0, weight_decay=0.0, batch_size=500)
    H = np.empty((n, 4), DTYPE)
    cd_epoch(params, params.zeros_like(), X, cfg, np.random.default_rng(18),
             hidden_out=H, hidden_sample=True)
    assert set(np.unique(H)) == {0.0, 1.0}
    p = (ex.hidden_posterior(params, v, "bernoulli") @ ex.binary_states(4))[0]
    assert np.all(np.abs(H.mean(axis=0) - p) <= 5 * np.sqrt(p * (1 - p) / n))


def test_hidden_out_of_the_wrong_shape_is_refused() -> None:
    params = _random_params(6, 4, 0.1, seed=19)
    X = np.zeros((10, 6), DTYPE)
    with pytest.raises(ValueError, match=r"hidden_out has shape \(10, 3\), expected \(10, 4\)"):
        cd_epoch(params, params.zeros_like(), X, CDConfig(), np.random.default_rng(0),
                 hidden_out=np.empty((10, 3), DTYPE))
