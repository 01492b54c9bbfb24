"""Model averaging across partitions: the arithmetic of one round, in numpy.

A round: every partition starts from the same point y, trains on its next slice of rows, and
the row-weighted mean ȳ of the partitions' parameters comes back. What the strategy makes of it:

- plain: x ← ȳ (the paper's averaging);
- block momentum (model-update filtering, Chen & Huo, ICASSP 2016): G = ȳ − y is the round's
  block update, filtered as Δ ← η·Δ + ζ·G and applied as x ← x + Δ. The next round starts from
  y = x (classic) or y = x + η·Δ (Nesterov).

Averaging P models that each took n steps moves about as far as one model taking n steps, not
P·n; a block momentum η = 1 − 1/P restores the factor P once Δ has built up (1/(1 − η)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("plain", "block", "nesterov")


@dataclass(frozen=True)
class Averaging:
    """The resolved averaging settings of one trainer (see `AveragingSettings.resolve`).

    `lr_scale` multiplies the partitions' learning rate (linear scaling for the larger
    effective batch of P partitions), reached by a linear warm-up over `warmup_epochs`;
    `batch_size` is the partitions' mini-batch (None: the trainer's own)."""

    strategy: str = "plain"
    rounds: int = 1
    momentum: float = 0.0
    learning_rate: float = 1.0
    reset_local_momentum: bool = False
    lr_scale: float = 1.0
    warmup_epochs: float = 0.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "strategy": self.strategy in STRATEGIES,
            "rounds": self.rounds >= 1,
            "momentum": 0 <= self.momentum < 1,
            "learning_rate": self.learning_rate > 0,
            "lr_scale": self.lr_scale > 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "batch_size": self.batch_size is None or self.batch_size >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid averaging setting {name}={getattr(self, name)!r}")

    @property
    def filtered(self) -> bool:
        return self.strategy != "plain"

    def lr_factor(self, epoch: int, index: int) -> float:
        """The learning-rate multiplier of round `index` of `epoch`: 1 → lr_scale, linearly
        over the first warmup_epochs (counted at each round's end)."""
        if self.warmup_epochs <= 0 or self.lr_scale == 1.0:
            return self.lr_scale
        progress = min(1.0, (epoch + (index + 1) / self.rounds) / self.warmup_epochs)
        return 1.0 + (self.lr_scale - 1.0) * progress


def block_start(x: np.ndarray, delta: np.ndarray, a: Averaging) -> np.ndarray:
    """The point every partition starts the round from: x, or x + η·Δ for Nesterov."""
    if a.strategy != "nesterov":
        return x
    return (x + np.float32(a.momentum) * delta).astype(np.float32)


def block_update(
    x: np.ndarray, delta: np.ndarray, start: np.ndarray, mean: np.ndarray, a: Averaging
) -> tuple[np.ndarray, np.ndarray]:
    """The global model and block velocity after a round that started at `start` and
    averaged to `mean`: Δ' = η·Δ + ζ·(mean − start), x' = x + Δ'.

    In float64, so that η = 0, ζ = 1 gives back `mean` exactly (plain averaging)."""
    if not a.filtered:
        return mean, delta
    change = mean.astype(np.float64) - start
    step = a.momentum * delta.astype(np.float64) + a.learning_rate * change
    return (x + step).astype(np.float32), step.astype(np.float32)


def round_rows(n_rows: int, batch_size: int, index: int, rounds: int) -> slice:
    """The rows (of a partition's epoch order) that round `index` of `rounds` trains on.

    Rounds split the partition's mini-batches as evenly as whole batches allow, so the
    rounds of an epoch visit its rows in the same mini-batches as one uninterrupted epoch.
    """
    batches = math.ceil(n_rows / batch_size) if n_rows else 0
    first, last = index * batches // rounds, (index + 1) * batches // rounds
    return slice(min(first * batch_size, n_rows), min(last * batch_size, n_rows))


def replica_divergence(spread: float, n_rows: int, change: np.ndarray) -> float:
    """RMS distance of the partitions' models from their average, over the average's change.

    `spread` is Σ nᵢ·‖dᵢ‖² over the partitions (dᵢ: partition i's change in the round, nᵢ its
    rows) and `change` the row-weighted mean of the dᵢ, so Σ nᵢ‖dᵢ − d̄‖² = spread − N‖d̄‖².
    Near 0 the partitions agree; well above 1 they mostly cancel out in the average.
    """
    moved = float(np.dot(change.astype(np.float64), change.astype(np.float64)))
    if n_rows == 0 or moved == 0.0:
        return 0.0 if spread == 0.0 else math.inf
    apart = max(spread / n_rows - moved, 0.0)
    return math.sqrt(apart / moved)


LOCAL_MOMENTUM = ("averaged", "reset")
CHOICES = ("auto", *STRATEGIES)
DEFAULT_STRATEGY = "auto"
PRETRAINING, FINETUNING = "pretraining", "finetuning"
# The rule behind "auto" and the derived settings of "block"/"nesterov" (see `resolve`).
PRETRAIN_ROUNDS = 8
FINETUNE_ROUNDS = 24
FINETUNE_BATCHES_PER_ROUND = 1.25
MAX_PRETRAIN_GAIN = 16.0
FINETUNE_SCALE = 32.0
PRETRAIN_WARMUP = 0.2
FINETUNE_WARMUP = 0.4
MAX_WARMUP_EPOCHS = (1.0, 2.0)
MIN_LOCAL_STEPS = 150
MIN_LOCAL_BATCH = 8
MAX_EPOCH_BATCHES = 2000


@dataclass(frozen=True)
class AveragingSettings:
    """The user's averaging settings; None means derived from the data (`resolve`)."""

    strategy: str = DEFAULT_STRATEGY
    rounds_per_epoch: int | None = None
    block_momentum: float | None = None
    block_learning_rate: float | None = None
    local_momentum: str | None = None
    local_lr_scale: float | None = None
    lr_warmup_epochs: float | None = None
    local_batch_size: int | None = None

    def resolve(
        self, partitions: int, n_rows: int, batch_size: int, epochs: int, phase: str
    ) -> Averaging:
        """The settings of one trainer (`phase`: PRETRAINING or FINETUNING) over `partitions`
        partitions holding `n_rows` rows, mini-batches of `batch_size`, for `epochs` epochs.

        Set values are kept. "plain" is the paper's averaging: one round per epoch, nothing
        scaled. With one partition there is nothing to average: every strategy derives to
        that partition's own uninterrupted epoch (auto's at its mini-batch). "auto" derives,
        for P partitions:

        - the mini-batch: `batch_size`, but smaller (down to MIN_LOCAL_BATCH rows) where a
          partition would take fewer than MIN_LOCAL_STEPS mini-batches per epoch, since an
          average of a few large steps cannot make up for the many small ones of one
          machine, and a small data set needs more steps than its few full mini-batches
          (one partition too). An epoch keeps to at most MAX_EPOCH_BATCHES mini-batches
          over all partitions, since each costs an update pass over all parameters: on
          large data sets that is seconds per epoch (at 64 partitions of Fashion-MNIST,
          mini-batches of 19 rows took 7.3 s per fine-tuning epoch against 3.4 s for the
          cap's 30, for 0.75 points). b is then the mini-batches per partition,
          C = P·(mini-batch)/batch_size the partitions' combined batch in units of
          `batch_size`, and G = P·√(mini-batch / batch_size) the gain averaging loses: P
          partitions' changes are averaged where one machine would add them, and a
          mini-batch shrunk below `batch_size` carries the square root of its share of the
          step (square-root learning-rate scaling; linear scaling, G = C, under-scaled small
          mini-batches). Both are at least 1.
        - pretraining: PRETRAIN_ROUNDS rounds (at most b), classic block momentum, local
          momentum reset at each round. The gain averaging loses, min(G, MAX_PRETRAIN_GAIN),
          is split evenly between the partitions' learning rate (×√gain, warmed up over
          PRETRAIN_WARMUP of the epochs) and the block momentum (η = 1 − 1/√gain): a heavier
          block momentum rings for more rounds than a few epochs hold, a larger learning
          rate destabilises CD.
        - fine-tuning: plain averaging of FINETUNE_ROUNDS rounds (a round has at least
          FINETUNE_BATCHES_PER_ROUND mini-batches), averaged momentum carried into the next
          round, and the partitions' learning rate ×min(G, FINETUNE_SCALE/√C), warmed up over
          FINETUNE_WARMUP of the epochs. Block momentum did not help backprop here; a scaled
          learning rate does, up to where large combined batches make large steps unstable
          (the fall-back with C is a fit to measurements, not a derived law), and the
          scaled steps need frequent averages: the partitions drift apart between rounds in
          proportion to the scaled rate times the steps in a round.

        "block" and "nesterov" derive Chen & Huo's η = 1 − 1/P, ζ = 1, PRETRAIN_ROUNDS
        rounds and reset local momentum. See docs/architecture.md for the measurements.
        """
        p = max(partitions, 1)
        rows = max(1, math.ceil(n_rows / p))
        local = batch_size
        if self.strategy == "auto":
            local = min(batch_size, max(
                MIN_LOCAL_BATCH, math.ceil(rows / MIN_LOCAL_STEPS),
                math.ceil(n_rows / MAX_EPOCH_BATCHES),
            ))
        if self.local_batch_size is not None:
            local = self.local_batch_size
        batches = math.ceil(rows / local)
        gain_lost = max(p * math.sqrt(local / batch_size), 1.0)
        combined = max(p * local / batch_size, 1.0)
        if self.strategy == "plain" or p == 1:
            derived = Averaging("plain")
        elif self.strategy != "auto":
            derived = Averaging(
                self.strategy, min(PRETRAIN_ROUNDS, batches), 1 - 1 / p,
                reset_local_momentum=True,
            )
        elif phase == PRETRAINING:
            gain = math.sqrt(min(gain_lost, MAX_PRETRAIN_GAIN))
            derived = Averaging(
                "block", min(PRETRAIN_ROUNDS, batches), 1 - 1 / gain,
                reset_local_momentum=True, lr_scale=gain,
                warmup_epochs=min(MAX_WARMUP_EPOCHS[0], PRETRAIN_WARMUP * epochs),
            )
        else:
            rounds = min(FINETUNE_ROUNDS, max(1, math.ceil(batches / FINETUNE_BATCHES_PER_ROUND)))
            derived = Averaging(
                "plain", rounds, lr_scale=min(gain_lost, FINETUNE_SCALE / math.sqrt(combined)),
                warmup_epochs=min(MAX_WARMUP_EPOCHS[1], FINETUNE_WARMUP * epochs),
            )
        return Averaging(
            derived.strategy if self.strategy == "auto" else self.strategy,
            self.rounds_per_epoch or derived.rounds,
            derived.momentum if self.block_momentum is None else self.block_momentum,
            derived.learning_rate if self.block_learning_rate is None else self.block_learning_rate,
            derived.reset_local_momentum if self.local_momentum is None
            else self.local_momentum == "reset",
            derived.lr_scale if self.local_lr_scale is None else self.local_lr_scale,
            derived.warmup_epochs if self.lr_warmup_epochs is None else self.lr_warmup_epochs,
            local if local != batch_size else None,
        )


AUTO = AveragingSettings()
