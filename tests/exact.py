"""Exact reference math for tiny RBMs by enumerating states, in float64 (tests only).

Energies (hidden units are always binary):

- Bernoulli visible: E(v, h) = -vᵀWh - bᵀv - cᵀh, v ∈ {0, 1}^n_v.
- Gaussian visible, unit variance: E(v, h) = ½‖v - b‖² - vᵀWh - cᵀh, v ∈ ℝ^n_v. Integrating v
  out gives Z = (2π)^{n_v/2} Σ_h exp(cᵀh + ½‖b + Wh‖² - ½‖b‖²) and v | h ~ N(b + Wh, I).

A DBN is its top RBM's marginal on that RBM's visible layer, then each RBM below as the
directed layer p(h_{l-1} | h_l). Nothing here calls the kernel: every quantity is derived
from the energy function, so a test comparing the kernel with these functions checks the
kernel's formulas. `params` is anything with `W` (n_v × n_h), `vbias` and `hbias` arrays;
gradients are (dW, db, dc) tuples.
"""

from __future__ import annotations

import itertools
from typing import Protocol

import numpy as np

Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


class Params(Protocol):
    W: np.ndarray
    vbias: np.ndarray
    hbias: np.ndarray


def binary_states(n: int) -> np.ndarray:
    """All 2^n binary vectors as float64 rows, the first unit varying slowest."""
    return np.array(list(itertools.product((0.0, 1.0), repeat=n))).reshape(2**n, n)


def logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """log Σ exp(a) along `axis`, stable for large |a|."""
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True)), axis=axis)


def _f64(params: Params) -> Triple:
    return tuple(np.asarray(a, np.float64) for a in (params.W, params.vbias, params.hbias))


def _hidden_states(params: Params) -> np.ndarray:
    return binary_states(np.shape(params.W)[1])


def energy(params: Params, v: np.ndarray, h: np.ndarray, visible: str) -> np.ndarray:
    """E(v, h) for every pair of rows: shape (len(v), len(h))."""
    W, b, c = _f64(params)
    v = np.atleast_2d(np.asarray(v, np.float64))
    h = np.atleast_2d(np.asarray(h, np.float64))
    e = -(v @ W @ h.T) - h @ c
    if visible == "bernoulli":
        return e - (v @ b)[:, None]
    return e + 0.5 * ((v - b) ** 2).sum(axis=1)[:, None]


def neg_free_energy(params: Params, v: np.ndarray, visible: str) -> np.ndarray:
    """log Σ_h exp(-E(v, h)) per row of v, i.e. -F(v)."""
    return logsumexp(-energy(params, v, _hidden_states(params), visible))


def hidden_posterior(params: Params, v: np.ndarray, visible: str) -> np.ndarray:
    """P(h | v) over all hidden states: shape (len(v), 2^n_h)."""
    neg_e = -energy(params, v, _hidden_states(params), visible)
    return np.exp(neg_e - logsumexp(neg_e)[:, None])


def _gaussian_log_hidden_weights(params: Params) -> tuple[np.ndarray, np.ndarray]:
    """(log ∫ exp(-E(v, h)) dv minus the (2π)^{n_v/2} factor, per h; the means b + Wh)."""
    W, b, c = _f64(params)
    H = _hidden_states(params)
    means = b + H @ W.T
    return H @ c + 0.5 * (means**2).sum(axis=1) - 0.5 * b @ b, means


def log_partition(params: Params, visible: str) -> float:
    """log Z: a sum over all 2^(n_v + n_h) joint states, or over h for Gaussian visible."""
    if visible == "bernoulli":
        V = binary_states(np.shape(params.W)[0])
        return float(logsumexp(-energy(params, V, _hidden_states(params), visible).ravel()))
    log_w, _ = _gaussian_log_hidden_weights(params)
    return float(logsumexp(log_w) + 0.5 * np.shape(params.W)[0] * np.log(2 * np.pi))


def log_prob(params: Params, v: np.ndarray, visible: str) -> np.ndarray:
    """log P(v) (a log density for Gaussian visible units) per row of v."""
    return neg_free_energy(params, v, visible) - log_partition(params, visible)


def mean_log_likelihood(params: Params, X: np.ndarray, visible: str) -> float:
    return float(log_prob(params, X, visible).mean())


def joint_bernoulli(params: Params) -> np.ndarray:
    """P(v, h) for all visible states (rows, `binary_states` order) × hidden states (columns)."""
    V = binary_states(np.shape(params.W)[0])
    neg_e = -energy(params, V, _hidden_states(params), "bernoulli")
    return np.exp(neg_e - logsumexp(neg_e.ravel()))


def model_moments(params: Params, visible: str) -> tuple[Triple, Triple]:
    """Model means (E[v hᵀ], E[v], E[h]) and variances of the same statistics v_i h_j, v_i, h_j.

    The variances bound the per-chain variance of the Rao-Blackwellized statistics CD uses
    (v P(h|v)ᵀ, v, P(h|v)): by the law of total variance they can only be smaller.
    """
    H = _hidden_states(params)
    if visible == "bernoulli":
        V = binary_states(np.shape(params.W)[0])
        P = joint_bernoulli(params)
        mean = (V.T @ P @ H, P.sum(axis=1) @ V, P.sum(axis=0) @ H)
        # All three statistics are 0/1 variables, so E[x²] = E[x].
        return mean, tuple(m - m**2 for m in mean)
    log_w, means = _gaussian_log_hidden_weights(params)
    p_h = np.exp(log_w - logsumexp(log_w))
    mean = ((p_h[:, None] * means).T @ H, p_h @ means, p_h @ H)
    second_v = p_h @ (1 + means**2)  # E[v_i²], as v_i | h ~ N(means_i, 1)
    second_vh = (p_h[:, None] * (1 + means**2)).T @ H  # E[v_i² h_j]
    var = (second_vh - mean[0] ** 2, second_v - mean[1] ** 2, mean[2] - mean[2] ** 2)
    return mean, var


