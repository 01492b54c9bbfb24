"""Feed-forward fine-tuning of an unrolled DBN: sigmoid hidden layers, softmax output, SGD.

The pretrained RBM stack gives the hidden layers' (W, hbias); a small random softmax layer is
added on top and the whole net is trained with backpropagation by mini-batch SGD with momentum
and L2 weight decay. Everything is float32 and vectorized; the mini-batch loop reuses its
buffers, so an epoch is dominated by its matrix products. All randomness comes from the
caller's numpy Generator, which keeps Spark retries and resumed runs bit-identical.

Distributed use: the Spark engine runs `sgd_epoch` once per partition from the same starting
point, then averages the partitions' parameters *and* velocities (`to_flat` vectors), weighted
by row count. Averaging the velocity too means every partition starts the next epoch from one
shared optimizer state, as a single-machine run would; the average of the partitions' models is
the usual model-averaging approximation, not an exact equivalent of one sequential pass.

The functions work in the dtype of the parameters (float32 for training); X must match it.
float64 parameters and data are accepted so that gradients can be checked exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from sparkdbn.kernels.checks import require

DTYPE = np.float32
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PREDICT_BATCH = 4096  # rows per forward pass in class_scores: bounds memory to O(batch · width)
# exp(-z) stays finite for z >= -floor(log(max float)): the sigmoid clips its input there.
_EXP_LIMIT = {dt: dt.type(np.floor(np.log(np.finfo(dt).max))) for dt in _FLOAT_DTYPES}


@dataclass
class MLPParams:
    """Weights (n_in × n_out) and biases (n_out,) per layer, all of one float dtype."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def __post_init__(self) -> None:
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError(
                f"need one bias per weight matrix and at least one layer, got "
                f"{len(self.weights)} weights and {len(self.biases)} biases"
            )
        dtype = self.weights[0].dtype
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"parameters must be float32 or float64, got {dtype}")
        n_in = None
        for i, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if W.ndim != 2 or n_in not in (None, W.shape[0]) or b.shape != (W.shape[1],):
                raise ValueError(
                    f"layer {i}: W {W.shape} and bias {b.shape} do not fit input width {n_in}"
                )
            if W.dtype != dtype or b.dtype != dtype:
                raise ValueError(f"layer {i}: dtypes {W.dtype}/{b.dtype} differ from {dtype}")
            n_in = W.shape[1]

    @property
    def sizes(self) -> list[int]:
        """Layer widths [n_in, h1, ..., n_classes]."""
        return [int(self.weights[0].shape[0])] + [int(W.shape[1]) for W in self.weights]

    @property
    def dtype(self) -> np.dtype:
        return self.weights[0].dtype

    def copy(self) -> MLPParams:
        return MLPParams([W.copy() for W in self.weights], [b.copy() for b in self.biases])

    def zeros_like(self) -> MLPParams:
        """Same layout filled with zeros: the initial momentum buffers."""
        return MLPParams(
            [np.zeros_like(W) for W in self.weights], [np.zeros_like(b) for b in self.biases]
        )

    def to_flat(self) -> np.ndarray:
        """One vector W0, b0, W1, b1, ... (row-major): the unit Spark ships and averages."""
        return np.concatenate(
            [a.ravel() for W, b in zip(self.weights, self.biases, strict=True) for a in (W, b)]
        )

    @classmethod
    def from_flat(cls, flat: np.ndarray, sizes: list[int], copy: bool = True) -> MLPParams:
        """Inverse of `to_flat`; copies, so read-only (e.g. Arrow-backed) input is fine.

        With `copy=False` the arrays are views of `flat`, so in-place training updates `flat`
        itself: a partition's round trains its own copy of the state without unpacking and
        re-concatenating it."""
        flat = np.asarray(flat)
        expected = sum(n_in * n_out + n_out for n_in, n_out in pairwise(sizes))
        if flat.shape != (expected,):
            raise ValueError(f"flat vector {flat.shape} does not fit sizes {sizes}: ({expected},)")
        weights, biases, pos = [], [], 0
        take = np.copy if copy else np.asarray
        for n_in, n_out in pairwise(sizes):
            weights.append(take(flat[pos : pos + n_in * n_out].reshape(n_in, n_out)))
            pos += n_in * n_out
            biases.append(take(flat[pos : pos + n_out]))
            pos += n_out
        return cls(weights, biases)


