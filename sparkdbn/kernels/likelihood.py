"""Log-likelihood of a Bernoulli-Bernoulli RBM: log P(v) = -F(v) - log Z.

The free energy F comes from `kernels.rbm.free_energy`; the partition function Z is the hard
part. Where one side has few units (at most `EXACT_MAX_UNITS`), Z is an exact sum over that
side's states, the other side summed out in closed form. Elsewhere it is estimated by annealed
importance sampling (Neal 2001) from the base-rate model of Salakhutdinov & Murray (ICML 2008):
independent visible units whose biases are the data's smoothed log-odds, hidden biases and
weights zero, whose Z is known in closed form.

AIS runs in groups of chains, each group from its own generator, so that a group is one Spark
task and the groups' log-weights are combined afterwards: the same seed and the same number of
groups give a bit-identical estimate wherever the groups run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparkdbn.kernels.rbm import (
    DTYPE,
    RBMParams,
    free_energy,
    sample_bernoulli,
    sigmoid,
    softplus,
)

Side = Literal["visible", "hidden"]
# 2^20 states cost about a second per 1,000 units on the other side.
EXACT_MAX_UNITS = 20
# States enumerated per block: memory stays at a few tens of MB for 784 units on the other side.
ENUMERATION_BLOCK = 4096

# Defaults of AIS, chosen by measurement (docs/architecture.md, "Log-likelihood"): within
# 0.1 nats of the exact value on a 784×20 RBM, and about three training epochs of time for
# 10,000 rows of a 784×500 RBM. The paper used 100 chains and 14,500 temperatures spread as
# PAPER_SEGMENTS; on RBMs trained on Fashion-MNIST, evenly spaced temperatures gave log-weights
# a third as spread out at equal cost, so `linear` is the default.
DEFAULT_CHAINS = 100
DEFAULT_BETAS = 2500
DEFAULT_GROUPS = 2
SCHEDULES = ("linear", "paper")
DEFAULT_SCHEDULE = "linear"
# The paper's schedule: 500 temperatures in [0, 0.5], 4,000 in [0.5, 0.9], 10,000 in [0.9, 1].
PAPER_SEGMENTS = ((0.5, 500), (0.9, 4000), (1.0, 10000))
# The base rates are the data's means pulled towards 1/2 by this weight (the paper's code adds
# 5 pseudo-counts per 100 rows), so that units always off or always on get finite log-odds.
BASE_RATE_SMOOTHING = 0.05
N_SIGMA = 3.0


def _logsumexp(a: np.ndarray) -> float:
    m = float(np.max(a))
    return m + float(np.log(np.exp(a - m).sum()))


def binary_block(start: int, stop: int, n: int) -> np.ndarray:
    """States start … stop-1 of n binary units as float64 rows, unit 0 the lowest bit."""
    index = np.arange(start, stop, dtype=np.int64)
    return ((index[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(np.float64)


def transposed(params: RBMParams) -> RBMParams:
    """The same RBM seen from its hidden side: Z is symmetric in the roles of v and h."""
    return RBMParams(params.W.T, params.hbias, params.vbias)


def log_z_by_enumeration(
    params: RBMParams, side: Side, block: int = ENUMERATION_BLOCK
) -> float:
    """log Z as a sum over every state of one side, the other side summed out exactly.

    Σ_v Σ_h e^{-E(v,h)} = Σ_v e^{-F(v)}, and F of the transposed RBM gives Σ_h the same way.
    The blocks' sums are combined in log space, so no state's weight overflows.
    """
    rbm = params if side == "visible" else transposed(params)
    n = rbm.n_visible
    if n > EXACT_MAX_UNITS:
        raise ValueError(f"exact log Z enumerates 2^{n} states; at most {EXACT_MAX_UNITS} units")
    partial = [
        _logsumexp(-free_energy(rbm, binary_block(start, min(start + block, 2**n), n),
                                "bernoulli"))
        for start in range(0, 2**n, block)
    ]
    return _logsumexp(np.array(partial))


def exact_log_z(params: RBMParams) -> float:
    """log Z by enumerating the smaller side (at most `EXACT_MAX_UNITS` units)."""
    side: Side = "hidden" if params.n_hidden <= params.n_visible else "visible"
    return log_z_by_enumeration(params, side)


def tractable(params: RBMParams) -> bool:
    return min(params.n_visible, params.n_hidden) <= EXACT_MAX_UNITS


def mean_log_likelihood(params: RBMParams, X: np.ndarray, log_z: float) -> float:
    """Mean of log P(v) = -F(v) - log Z over the rows of X."""
    return -float(free_energy(params, X, "bernoulli").mean()) - log_z


# --- annealed importance sampling ---


@dataclass(frozen=True)
class LogZEstimate:
    """log Z with the interval log(mean weight ± 3 standard errors); `lower` is -inf when the
    weights are too spread out for the mean minus three errors to stay positive."""

    log_z: float
    lower: float
    upper: float
    chains: int


def base_rate_vbias(visible_sum: np.ndarray, n_rows: int) -> np.ndarray:
    """The base-rate model's visible biases: smoothed log-odds of the data's means."""
    if n_rows <= 0:
        raise ValueError("the base-rate model needs at least one data row")
    mean = np.asarray(visible_sum, np.float64) / n_rows
    p = (mean + BASE_RATE_SMOOTHING / 2) / (1 + BASE_RATE_SMOOTHING)
    return np.log(p) - np.log1p(-p)


def base_log_z(base_vbias: np.ndarray, n_hidden: int) -> float:
    """log Z of the base-rate model: independent visible units, n_hidden free hidden units."""
    return float(softplus(np.asarray(base_vbias, np.float64)).sum() + n_hidden * np.log(2.0))


def annealing_schedule(n_betas: int, kind: str = DEFAULT_SCHEDULE) -> np.ndarray:
    """Inverse temperatures 0 = β_0 < … < β_K = 1 with K = n_betas annealing steps.

    `linear` spaces them evenly; `paper` spreads them as the paper's 14,500 (scaled to K),
    densest near 1.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if n_betas < 1:
        raise ValueError(f"AIS needs at least one annealing step, got {n_betas}")
    if kind == "linear":
        return np.linspace(0.0, 1.0, n_betas + 1)
    if n_betas < len(PAPER_SEGMENTS):
        raise ValueError(f"the paper's schedule needs at least {len(PAPER_SEGMENTS)} steps")
    total = sum(count for _, count in PAPER_SEGMENTS)
    pieces, start, used = [], 0.0, 0
    for i, (stop, count) in enumerate(PAPER_SEGMENTS):
        last = i == len(PAPER_SEGMENTS) - 1
        steps = n_betas - used if last else max(1, round(n_betas * count / total))
        pieces.append(np.linspace(start, stop, steps + 1)[:-1])
        start, used = stop, used + steps
    return np.concatenate([*pieces, [1.0]])