def data_moments(params: Params, X: np.ndarray, visible: str) -> Triple:
    """(E_data[v hᵀ], E_data[v], E_data[h]) with h replaced by its exact posterior mean."""
    X = np.asarray(X, np.float64)
    h_mean = hidden_posterior(params, X, visible) @ _hidden_states(params)
    return X.T @ h_mean / len(X), X.mean(axis=0), h_mean.mean(axis=0)


def log_likelihood_gradient(params: Params, X: np.ndarray, visible: str) -> Triple:
    """Gradient of the mean log-likelihood w.r.t. (W, b, c): data moments minus model moments."""
    data = data_moments(params, X, visible)
    model, _ = model_moments(params, visible)
    return tuple(d - m for d, m in zip(data, model, strict=True))


def cd_moments_bernoulli(params: Params, X: np.ndarray, k: int) -> tuple[Triple, Triple]:
    """Exact mean of the CD-k estimate for binary X with sampled binary visible states, and the
    variances of its per-chain negative statistics (v P(h|v)ᵀ, v, P(h|v)) at step k.

    The chain v0 → h0 → v1 → … → vk has the visible-state transition matrix
    T = P(h | v) P(v | h), so vk is distributed as p_data Tᵏ. Chains started from different rows
    are independent, and the variance under the mixture over rows bounds their mean variance.
    """
    V = binary_states(np.shape(params.W)[0])
    P = joint_bernoulli(params)
    h_given_v = P / P.sum(axis=1, keepdims=True)
    v_given_h = (P / P.sum(axis=0, keepdims=True)).T
    p = (np.asarray(X, np.float64)[:, None, :] == V[None]).all(axis=2).mean(axis=0)
    for _ in range(k):
        p = p @ h_given_v @ v_given_h
    h_mean = h_given_v @ _hidden_states(params)
    model = ((p[:, None] * V).T @ h_mean, p @ V, p @ h_mean)
    second = ((p[:, None] * V).T @ h_mean**2, model[1], p @ h_mean**2)
    data = data_moments(params, X, "bernoulli")
    grad = tuple(d - m for d, m in zip(data, model, strict=True))
    return grad, tuple(s - m**2 for s, m in zip(second, model, strict=True))


# --- DBNs: the top RBM, then directed layers down to v ---


def log_p_v_given_h(params: Params, V: np.ndarray, H: np.ndarray) -> np.ndarray:
    """log p(v | h) of the directed layer for every pair: shape (len(V), len(H))."""
    W, b = np.asarray(params.W, np.float64), np.asarray(params.vbias, np.float64)
    a = H @ W.T + b  # (states of h, n_v)
    return V @ a.T - np.logaddexp(0, a).sum(axis=1)[None, :]


def q_of(params: Params, V: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The factorial q(h | v) = Π_j P(h_j | v) of every h state: shape (len(V), len(H))."""
    p = 1 / (1 + np.exp(-(V @ np.asarray(params.W, np.float64) + params.hbias)))
    return np.prod(np.where(H[None] == 1, p[:, None], 1 - p[:, None]), axis=2)


def dbn_log_prob_and_bound(layers: list[Params], V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact log p(v), the bound with factorial q summed over every state), per row.

    Generative model: the top RBM's marginal on its visible layer, then the directed layers
    down. Both by enumerating every hidden state of every layer below the top.
    """
    top = layers[-1]
    log_z = log_partition(top, "bernoulli")
    states = [binary_states(np.shape(p.W)[1]) for p in layers[:-1]]
    # log p(h_{L-1}) then down: log p(h_{l-1}) = logsumexp_h [log p(h_{l-1}|h) + log p(h)].
    log_marg = neg_free_energy(top, states[-1], "bernoulli") - log_z
    for level in range(len(layers) - 2, 0, -1):
        log_marg = logsumexp(
            log_p_v_given_h(layers[level], states[level - 1], states[level]) + log_marg[None, :]
        )
    log_p = logsumexp(log_p_v_given_h(layers[0], V, states[0]) + log_marg[None, :])

    # The bound: E_q[Σ log p(h_{l-1}|h_l) + log p*(h_{L-1})] - log Z + H(q), q summed over
    # every path h_1 … h_{L-1}.
    def bound_from(level: int, below: np.ndarray) -> np.ndarray:
        """E_q[...] + entropies from `below` (states at level l) upwards, per row of below."""
        params, H = layers[level], states[level]
        q = q_of(params, below, H)
        terms = log_p_v_given_h(params, below, H) - np.log(q)
        if level == len(layers) - 2:
            rest = neg_free_energy(top, H, "bernoulli") - log_z
        else:
            rest = bound_from(level + 1, H)
        return (q * (terms + rest[None, :])).sum(axis=1)

    return log_p, bound_from(0, V)