@dataclass(frozen=True)
class SGDConfig:
    """Hyper-parameters of one fine-tuning epoch. The defaults are every run's: the settings
    schema (sparkdbn/config.py) reads them from here, since a kernel cannot import it."""

    learning_rate: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 1e-5  # L2 on weights only: biases are not decayed
    batch_size: int = 100
    dropout: float = 0.0  # probability of dropping each hidden unit while training

    def __post_init__(self) -> None:
        require("SGD", self, {
            "dropout": 0 <= self.dropout < 1,
            "learning_rate": self.learning_rate > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": isinstance(self.batch_size, int | np.integer) and self.batch_size >= 1,
        })


@dataclass
class EpochStats:
    """Sums over the rows of one epoch, so partitions' stats add up exactly."""

    n_rows: int = 0
    loss_sum: float = 0.0
    correct: int = 0

    def add(self, other: EpochStats) -> None:
        self.n_rows += other.n_rows
        self.loss_sum += other.loss_sum
        self.correct += other.correct

    @property
    def mean_loss(self) -> float:
        """Mean cross-entropy per row, each measured before its mini-batch's update."""
        return self.loss_sum / self.n_rows if self.n_rows else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.n_rows if self.n_rows else float("nan")


def init_mlp(sizes: list[int], rng: np.random.Generator) -> MLPParams:
    """Random net: Glorot-uniform sigmoid layers, small Gaussian softmax layer, zero biases.

    The sigmoid bound sqrt(12 / (fan_in + fan_out)) is scikit-learn's choice for logistic units.
    """
    if len(sizes) < 2 or min(sizes) < 1 or sizes[-1] < 2:
        raise ValueError(
            f"sizes must be [n_in, ..., n_classes] with widths >= 1 and >= 2 classes, got {sizes}"
        )
    weights = []
    for n_in, n_out in pairwise(sizes[:-1]):
        bound = np.sqrt(12.0 / (n_in + n_out))
        weights.append(rng.uniform(-bound, bound, (n_in, n_out)).astype(DTYPE))
    weights.append(_output_weights(sizes[-2], sizes[-1], rng))
    return MLPParams(weights, [np.zeros(n, DTYPE) for n in sizes[1:]])


def from_pretrained(
    stack: list[tuple[np.ndarray, np.ndarray]], n_classes: int, rng: np.random.Generator
) -> MLPParams:
    """Unroll RBMs [(W, hbias), ...] into a classifier with a new softmax layer on top.

    The RBMs' arrays are copied as float32, so fine-tuning never alters the pretrained model.
    Visible biases are not needed: the net only runs upwards.
    """
    if not stack:
        raise ValueError("the pretrained stack is empty")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    weights = [np.array(W, dtype=DTYPE) for W, _ in stack]
    biases = [np.array(hbias, dtype=DTYPE) for _, hbias in stack]
    if weights[-1].ndim != 2:
        raise ValueError(f"RBM {len(stack) - 1}: W must be 2-D, got shape {weights[-1].shape}")
    n_top = weights[-1].shape[1]
    weights.append(_output_weights(n_top, n_classes, rng))
    biases.append(np.zeros(n_classes, DTYPE))
    return MLPParams(weights, biases)


def forward(params: MLPParams, X: np.ndarray) -> list[np.ndarray]:
    """Activations of every layer, input first; the last holds softmax probabilities."""
    _check_X(params, X)
    acts = _forward(params, X)
    np.exp(acts[-1], out=acts[-1])
    return acts


