"""Training records: per-epoch metrics, per-layer timings and metrics.json."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from sparkdbn.logs import Reporter


@dataclass
class EpochRecord:
    """One epoch of one layer; `replica_divergence` has one figure per averaging round
    (`engine.rounds`); `finished_at` (seconds since the run started) places it on the Gantt
    chart, `seconds` before it. `monitors` holds the overfitting monitors' figures after the
    epoch when the run has validation data (`engine.monitors`), else None."""

    epoch: int
    recon_error: float
    seconds: float
    rows_per_second: float
    input_version: int | None = None
    rounds: int = 1
    replica_divergence: list[float] = field(default_factory=list)
    finished_at: float | None = None
    monitors: dict[str, Any] | None = None


@dataclass
class SpanRecord:
    """A hand-off step of the layer-parallel schedules: publishing or loading one version.

    A version published `in_epoch` was written by that epoch's own stage, so its span is the
    epoch's too; a load is only the lazy set-up, the rows are read by the next epoch.
    """

    version: int
    started_at: float
    seconds: float
    after_epoch: int | None = None
    in_epoch: bool = False


@dataclass
class LayerLog:
    """One layer's timeline; times are seconds since the run started (for Gantt charts)."""

    layer: int
    n_visible: int
    n_hidden: int
    started_at: float | None = None
    finished_at: float | None = None
    epochs: list[EpochRecord] = field(default_factory=list)
    publishes: list[SpanRecord] = field(default_factory=list)
    loads: list[SpanRecord] = field(default_factory=list)


class RunLog:
    """Everything metrics.json holds, filled in as the run goes.

    Progress goes to `reporter` (sparkdbn.logs: text or JSON lines); without one, as text
    lines to `out` (default: stdout).
    """

    def __init__(
        self, schedule: str, out: TextIO | None = None, reporter: Reporter | None = None
    ) -> None:
        self.schedule = schedule
        self.started = time.time()
        self.started_iso = datetime.now(UTC).isoformat(timespec="seconds")
        self.layers: list[LayerLog] = []
        self.extra: dict[str, Any] = {}
        self.out = out if out is not None else sys.stdout
        self.reporter = reporter if reporter is not None else Reporter(out=self.out)

    def now(self) -> float:
        return round(time.time() - self.started, 3)

    def layer(self, layer: int, n_visible: int, n_hidden: int) -> LayerLog:
        log = LayerLog(layer, n_visible, n_hidden)
        self.layers.append(log)
        return log

    def layers_by_index(self) -> dict[int, LayerLog]:
        return {log.layer: log for log in self.layers}

    def record_epoch(self, log: LayerLog, record: EpochRecord, total_epochs: int) -> None:
        if record.finished_at is None:
            record.finished_at = self.now()
        log.epochs.append(record)
        monitors = {} if record.monitors is None else {"monitors": record.monitors}
        self.reporter.event(  # as text: logs.epoch_line
            "epoch", layer=log.layer, epoch=record.epoch + 1, epochs=total_epochs,
            recon_error=record.recon_error, seconds=record.seconds,
            rows_per_second=record.rows_per_second, input_version=record.input_version,
            rounds=record.rounds, replica_divergence=record.replica_divergence,
            eta_seconds=round(eta_seconds(record, total_epochs), 3), **monitors,
        )

    def to_dict(self) -> dict[str, Any]:
        ends = [lg.finished_at for lg in self.layers if lg.finished_at is not None]
        return {
            "schedule": self.schedule,
            "run_started_at": self.started_iso,
            "run_started_unix": round(self.started, 3),
            "layers": [asdict(lg) for lg in sorted(self.layers, key=lambda lg: lg.layer)],
            "makespan_seconds": max(ends) if ends else None,
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def say(self, line: str) -> None:
        self.reporter.say(line)

    def timeline(self) -> dict[str, Any]:
        """The layers' spans: the JSON form of `gantt`."""
        spans = sorted(self.layers, key=lambda lg: lg.layer)
        ends = [lg.finished_at for lg in spans if lg.finished_at is not None]
        return {
            "schedule": self.schedule,
            "makespan_seconds": max(ends) if ends else None,
            "layers": [
                {"layer": lg.layer, "started_at": lg.started_at, "finished_at": lg.finished_at}
                for lg in spans
            ],
        }


def eta_seconds(record: EpochRecord, total_epochs: int) -> float:
    """Seconds to go for the layer, at this epoch's speed."""
    return max(total_epochs - record.epoch - 1, 0) * record.seconds


def gantt(run: RunLog, width: int = 50) -> str:
    """A text Gantt chart of the layers' training spans, for the end-of-run summary."""
    spans = sorted((lg.layer, lg.started_at, lg.finished_at, bool(lg.epochs)) for lg in run.layers)
    end = max((f for _, _, f, _ in spans if f is not None), default=0.0) or 1.0
    lines = [f"schedule {run.schedule}, makespan {end:.1f} s"]
    for layer, start, finish, trained in spans:
        if start is None or finish is None:
            # A resumed run restores finished layers from the checkpoint without training them.
            why = "restored from the checkpoint" if trained and start is None else "did not run"
            lines.append(f"layer {layer} | ({why})")
            continue
        a = int(round(start / end * width))
        b = max(int(round(finish / end * width)), a + 1)
        bar = " " * a + "█" * (b - a) + " " * (width - b)
        lines.append(f"layer {layer} |{bar}| {start:7.1f} – {finish:7.1f} s")
    return "\n".join(lines)
