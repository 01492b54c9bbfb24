"""The divergence guard: stop training when an averaging round's result has blown up.

A round diverged when its state (parameters and velocity) holds NaN or ±inf, when its error
(reconstruction error or fine-tuning loss) is not finite, or when that error exceeds
DIVERGENCE_FACTOR times the trainer's first epoch's. Healthy training lowers the error, and a
blown-up run's error grows by orders of magnitude within a few epochs, so the factor is far from
both. The caller raises DivergenceError before it keeps (or checkpoints) the bad state.
"""

from __future__ import annotations

import math

import numpy as np

DIVERGENCE_FACTOR = 1e3


def divergence(state: np.ndarray, error: float, first: float | None, what: str) -> str | None:
    """Why a round's result counts as diverged (one phrase naming `what`), or None."""
    if not math.isfinite(error):
        return f"{what} is {error}"
    bad = int(np.count_nonzero(~np.isfinite(state)))
    if bad:
        return f"{bad} of the {state.size} parameter and velocity values are not finite"
    if first is not None and first > 0 and error > DIVERGENCE_FACTOR * first:
        return (
            f"{what} {error:.4g} exceeds {DIVERGENCE_FACTOR:g} × the first epoch's ({first:.4g})"
        )
    return None
