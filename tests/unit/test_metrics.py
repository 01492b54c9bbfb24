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