def class_scores(params: MLPParams, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The softmax layer's logits and the class probabilities, float64 (n, n_classes) each.

    The one forward pass that every prediction uses (the ml models, the evaluate job and the
    main job's test evaluation): in the parameters' dtype, as trained, PREDICT_BATCH rows at a
    time; the softmax of the logits in float64, so a row's probabilities sum to 1 within
    float64 rounding and are exactly what its logits give.
    """
    _check_X(params, X)
    logits = np.empty((X.shape[0], params.sizes[-1]), np.float64)
    for start in range(0, X.shape[0], PREDICT_BATCH):
        rows = slice(start, start + PREDICT_BATCH)
        _forward(params, X[rows], keep_logits=logits[rows])
    return logits, np.exp(_log_softmax(logits.copy()))


def predict_proba(params: MLPParams, X: np.ndarray) -> np.ndarray:
    """Class probabilities (n, n_classes) in the parameters' dtype (`class_scores`)."""
    return class_scores(params, X)[1].astype(params.dtype)


def loss_and_grads(params: MLPParams, X: np.ndarray, y: np.ndarray) -> tuple[float, MLPParams]:
    """Mean cross-entropy over the rows and its gradient (weight decay is the optimizer's)."""
    _check_X(params, X)
    _check_y(params, y, X.shape[0])
    if X.shape[0] == 0:
        raise ValueError("the mean loss of zero rows is undefined")
    acts = _forward(params, X)
    loss = -float(_true_class(acts[-1], y).sum(dtype=np.float64)) / X.shape[0]
    grads = params.zeros_like()
    _backward(params, acts, y, grads)
    return loss, grads


def sgd_epoch(
    params: MLPParams,
    velocity: MLPParams,
    X: np.ndarray,
    y: np.ndarray,
    cfg: SGDConfig,
    rng: np.random.Generator,
    rows: np.ndarray | None = None,
) -> EpochStats:
    """One pass of mini-batch SGD with momentum over the rows of X, updating in place.

    Rows are visited in the order rng.permutation(n), or with `rows` those row indices in their
    order (an averaging round's slice of the epoch's order); the last short batch is included. Per
    batch: v = momentum·v - lr·(grad + wd·W); W += v (biases alike, without decay). Loss and
    accuracy come from each batch's forward pass before its update, at no extra cost.
    """
    _check_X(params, X)
    _check_y(params, y, X.shape[0])
    if velocity.sizes != params.sizes or velocity.dtype != params.dtype:
        raise ValueError(
            f"velocity {velocity.sizes} ({velocity.dtype}) does not match parameters "
            f"{params.sizes} ({params.dtype})"
        )
    order = rng.permutation(X.shape[0]) if rows is None else rows
    n_rows = order.shape[0]
    stats = EpochStats(n_rows=n_rows)
    if n_rows == 0:
        return stats
    batch = min(cfg.batch_size, n_rows)
    buf = _Buffers(params, batch, with_decay=cfg.weight_decay > 0)
    keep = 1.0 - cfg.dropout
    for start in range(0, n_rows, batch):
        idx = order[start : start + batch]
        short = buf.view(idx.shape[0])
        # Indices come from a permutation: mode="clip" skips take's bounds-checking copy.
        Xb = np.take(X, idx, axis=0, out=short.X, mode="clip")
        yb = y[idx]
        drop = (keep, rng, short.masks) if cfg.dropout else None
        acts = _forward(params, Xb, short.acts, drop)
        log_proba = acts[-1]
        stats.loss_sum -= float(_true_class(log_proba, yb).sum(dtype=np.float64))
        stats.correct += int(np.count_nonzero(log_proba.argmax(axis=1) == yb))
        _backward(params, acts, yb, buf.grads, short.deltas, keep)
        _sgd_step(params, velocity, buf.grads, cfg, buf.decay)
    return stats


class _Buffers:
    """Scratch arrays for one mini-batch size, reused across batches to avoid allocation."""

    def __init__(self, params: MLPParams, batch: int, with_decay: bool) -> None:
        sizes, dtype = params.sizes, params.dtype
        self.X = np.empty((batch, sizes[0]), dtype)
        self.acts = [np.empty((batch, n), dtype) for n in sizes[1:]]
        # deltas[i] holds dLoss/d(pre-activation of hidden layer i + 1) during backprop.
        self.deltas = [np.empty((batch, n), dtype) for n in sizes[1:-1]]
        self.masks = [np.empty((batch, n), dtype) for n in sizes[1:-1]]
        self.grads = params.zeros_like()
        self.decay = [np.empty_like(W) for W in params.weights] if with_decay else []

    def view(self, n: int) -> _Buffers:
        """The same buffers cut to the first n rows (the last, short batch)."""
        if n == self.X.shape[0]:
            return self
        short = object.__new__(_Buffers)
        short.X = self.X[:n]
        short.acts = [a[:n] for a in self.acts]
        short.deltas = [d[:n] for d in self.deltas]
        short.masks = [m[:n] for m in self.masks]
        short.grads, short.decay = self.grads, self.decay
        return short


def _output_weights(n_in: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """0.01·N(0, 1): small enough that the first softmax outputs are near uniform."""
    W = rng.standard_normal((n_in, n_classes), dtype=DTYPE)
    W *= DTYPE(0.01)
    return W


def _check_X(params: MLPParams, X: np.ndarray) -> None:
    n_in = params.sizes[0]
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != n_in:
        raise ValueError(f"X must be a 2-D array (rows, {n_in}), got {np.shape(X)}")
    if X.dtype != params.dtype:
        raise ValueError(f"X has dtype {X.dtype}, parameters are {params.dtype}")


def _check_y(params: MLPParams, y: np.ndarray, n_rows: int) -> None:
    if not isinstance(y, np.ndarray) or y.shape != (n_rows,) or y.dtype.kind not in "iu":
        raise ValueError(
            f"y must be a 1-D integer array of {n_rows} labels, got "
            f"{getattr(y, 'dtype', type(y).__name__)} {np.shape(y)}"
        )
    n_classes = params.sizes[-1]
    if n_rows and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got [{y.min()}, {y.max()}]")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function in place, without temporaries; clipping keeps exp(-z) finite."""
    np.maximum(z, -_EXP_LIMIT[z.dtype], out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1
    return np.reciprocal(z, out=z)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Log-probabilities in place: shifting by the row max keeps exp finite and the sum >= 1."""
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def _forward(
    params: MLPParams,
    X: np.ndarray,
    out: list[np.ndarray] | None = None,
    drop: tuple[float, np.random.Generator, list[np.ndarray]] | None = None,
    keep_logits: np.ndarray | None = None,
) -> list[np.ndarray]:
    """[X, sigmoid activations..., log-probabilities]; log space gives the loss without log(0).

    `drop` = (keep, rng, mask buffers) applies dropout to the hidden layers (training only);
    `keep_logits` receives the softmax layer's input.
    """
    acts = [X]
    last = len(params.weights) - 1
    for i, (W, b) in enumerate(zip(params.weights, params.biases, strict=True)):
        z = np.matmul(acts[-1], W, out=None if out is None else out[i])
        z += b
        if i == last:
            if keep_logits is not None:
                np.copyto(keep_logits, z)
            acts.append(_log_softmax(z))
            continue
        acts.append(_sigmoid(z))
        if drop is not None:
            _drop(acts[-1], drop[0], drop[1], drop[2][i])
    return acts


def _drop(a: np.ndarray, keep: float, rng: np.random.Generator, mask: np.ndarray) -> None:
    """Inverted dropout in place: a ⊙ Bernoulli(keep) / keep, so the next layer's expected
    input is unchanged and prediction needs no rescaling."""
    rng.random(out=mask, dtype=mask.dtype)
    np.less(mask, keep, out=mask)
    mask *= mask.dtype.type(1.0 / keep)
    a *= mask


def _true_class(log_proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return log_proba[np.arange(y.shape[0]), y]


def _backward(
    params: MLPParams,
    acts: list[np.ndarray],
    y: np.ndarray,
    grads: MLPParams,
    deltas: list[np.ndarray] | None = None,
    keep: float = 1.0,
) -> None:
    """Gradients of the mean cross-entropy into `grads`; consumes (overwrites) acts[1:].

    With dropout, a hidden activation a = mask·σ holds σ = keep·a where the unit was kept, so
    the sigmoid's derivative through the mask is a·(1 - keep·a), and 0 where it was dropped.
    """
    n = y.shape[0]
    # Softmax + cross-entropy: dLoss/dlogits = (P - onehot(y)) / n.
    delta = np.exp(acts[-1], out=acts[-1])
    delta[np.arange(n), y] -= 1
    delta *= delta.dtype.type(1.0 / n)
    for i in range(len(params.weights) - 1, -1, -1):
        a = acts[i]
        np.matmul(a.T, delta, out=grads.weights[i])
        np.sum(delta, axis=0, out=grads.biases[i])
        if i == 0:
            break
        # Through sigmoid layer i: delta_prev = (delta Wᵀ) ⊙ a ⊙ (1 - a), a is overwritten.
        back = np.matmul(delta, params.weights[i].T, out=None if deltas is None else deltas[i - 1])
        back *= a
        if keep != 1.0:
            a *= a.dtype.type(keep)
        np.subtract(1, a, out=a)
        back *= a
        delta = back


def _sgd_step(
    params: MLPParams,
    velocity: MLPParams,
    grads: MLPParams,
    cfg: SGDConfig,
    decay: list[np.ndarray],
) -> None:
    """v = momentum·v - lr·(g + wd·W); W += v; biases alike without decay. Consumes grads.

    `decay` holds one scratch array per weight matrix when weight decay is on, else is empty.
    """
    dtype = params.dtype.type
    lr, mom, wd = dtype(cfg.learning_rate), dtype(cfg.momentum), dtype(cfg.weight_decay)
    layers = zip(params.weights, velocity.weights, grads.weights, strict=True)
    for i, (W, vW, gW) in enumerate(layers):
        if decay:
            gW += np.multiply(W, wd, out=decay[i])
        _momentum_update(W, vW, gW, lr, mom)
    for b, vb, gb in zip(params.biases, velocity.biases, grads.biases, strict=True):
        _momentum_update(b, vb, gb, lr, mom)


def _momentum_update(
    p: np.ndarray, v: np.ndarray, g: np.ndarray, lr: np.floating, mom: np.floating
) -> None:
    v *= mom
    g *= lr
    v -= g
    p += v
