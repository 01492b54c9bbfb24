"""Learning-rate schedules over epochs, shared by CD pretraining and backprop fine-tuning."""

from __future__ import annotations

import math

LR_SCHEDULES = ("exponential", "cosine", "linear")


def learning_rate_at(
    base: float, epoch: int, epochs: int, schedule: str = "exponential", decay: float = 1.0
) -> float:
    """The rate of `epoch` (0-based) out of `epochs`.

    exponential: base·decay^epoch (decay 1 keeps it constant). cosine: base·½(1 + cos(π·e/E)),
    annealed towards 0 by the last epoch, so the final model sits in a minimum instead of
    bouncing around one at a still-large rate (Loshchilov & Hutter, SGDR, without restarts).
    linear: base·(1 − e/E), Tieleman's schedule for persistent CD, whose chains follow the
    weights only while these move slowly enough.
    """
    if schedule == "exponential":
        return base * decay**epoch
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "linear":
        return base * (1.0 - epoch / epochs)
    raise ValueError(f"learning-rate schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
