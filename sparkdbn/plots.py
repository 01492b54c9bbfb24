"""Pictures of a run: learning curves and first-layer filters (PNG, via matplotlib if present)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sparkdbn.engine.training import TrainingResult


def filter_grid(W: np.ndarray, max_filters: int = 100) -> np.ndarray | None:
    """First-layer weights as a grid of square tiles (one per hidden unit), each scaled to
    [0, 1]; None when the visible layer is not a square image."""
    side = math.isqrt(W.shape[0])
    if side * side != W.shape[0]:
        return None
    n = min(W.shape[1], max_filters)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (side + 1) + 1, cols * (side + 1) + 1), np.float32)
    for j in range(n):
        tile = W[:, j].reshape(side, side)
        span = float(tile.max() - tile.min()) or 1.0
        r, c = divmod(j, cols)
        top, left = 1 + r * (side + 1), 1 + c * (side + 1)
        grid[top : top + side, left : left + side] = (tile - tile.min()) / span
    return grid


def write_pictures(result: TrainingResult, directory: Path) -> list[Path]:
    """learning_curves.png and filters.png in `directory`; nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no pictures written", file=sys.stderr)
        return []
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for log in result.run.layers:
        axes[0].plot(
            [e.epoch + 1 for e in log.epochs], [e.recon_error for e in log.epochs],
            marker="o", label=f"layer {log.layer}",
        )
    axes[0].set(title="pretraining", xlabel="epoch", ylabel="reconstruction error")
    axes[0].legend()
    for name, history in (("pretrained", result.finetune_history),
                          ("random init", result.baseline_history)):
        if history:
            axes[1].plot([e.epoch + 1 for e in history], [e.train_accuracy for e in history],
                         marker="o", label=f"{name}: train accuracy")
    axes[1].set(title="fine-tuning", xlabel="epoch", ylabel="accuracy")
    if result.finetune_history:
        axes[1].legend()
    fig.tight_layout()
    path = directory / "learning_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    grid = filter_grid(result.model.layers[0].W)
    if grid is not None:
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.imshow(grid, cmap="gray", interpolation="nearest")
        ax.set_axis_off()
        ax.set_title("first-layer filters")
        path = directory / "filters.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
