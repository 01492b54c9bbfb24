"""What the monitors and the end-of-training measure compute, over a 2-D array of rows.

- The pseudo-log-likelihood of a Bernoulli RBM, Σ_i log P(v_i | v_-i), the estimator of
  scikit-learn's `BernoulliRBM.score_samples`: P(v_i | v_-i) = σ(F(v with bit i flipped) -
  F(v)). scikit-learn flips one random bit per row and scales by n_visible; here either every
  bit (exact) or `bits` distinct random bits per row, scaled by n_visible / bits (unbiased).
  A flipped bit is 1 - v_i, so grey levels get the same formula: a figure to compare epochs
  and data sets by, not a probability.
- The variational lower bound on log p(v) of a DBN (Salakhutdinov & Murray, ICML 2008), whose
  -log Z of the top RBM the caller adds (`kernels.likelihood`).

Everything is float64, so that tests compare against enumeration to rounding.
"""

from __future__ import annotations

import numpy as np

from sparkdbn.kernels.rbm import RBMParams, free_energy, sigmoid, softplus

# Flipped rows × hidden units evaluated at once: about 16 MB of float64.
FLIP_BLOCK = 2**21
# Samples of h ~ q per row in the lower bound's Monte Carlo average.
BOUND_SAMPLES = 10


def _f64(params: RBMParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(a, np.float64) for a in (params.W, params.vbias, params.hbias))


def flip_bits(n_rows: int, n_visible: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Each row's bits to flip: every bit (`bits` 0, or at least n_visible), else `bits`
    distinct ones drawn from `rng`; shape (rows, bits)."""
    if bits == 0 or bits >= n_visible:
        return np.broadcast_to(np.arange(n_visible), (n_rows, n_visible))
    if bits == 1:
        return rng.integers(0, n_visible, size=(n_rows, 1))
    return np.argsort(rng.random((n_rows, n_visible)), axis=1)[:, :bits]


def pseudo_log_likelihood(
    params: RBMParams, V: np.ndarray, bits: int = 0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Per row, Σ_i log σ(F(v^i) - F(v)) over every bit i (`bits` 0), or n_visible / bits
    times the sum over `bits` random distinct bits (drawn from `rng`).

    With x = vW + c and Δ = 1 - 2v_i, F(v^i) - F(v) = -Δ b_i - Σ_j [softplus(x_j + Δ W_ij)
    - softplus(x_j)]: one softplus per flipped bit and hidden unit, no matrix product.
    """
    W, b, c = _f64(params)
    V = np.asarray(V, np.float64)
    n_rows, n_v = V.shape
    if bits and bits < n_v and rng is None:
        raise ValueError("sampled bits need a generator")
    index = flip_bits(n_rows, n_v, bits, rng)
    k = index.shape[1]
    x = V @ W + c
    base = softplus(x)
    out = np.empty(n_rows)
    step = max(1, FLIP_BLOCK // (k * W.shape[1]))
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        idx = index[rows]
        delta = 1.0 - 2.0 * np.take_along_axis(V[rows], idx, axis=1)  # (r, k)
        flipped = softplus(x[rows, None, :] + delta[:, :, None] * W[idx])  # (r, k, n_h)
        gap = -delta * b[idx] - (flipped - base[rows, None, :]).sum(axis=2)
        out[rows] = -softplus(-gap).sum(axis=1)  # log σ(gap) = -softplus(-gap)
    return out * (n_v / k)


def bernoulli_entropy(logits: np.ndarray) -> np.ndarray:
    """Σ_j H(Bernoulli(σ(x_j))) per row: H = softplus(x) - σ(x) x, stable for large |x|."""
    return (softplus(logits) - sigmoid(logits) * logits).sum(axis=1)


def bernoulli_log_prob(logits: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Σ_i log P(v_i) per row for P(v_i = 1) = σ(a_i): v·a - Σ softplus(a)."""
    return (v * logits).sum(axis=1) - softplus(logits).sum(axis=1)


def dbn_bound_terms(
    layers: list[RBMParams],
    V: np.ndarray,
    rng: np.random.Generator,
    samples: int = BOUND_SAMPLES,
) -> np.ndarray:
    """Per row, the lower bound on log p(v) of the DBN `layers` (at least two RBMs) plus the
    top RBM's log Z, which the caller subtracts.

    The DBN's generative model: the top RBM over (h_{L-1}, h_L), then down the directed
    layers p(h_{l-1} | h_l) of the RBMs below (h_0 = v). With the factorial approximate
    posterior q(h_1 … h_{L-1} | v) = Π_l q(h_l | h_{l-1}), each RBM's P(h | v) going up
    (Salakhutdinov & Murray, ICML 2008, eq. 11 for two layers), Jensen's inequality gives

        log p(v) ≥ E_q[Σ_{l<L} log p(h_{l-1} | h_l) - F_L(h_{L-1})] - log Z_L + H(q),

    H(q) = Σ_l E_q[H(q(h_l | h_{l-1}))]. For two layers this is the paper's bound with p*(h_1)
    = e^{-F_2(h_1)}; for deeper stacks it is the same bound with the whole upward pass as q
    (each h_l sampled given the sample below). As in the paper, the expectation is a Monte
    Carlo average over `samples` draws of binary states h ~ q per row, the entropies are exact
    given the state below. For one RBM there is nothing to bound: log p(v) = -F(v) - log Z.
    """
    if len(layers) < 2:
        raise ValueError("the DBN lower bound needs at least two layers")
    V = np.asarray(V, np.float64)
    below = np.repeat(V, samples, axis=0)
    total = np.zeros(below.shape[0])
    for params in layers[:-1]:
        W, b, c = _f64(params)
        up = below @ W + c
        total += bernoulli_entropy(up)
        h = (rng.random(up.shape) < sigmoid(up)).astype(np.float64)
        total += bernoulli_log_prob(h @ W.T + b, below)
        below = h
    total -= free_energy(layers[-1], below, "bernoulli")
    return total.reshape(V.shape[0], samples).mean(axis=1)
