"""Restricted Boltzmann Machine math: free energy, conditionals and CD-k or PCD-k over a 2-D array.

Hidden units are Bernoulli. Visible units are Bernoulli (data in [0, 1]) or Gaussian with unit
variance (standardized real-valued data), as in Hinton's practical guide. Everything is float32
and vectorized; the mini-batch loop reuses its buffers, so an epoch is dominated by the
(4k + 6)·N·n_v·n_h flops of its matrix products. All randomness comes from the caller's
numpy Generator, which keeps Spark retries and resumed runs bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparkdbn.kernels.checks import require

Visible = Literal["bernoulli", "gaussian"]
VISIBLE_TYPES: tuple[str, ...] = ("bernoulli", "gaussian")
# Where the negative phase starts: at the data (CD-k) or at persistent chains (PCD-k).
CD_VARIANTS: tuple[str, ...] = ("cd", "pcd")
DTYPE = np.float32


@dataclass
class RBMParams:
    """Weights W (n_visible × n_hidden), visible bias and hidden bias, all float32."""

    W: np.ndarray
    vbias: np.ndarray
    hbias: np.ndarray

    def __post_init__(self) -> None:
        n_v, n_h = self.W.shape
        if self.vbias.shape != (n_v,) or self.hbias.shape != (n_h,):
            raise ValueError(
                f"bias shapes {self.vbias.shape}, {self.hbias.shape} do not fit W {self.W.shape}"
            )

    @property
    def n_visible(self) -> int:
        return int(self.W.shape[0])

    @property
    def n_hidden(self) -> int:
        return int(self.W.shape[1])

    @classmethod
    def init(
        cls,
        n_visible: int,
        n_hidden: int,
        rng: np.random.Generator,
        scale: float = 0.01,
        vbias: np.ndarray | None = None,
    ) -> RBMParams:
        """Small Gaussian weights and zero hidden biases (Hinton's guide, section 8).

        `vbias` may be set from the data, log(p / (1 - p)) of the visible means.
        """
        W = (rng.standard_normal((n_visible, n_hidden), dtype=DTYPE) * DTYPE(scale)).astype(DTYPE)
        vb = np.zeros(n_visible, DTYPE) if vbias is None else np.asarray(vbias, DTYPE).copy()
        return cls(W, vb, np.zeros(n_hidden, DTYPE))

    def copy(self) -> RBMParams:
        return RBMParams(self.W.copy(), self.vbias.copy(), self.hbias.copy())

    def zeros_like(self) -> RBMParams:
        return RBMParams(*(np.zeros_like(a) for a in (self.W, self.vbias, self.hbias)))

    def to_flat(self) -> np.ndarray:
        """One float32 vector (W row-major, vbias, hbias): the unit Spark ships and averages."""
        return np.concatenate([self.W.ravel(), self.vbias, self.hbias]).astype(DTYPE, copy=False)

    @classmethod
    def from_flat(
        cls, flat: np.ndarray, n_visible: int, n_hidden: int, copy: bool = True
    ) -> RBMParams:
        """Inverse of `to_flat`. With `copy=False` (float32 input) the arrays are views of
        `flat`, so in-place training updates `flat` itself (see `MLPParams.from_flat`)."""
        size = n_visible * n_hidden
        if flat.shape != (size + n_visible + n_hidden,):
            raise ValueError(f"flat vector {flat.shape} does not fit {n_visible}×{n_hidden}")
        flat = np.asarray(flat, DTYPE)
        take = np.copy if copy else np.asarray
        return cls(
            take(flat[:size].reshape(n_visible, n_hidden)),
            take(flat[size : size + n_visible]),
            take(flat[size + n_visible :]),
        )


@dataclass(frozen=True)
class CDConfig:
    """Hyper-parameters of one CD-k epoch. The defaults are every run's: the settings
    schema (sparkdbn/config.py) reads them from here, since a kernel cannot import it."""

    k: int = 1
    learning_rate: float = 0.1
    momentum: float = 0.5
    weight_decay: float = 0.0002
    batch_size: int = 100
    visible: Visible = "bernoulli"
    sample_visible: bool = False
    cd: str = "cd"
    pcd_chains: int = 100  # Tieleman's fantasy particles; fewer lag behind the weights

    def __post_init__(self) -> None:
        require("CD", self, {
            "k": self.k >= 1,
            "learning_rate": self.learning_rate > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": self.batch_size >= 1,
            "visible": self.visible in VISIBLE_TYPES,
            "cd": self.cd in CD_VARIANTS,
            "pcd_chains": self.pcd_chains >= 1,
        })


@dataclass
class EpochStats:
    """Sums over the rows of one epoch, so partitions' stats add up exactly."""

    n_rows: int = 0
    recon_sq_error: float = 0.0

    def add(self, other: EpochStats) -> None:
        self.n_rows += other.n_rows
        self.recon_sq_error += other.recon_sq_error

    @property
    def recon_error(self) -> float:
        """Mean squared reconstruction error per row (summed over visible units)."""
        return self.recon_sq_error / self.n_rows if self.n_rows else float("nan")


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic function in place-friendly form; exp overflow to inf gives the right 0."""
    out = np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)
    return out


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) without overflow: max(x, 0) + log(1 + e^-|x|), four times as fast as
    np.logaddexp(0, x) and as accurate."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def hidden_probs(params: RBMParams, v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """P(h = 1 | v) = sigmoid(v W + c)."""
    out = np.matmul(v, params.W, out=out)
    out += params.hbias
    return sigmoid(out, out=out)


def visible_mean(
    params: RBMParams, h: np.ndarray, visible: Visible, out: np.ndarray | None = None
) -> np.ndarray:
    """E[v | h]: sigmoid(h Wᵀ + b) for Bernoulli units, h Wᵀ + b for unit-variance Gaussians."""
    out = np.matmul(h, params.W.T, out=out)
    out += params.vbias
    return sigmoid(out, out=out) if visible == "bernoulli" else out


def sample_bernoulli(p: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """Binary sample with P(1) = p, into `out` (float32 0/1)."""
    rng.random(out=out, dtype=DTYPE)
    np.less(out, p, out=out)
    return out


def sample_visible(
    mean: np.ndarray, visible: Visible, rng: np.random.Generator, out: np.ndarray
) -> np.ndarray:
    if visible == "bernoulli":
        return sample_bernoulli(mean, rng, out)
    rng.standard_normal(out=out, dtype=DTYPE)
    out += mean
    return out


def free_energy(params: RBMParams, v: np.ndarray, visible: Visible) -> np.ndarray:
    """F(v) with P(v) ∝ exp(-F(v)), per row, in float64 for exact comparisons.

    Bernoulli: -v·b - Σ softplus(vW + c); Gaussian: ½‖v - b‖² - Σ softplus(vW + c).
    """
    v64 = np.asarray(v, np.float64)
    pre = v64 @ params.W.astype(np.float64) + params.hbias
    hidden_term = softplus(pre).sum(axis=1)
    b = params.vbias.astype(np.float64)
    if visible == "bernoulli":
        return -(v64 @ b) - hidden_term
    return 0.5 * ((v64 - b) ** 2).sum(axis=1) - hidden_term


def reconstruction(params: RBMParams, v: np.ndarray, visible: Visible) -> np.ndarray:
    """Mean-field reconstruction E[v | P(h | v)]: one deterministic up-down pass."""
    return visible_mean(params, hidden_probs(params, v), visible)


def reconstruction_sq_error(params: RBMParams, v: np.ndarray, visible: Visible) -> float:
    """Sum over rows and units of (v - reconstruction)², float64 accumulation."""
    diff = reconstruction(params, v, visible) - v
    return float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))


class _Buffers:
    """Scratch arrays for one mini-batch size, reused across batches: no allocation per batch.

    The data rows v0 and the negative rows vk sit one above the other in `pair_v`, and h0 and
    hk likewise in `pair_h`, so the weight gradient is a single product pair_vᵀ·pair_h, with
    the learning rate, 1/n and hk's minus sign folded into the (small) hidden rows first.
    The negative rows are the batch's own (CD) or `chains` persistent ones (PCD).
    """

    def __init__(
        self, batch: int, n_v: int, n_h: int, with_decay: bool, chains: int | None = None
    ) -> None:
        negative = batch if chains is None else chains
        widest = max(batch, negative)
        self.v = np.empty((batch + negative, n_v), DTYPE)
        self.h = np.empty((batch + negative, n_h), DTYPE)
        self.h_sample = np.empty((widest, n_h), DTYPE)
        self.v_spare = np.empty((widest, n_v), DTYPE)
        self.dW = np.empty((n_v, n_h), DTYPE)
        self.decay = np.empty((n_v, n_h), DTYPE) if with_decay else None

    def rows(self, n: int, negative: int | None = None) -> _BatchViews:
        return _BatchViews(self, n, n if negative is None else negative)


class _BatchViews:
    """The buffers cut to a batch of n data rows and m negative rows (CD: m = n; all but the
    last batch are full)."""

    def __init__(self, buf: _Buffers, n: int, m: int) -> None:
        self.pair_v, self.pair_h = buf.v[: n + m], buf.h[: n + m]
        self.v0, self.vk = self.pair_v[:n], self.pair_v[n:]
        self.h0, self.hk = self.pair_h[:n], self.pair_h[n:]
        self.h_sample, self.v_spare = buf.h_sample[:n], buf.v_spare[:n]
        self.chain_h_sample, self.chain_v_spare = buf.h_sample[:m], buf.v_spare[:m]
        self.dW, self.decay = buf.dW, buf.decay


def _sq_dist(a: np.ndarray, b: np.ndarray, scratch: np.ndarray) -> float:
    """Σ (a - b)², accumulated in float64."""
    diff = np.subtract(a, b, out=scratch)
    return float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))


def _cd_batch(
    params: RBMParams,
    velocity: RBMParams,
    cfg: CDConfig,
    rng: np.random.Generator,
    buf: _BatchViews,
    positive: Callable[[np.ndarray, np.ndarray], None] | None = None,
    chains: np.ndarray | None = None,
) -> float:
    """One CD-k (or, with `chains`, PCD-k) update on the mini-batch in `buf.v0`; returns its
    squared reconstruction error.

    The chain is v0 → h0 ~ P(h|v0) → v1 → … → vk, with hidden states sampled and visible
    states either sampled (`sample_visible`) or mean-field (Hinton's rbm.m). Statistics use
    hidden probabilities, which lowers variance without biasing the CD estimate. `positive`,
    if given, sees the positive phase (probabilities h0 and the sampled states) before the update.
    """
    v0, vk, h0, hk = buf.v0, buf.vk, buf.h0, buf.hk
    hidden_probs(params, v0, out=h0)
    h_state = sample_bernoulli(h0, rng, out=buf.h_sample)
    if positive is not None:
        positive(h0, h_state)
    if chains is not None:
        # The reconstruction error is the same figure as CD's, from the sampled h0.
        mean = visible_mean(params, h_state, cfg.visible, out=buf.v_spare)
        recon_err = _sq_dist(mean, v0, scratch=mean)
        _persistent_phase(params, cfg, rng, buf, chains)
        _update(params, velocity, cfg, buf)
        return recon_err
    recon_err = 0.0
    for step in range(cfg.k):
        if cfg.sample_visible:
            mean = visible_mean(params, h_state, cfg.visible, out=buf.v_spare)
            if step == 0:
                recon_err = _sq_dist(mean, v0, scratch=vk)
            sample_visible(mean, cfg.visible, rng, out=vk)
        else:
            visible_mean(params, h_state, cfg.visible, out=vk)
            if step == 0:
                recon_err = _sq_dist(vk, v0, scratch=buf.v_spare)
        hidden_probs(params, vk, out=hk)
        if step < cfg.k - 1:
            h_state = sample_bernoulli(hk, rng, out=buf.h_sample)
    _update(params, velocity, cfg, buf)
    return recon_err


def _persistent_phase(
    params: RBMParams, cfg: CDConfig, rng: np.random.Generator, buf: _BatchViews,
    chains: np.ndarray,
) -> None:
    """PCD's negative phase: k Gibbs steps v → h ~ P(h|v) → v' from the chains' states, which
    are left where the steps end (`vk`, with hk = P(h | vk)) for the next mini-batch."""
    v = chains
    for _ in range(cfg.k):
        hidden_probs(params, v, out=buf.hk)
        h_state = sample_bernoulli(buf.hk, rng, out=buf.chain_h_sample)
        if cfg.sample_visible:
            mean = visible_mean(params, h_state, cfg.visible, out=buf.chain_v_spare)
            sample_visible(mean, cfg.visible, rng, out=buf.vk)
        else:
            visible_mean(params, h_state, cfg.visible, out=buf.vk)
        v = buf.vk
    hidden_probs(params, buf.vk, out=buf.hk)
    np.copyto(chains, buf.vk)


def _update(params: RBMParams, velocity: RBMParams, cfg: CDConfig, buf: _BatchViews) -> None:
    """The momentum step on lr·(v0 - vk), lr·(h0 - hk) and lr·(v0ᵀh0 - vkᵀhk), each side
    averaged over its own rows (PCD's chains may outnumber a short batch)."""
    v0, vk, h0, hk = buf.v0, buf.vk, buf.h0, buf.hk
    step_scale = DTYPE(cfg.learning_rate / v0.shape[0])
    if vk.shape[0] == v0.shape[0]:
        dvb = v0.sum(axis=0, dtype=DTYPE) - vk.sum(axis=0, dtype=DTYPE)
        dvb *= step_scale
        negative_scale = step_scale
    else:
        negative_scale = DTYPE(cfg.learning_rate / vk.shape[0])
        dvb = v0.sum(axis=0, dtype=DTYPE) * step_scale
        dvb -= vk.sum(axis=0, dtype=DTYPE) * negative_scale
    h0 *= step_scale
    hk *= -negative_scale
    dhb = buf.pair_h.sum(axis=0, dtype=DTYPE)
    dW = np.matmul(buf.pair_v.T, buf.pair_h, out=buf.dW)
    if buf.decay is not None:
        dW -= np.multiply(params.W, DTYPE(cfg.learning_rate * cfg.weight_decay), out=buf.decay)

    mom = DTYPE(cfg.momentum)
    for vel, delta, par in (
        (velocity.W, dW, params.W),
        (velocity.vbias, dvb, params.vbias),
        (velocity.hbias, dhb, params.hbias),
    ):
        vel *= mom
        vel += delta
        par += vel


def initial_chains(X: np.ndarray, count: int) -> np.ndarray:
    """PCD's fantasy particles before their first mini-batch: copies of the first `count` rows
    of X (cycled if X has fewer). Chains that start at data start where the model is meant to
    put its mass, with no burn-in from noise, and they take no random draw, so a partition's
    chains depend on its rows alone: a retried task or a resumed run builds the same ones."""
    if X.shape[0] == 0 or count < 1:
        raise ValueError(f"cannot start {count} chains from {X.shape[0]} rows")
    return np.array(X[np.arange(count) % X.shape[0]], DTYPE)


def cd_epoch(
    params: RBMParams,
    velocity: RBMParams,
    X: np.ndarray,
    cfg: CDConfig,
    rng: np.random.Generator,
    shuffle: bool = True,
    hidden_out: np.ndarray | None = None,
    hidden_sample: bool = False,
    rows: np.ndarray | None = None,
    chains: np.ndarray | None = None,
) -> EpochStats:
    """One pass of CD-k mini-batch updates over the rows of X, updating params in place.

    Rows are visited in an order drawn from `rng` (when `shuffle`), so the same generator seed
    and the same rows give bit-identical parameters; or, with `rows`, those row indices in
    their order (an averaging round's slice of the epoch's order). The returned reconstruction
    error is measured on each mini-batch before its update, at no extra matrix product.

    With `hidden_out` (rows × n_hidden), each row's positive phase lands in its row: P(h | v)
    under the weights its mini-batch met, or the sampled states with `hidden_sample`. That is
    ParDBN's rough representation, made with the unfinished weights at no extra product.

    PCD (`cfg.cd == "pcd"`, Tieleman 2008) needs `chains` (chains × n_visible, float32, e.g.
    `initial_chains`): every mini-batch's negative phase is k Gibbs steps from them instead of
    from its rows, and they are updated in place, so the next batch, round or epoch continues
    them. It costs one more product per batch than CD: the chains' P(h | v) under the new
    weights, and the reconstruction from the sampled h0.
    """
    X = np.ascontiguousarray(X, dtype=DTYPE)
    if X.ndim != 2 or X.shape[1] != params.n_visible:
        raise ValueError(f"X has shape {X.shape}, expected (rows, {params.n_visible})")
    expected = (X.shape[0], params.n_hidden)
    if hidden_out is not None and hidden_out.shape != expected:
        raise ValueError(f"hidden_out has shape {hidden_out.shape}, expected {expected}")
    _check_chains(chains, cfg, params.n_visible)
    order = rows if rows is not None else rng.permutation(X.shape[0]) if shuffle else None
    n_rows = X.shape[0] if order is None else order.shape[0]
    stats = EpochStats(n_rows=n_rows)
    if n_rows == 0:
        return stats
    batch = min(cfg.batch_size, n_rows)
    n_chains = None if chains is None else chains.shape[0]
    buf = _Buffers(
        batch, params.n_visible, params.n_hidden, with_decay=cfg.weight_decay > 0,
        chains=n_chains,
    )
    for start in range(0, n_rows, batch):
        stop = min(start + batch, n_rows)
        views = buf.rows(stop - start, n_chains)
        if order is None:
            batch_rows: slice | np.ndarray = slice(start, stop)
            np.copyto(views.v0, X[batch_rows])
        else:
            batch_rows = order[start:stop]
            # Indices come from a permutation: mode="clip" skips take's bounds-checking copy.
            np.take(X, batch_rows, axis=0, out=views.v0, mode="clip")
        positive = (
            None if hidden_out is None else _row_writer(hidden_out, batch_rows, hidden_sample)
        )
        stats.recon_sq_error += _cd_batch(params, velocity, cfg, rng, views, positive, chains)
    return stats


def _check_chains(chains: np.ndarray | None, cfg: CDConfig, n_visible: int) -> None:
    """PCD needs its chains, in the shape and type it updates in place; CD takes none."""
    if cfg.cd == "cd":
        if chains is not None:
            raise ValueError("chains are for cd='pcd'; CD-k starts its chains at the data")
        return
    if chains is None:
        raise ValueError("cd='pcd' needs chains (see initial_chains)")
    if chains.dtype != DTYPE or chains.ndim != 2 or chains.shape[1] != n_visible:
        raise ValueError(
            f"chains are {chains.dtype}{list(chains.shape)}, expected float32[chains, {n_visible}]"
        )
    if chains.shape[0] < 1 or not chains.flags.c_contiguous:
        raise ValueError("chains must be a non-empty C-contiguous array")


def _row_writer(
    out: np.ndarray, rows: slice | np.ndarray, sample: bool
) -> Callable[[np.ndarray, np.ndarray], None]:
    """Copies a mini-batch's positive phase (probabilities, or states) into its rows of `out`."""

    def write(probs: np.ndarray, states: np.ndarray) -> None:
        out[rows] = states if sample else probs

    return write