def chain_groups(n_chains: int, n_groups: int) -> list[int]:
    """Chains per group: as even as possible, the first groups one larger."""
    if n_chains < 1 or n_groups < 1:
        raise ValueError(f"AIS needs chains and groups ≥ 1, got {n_chains} and {n_groups}")
    n_groups = min(n_groups, n_chains)
    return [n_chains // n_groups + (g < n_chains % n_groups) for g in range(n_groups)]


def _log_unnormalized(
    beta: float, pre: np.ndarray, v_target: np.ndarray, v_base: np.ndarray
) -> np.ndarray:
    """log p*_β(v) = (1-β) v·b_A + β v·b + Σ_j softplus(β (vW + c)_j), per chain; the base
    model's 2^n_hidden hidden states are a constant factor along the path and left out."""
    return (1 - beta) * v_base + beta * v_target + softplus(beta * pre).sum(axis=1)


def path_log_prob(
    params: RBMParams, base_vbias: np.ndarray, beta: float, v: np.ndarray
) -> np.ndarray:
    """log p*_β(v) along the annealing path, per row: the base-rate model's at β = 0 (up to
    its hidden units' constant), -F(v) of `params` at β = 1, and between them the RBM with
    weights βW, hidden biases βc and visible biases βb + (1-β)b_A."""
    v64 = np.asarray(v, np.float64)
    pre = v64 @ params.W.astype(np.float64) + params.hbias
    b = np.asarray(params.vbias, np.float64)
    return _log_unnormalized(beta, pre, v64 @ b, v64 @ np.asarray(base_vbias, np.float64))


def ais_log_weights(
    params: RBMParams,
    base_vbias: np.ndarray,
    betas: np.ndarray,
    n_chains: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The log importance weights of `n_chains` AIS runs from the base-rate model to `params`.

    Each chain starts with an exact sample of the base model; at each β_k its weight gains
    log p*_k(v) - log p*_{k-1}(v), and v moves by one Gibbs sweep that leaves p_k invariant.
    The matrix products and the sampling run in float32 (the model's precision; v and h are
    exactly 0/1), the weights in float64, so the products cost half their float64 time.
    E[w] = Z / Z_base.
    """
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.size < 2 or betas[0] != 0 or betas[-1] != 1:
        raise ValueError("betas must run from 0 to 1")
    W = np.asarray(params.W, DTYPE)
    b = np.asarray(params.vbias, np.float64)
    b_base = np.asarray(base_vbias, np.float64)
    v = np.empty((n_chains, params.n_visible), DTYPE)
    h = np.empty((n_chains, params.n_hidden), DTYPE)
    pre, visible_pre = np.empty_like(h), np.empty_like(v)
    sample_bernoulli(sigmoid(b_base).astype(DTYPE), rng, out=v)
    log_w = np.zeros(n_chains)
    for k in range(1, betas.size):
        np.matmul(v, W, out=pre)
        pre += params.hbias
        pre64, v64 = pre.astype(np.float64), v.astype(np.float64)
        v_target, v_base = v64 @ b, v64 @ b_base
        log_w += _log_unnormalized(betas[k], pre64, v_target, v_base)
        log_w -= _log_unnormalized(betas[k - 1], pre64, v_target, v_base)
        if k == betas.size - 1:
            break
        beta = betas[k]
        sample_bernoulli(sigmoid(beta * pre64), rng, out=h)
        np.matmul(h, W.T, out=visible_pre)
        visible_pre *= DTYPE(beta)
        visible_pre += (beta * b + (1 - beta) * b_base).astype(DTYPE)
        sample_bernoulli(sigmoid(visible_pre, out=visible_pre), rng, out=v)
    return log_w


def group_log_weights(
    params: RBMParams,
    base_vbias: np.ndarray,
    betas: np.ndarray,
    n_chains: int,
    n_groups: int,
    seed_key: tuple[int, ...],
    group: int,
) -> np.ndarray:
    """Group `group`'s log-weights, its generator seeded by (*seed_key, group): a Spark task's
    share of `ais`."""
    size = chain_groups(n_chains, n_groups)[group]
    rng = np.random.default_rng([*seed_key, group])
    return ais_log_weights(params, base_vbias, betas, size, rng)


def combine_log_weights(
    log_weights: np.ndarray, log_z_base: float, n_sigma: float = N_SIGMA
) -> LogZEstimate:
    """log Z = log Z_base + log mean(w), and the same for mean(w) ± n_sigma standard errors,
    computed from the weights scaled by their largest, so none overflows."""
    log_w = np.asarray(log_weights, np.float64)
    if log_w.size < 2:
        raise ValueError("the uncertainty of AIS needs at least two chains")
    top = float(log_w.max())
    w = np.exp(log_w - top)
    mean = float(w.mean())
    error = n_sigma * float(w.std(ddof=1)) / np.sqrt(w.size)
    shift = log_z_base + top
    low = shift + np.log(mean - error) if mean > error else -np.inf
    return LogZEstimate(shift + np.log(mean), float(low), shift + np.log(mean + error), w.size)


def ais(
    params: RBMParams,
    base_vbias: np.ndarray,
    seed_key: tuple[int, ...],
    n_chains: int = DEFAULT_CHAINS,
    n_betas: int = DEFAULT_BETAS,
    n_groups: int = DEFAULT_GROUPS,
    schedule: str = DEFAULT_SCHEDULE,
) -> LogZEstimate:
    """The AIS estimate of log Z, its groups run one after the other (Spark runs them as
    tasks and combines their weights in the same order, to the same bits)."""
    betas = annealing_schedule(n_betas, schedule)
    weights = [
        group_log_weights(params, base_vbias, betas, n_chains, n_groups, seed_key, g)
        for g in range(len(chain_groups(n_chains, n_groups)))
    ]
    return combine_log_weights(
        np.concatenate(weights), base_log_z(base_vbias, params.n_hidden)
    )
