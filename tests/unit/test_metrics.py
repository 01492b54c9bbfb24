"""The end-of-run Gantt chart, from hand-made run logs."""

from __future__ import annotations

import io

from sparkdbn.metrics import EpochRecord, RunLog, gantt


def record(epoch: int) -> EpochRecord:
    return EpochRecord(epoch=epoch, recon_error=1.0, seconds=1.0, rows_per_second=10.0)


def test_gantt_bars_restored_and_missing_layers() -> None:
    run = RunLog("pipelined", io.StringIO())
    trained = run.layer(0, 4, 3)
    trained.started_at, trained.finished_at = 0.0, 10.0
    trained.epochs = [record(0)]
    restored = run.layer(1, 3, 2)  # finished before a resume: its epochs come from the checkpoint
    restored.epochs = [record(0), record(1)]
    run.layer(2, 2, 2)  # stopped before its first epoch
    lines = gantt(run, width=10).splitlines()
    assert lines == [
        "schedule pipelined, makespan 10.0 s",
        "layer 0 |██████████|     0.0 –    10.0 s",
        "layer 1 | (restored from the checkpoint)",
        "layer 2 | (did not run)",
    ]


def test_gantt_picture_is_a_png_of_every_layer(tmp_path) -> None:
    """plots.gantt_figure draws epochs, publishes and loads; saved as train_dbn saves it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    from sparkdbn.metrics import SpanRecord
    from sparkdbn.plots import gantt_figure

    run = RunLog("pipelined", io.StringIO())
    lower, upper = run.layer(0, 4, 3), run.layer(1, 3, 2)
    lower.started_at, lower.finished_at = 0.0, 4.0
    upper.started_at, upper.finished_at = 1.0, 6.0
    lower.epochs = [EpochRecord(e, 1.0, 2.0, 10.0, finished_at=2.0 * (e + 1)) for e in range(2)]
    upper.epochs = [EpochRecord(0, 1.0, 2.0, 10.0, input_version=1, finished_at=6.0)]
    lower.publishes = [SpanRecord(1, 1.5, 0.5, after_epoch=0)]
    upper.loads = [SpanRecord(1, 2.1, 0.1)]
    run.layer(2, 2, 2)  # never ran: an empty, labelled row
    fig = gantt_figure(run)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    path = tmp_path / "gantt.png"
    fig.savefig(path, dpi=50)
    plt.close(fig)
    assert labels == ["epochs", "publishes", "loads"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 50 and width > 300
