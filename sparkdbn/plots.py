"""Pictures of a run: learning curves (with the overfitting monitors when the run has them), the
schedule's Gantt chart and first-layer filters (PNG, via matplotlib if present)."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sparkdbn.engine.training import TrainingResult
    from sparkdbn.metrics import LayerLog, RunLog


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
    """learning_curves.png, gantt.png and filters.png in `directory`; nothing without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no pictures written", file=sys.stderr)
        return []
    written = []
    monitored = [lg for lg in result.run.layers if any(e.monitors for e in lg.epochs)]
    fig, axes = plt.subplots(
        2 if monitored else 1, 2, figsize=(11, 8 if monitored else 4), squeeze=False
    )
    if monitored:
        monitor_axes(axes[1], monitored)
    axes = axes[0]
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
    path = directory / "gantt.png"
    fig = gantt_figure(result.run)
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


def monitor_axes(axes: Sequence[Axes], layers: list[LayerLog]) -> None:
    """The overfitting monitors per layer: the free-energy gap (validation - training; its
    growth signals overfitting), and the pseudo-log-likelihoods (training dashed)."""
    for log in layers:
        epochs = [e for e in log.epochs if e.monitors]
        x = [e.epoch + 1 for e in epochs]
        colour = f"C{log.layer % 10}"
        axes[0].plot(x, [e.monitors["free_energy_gap"] for e in epochs], marker="o",
                     color=colour, label=f"layer {log.layer}")
        if epochs[0].monitors["train_pseudo_log_likelihood"] is not None:
            for side, style in (("validation", "-"), ("train", "--")):
                axes[1].plot(x, [e.monitors[f"{side}_pseudo_log_likelihood"] for e in epochs],
                             style, marker="o", color=colour, label=f"layer {log.layer} {side}")
    axes[0].axhline(0, color="0.7", linewidth=0.8)
    axes[0].set(title="free-energy gap", xlabel="epoch", ylabel="validation - training F")
    axes[0].legend()
    axes[1].set(title="pseudo-log-likelihood", xlabel="epoch", ylabel="nats per row")
    if axes[1].lines:
        axes[1].legend(fontsize=8)


def gantt_figure(run: RunLog) -> Figure:
    """The schedule over time, one row per layer: its epochs as boxes, the rough versions it
    publishes above them and the versions it loads below (`metrics.gantt` is the text form).
    A layer restored from a checkpoint, or that never ran, has a labelled empty row."""
    import matplotlib.pyplot as plt

    layers = sorted(run.layers, key=lambda lg: lg.layer)
    fig, ax = plt.subplots(figsize=(11, 1.5 + 0.9 * max(len(layers), 1)))
    end = max((lg.finished_at for lg in layers if lg.finished_at is not None), default=None)
    for row, log in enumerate(layers):
        if log.started_at is None or log.finished_at is None:
            why = "restored from the checkpoint" if log.epochs else "did not run"
            ax.text(0, row, f" ({why})", va="center", fontsize=8, color="gray")
            continue
        ax.broken_barh([(log.started_at, log.finished_at - log.started_at)], (row - 0.4, 0.8),
                       facecolors="0.92", edgecolors="0.6")
        epochs = [(e.finished_at - e.seconds, e.seconds) for e in log.epochs
                  if e.finished_at is not None]
        ax.broken_barh(epochs, (row - 0.25, 0.5), facecolors=[f"C{row % 10}"],
                       edgecolors="white",
                       label="epochs" if epochs and "epochs" not in _labels(ax) else None)
        for spans, top, colour, name in ((log.publishes, -0.4, "black", "publishes"),
                                         (log.loads, 0.25, "tab:red", "loads")):
            ax.broken_barh([(s.started_at, max(s.seconds, 0.01)) for s in spans],
                           (row + top, 0.15), facecolors=colour,
                           label=name if spans and name not in _labels(ax) else None)
    ax.set_yticks(range(len(layers)), [f"layer {lg.layer}" for lg in layers])
    ax.set_ylim(len(layers) - 0.5, -0.5)
    ax.set_xlabel("seconds since the run started")
    makespan = f", makespan {end:.1f} s" if end is not None else ""
    ax.set_title(f"schedule {run.schedule}{makespan}")
    if _labels(ax):
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]
