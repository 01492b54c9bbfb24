"""What a job reports while it runs: human lines (text) or one JSON object per line (json).

Jobs and the engine report structured events, `reporter.event("epoch", layer=0, epoch=3, ...)`;
the reporter renders each one as its human-readable line (text, the default) or as a JSON object
with `ts` (ISO 8601, UTC), `level`, `job`, `event` and the event's fields (json, chosen with
`--log-format json`). Events of the JSON logs:

    epoch           layer, epoch (from 1), epochs, recon_error, seconds, rows_per_second,
                    input_version, eta_seconds, and with validation data monitors
                    (train_/validation_free_energy, free_energy_gap,
                    train_/validation_pseudo_log_likelihood, rows, train_rows)
    finetune_epoch  stage (fine-tune | baseline), epoch (from 1), epochs, loss, train_accuracy,
                    seconds, learning_rate
    resumed         layer or stage, after_epoch, epochs (continued from a checkpoint)
    evaluation      accuracy, n_rows, per_class_accuracy, confusion_matrix (+ stage or model)
    log_likelihood  model, data, n_rows, log_likelihood(_lower, _upper), log_z(_lower, _upper),
                    layers_log_likelihood, ais (evaluate --log-likelihood); or n_rows, layers,
                    dbn_lower_bound, ais (train_dbn --log-likelihood)
    ready           layer (pretrain_layer: up and waiting for the layer below)
    timeline        schedule, makespan_seconds, layers [{layer, started_at, finished_at}]
    benchmark       results
    message         message (free text)
    start           rows, output (predict: the data is checked, the writing begins)
    done            output, and skipped: true when --if-exists resume found it complete
    error           message, exit_code (+ exception, traceback for unexpected failures)

Non-finite floats become null, so every line is strict JSON. Lines are written whole under a
lock: layers training in parallel driver threads never interleave within a line.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
LOG_FORMAT_HELP = (
    "text: readable progress lines (default); json: one JSON object per line on stdout "
    "(ts, level, job, event and its fields), and errors as one JSON line on stderr"
)


class Reporter:
    """Renders a job's events as text lines or JSON lines.

    `out` is the stream (default: sys.stdout at the time of writing); `write`, a callable
    taking one line, replaces it (to wrap a plain `say`/`report` function). `observer`, if
    given, also gets every event with its fields: the one place where a run's progress can be
    followed by something else (MLflow tracking, `sparkdbn.tracking`).
    """

    def __init__(
        self,
        job: str = "sparkdbn",
        log_format: str = "text",
        out: TextIO | None = None,
        write: Callable[[str], Any] | None = None,
        observer: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
        self.job = job
        self.log_format = log_format
        self.out = out
        self._write = write
        self._observer = observer
        self._lock = threading.Lock()

    def observed(self, observer: Callable[[str, dict[str, Any]], None]) -> Reporter:
        """This reporter, whose events `observer` also gets."""
        return Reporter(self.job, self.log_format, self.out, self._write, observer)

    @property
    def is_json(self) -> bool:
        return self.log_format == "json"

    def event(self, event: str, /, *, level: str = "info", text: str | None = None,
              **fields: Any) -> None:
        """Report one event. In text mode `text` (if given) replaces the standard rendering;
        text="" reports the event in JSON only (its content was already shown as text)."""
        if self._observer is not None:
            self._observer(event, fields)
        if self.is_json:
            record = {"ts": utc_now(), "level": level, "job": self.job, "event": event}
            record.update(fields)
            self._emit(json.dumps(_jsonable(record), allow_nan=False))
            return
        line = render_text(event, fields) if text is None else text
        if line:
            self._emit(line)

    def say(self, line: str) -> None:
        """Free text: a line as it is (text) or a `message` event (json)."""
        self.event("message", message=line)

    __call__ = say  # a reporter works wherever a `say`/`report` callable is expected

    def text(self, block: str) -> None:
        """A human rendering of what earlier events already gave (e.g. a table): text only."""
        if not self.is_json:
            self._emit(block)

    def _emit(self, line: str) -> None:
        with self._lock:
            if self._write is not None:
                self._write(line)
                return
            out = self.out if self.out is not None else sys.stdout
            out.write(line + "\n")
            out.flush()


def as_reporter(report: Reporter | Callable[[str], Any]) -> Reporter:
    """A reporter from a reporter or from a plain callable taking one text line."""
    if isinstance(report, Reporter):
        return report
    return Reporter(write=report)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats → null, numpy scalars → Python, paths → str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    return str(value)


# --- text rendering: the progress lines ------------------------------------------------------

EVALUATED = {"fine-tune": "pretrained + fine-tuned", "baseline": "random init baseline"}


def epoch_line(f: dict[str, Any]) -> str:
    """One human line per epoch (an `epoch` event): what, how good, how fast, how long to go."""
    version = "" if f.get("input_version") is None else f" · input v{f['input_version']}"
    recon = f["recon_error"]
    recon = "nan" if recon is None or math.isnan(recon) else f"{recon:.4f}"
    return (
        f"layer {f['layer']} · epoch {f['epoch']}/{f['epochs']} · recon {recon} · "
        f"{f['seconds']:.2f} s · {f['rows_per_second']:,.0f} rows/s · "
        f"ETA {f['eta_seconds']:.0f} s{version}"
        f"{averaging_text(f.get('rounds', 1), f.get('replica_divergence', []))}"
        f"{monitors_text(f.get('monitors'))}"
    )


def monitors_text(m: dict[str, Any] | None) -> str:
    """An epoch line's monitors: free energies (training, validation, gap) and
    pseudo-log-likelihoods (training, validation)."""
    if m is None:
        return ""
    text = (
        f" · F train {m['train_free_energy']:.2f} val {m['validation_free_energy']:.2f} "
        f"gap {m['free_energy_gap']:+.2f}"
    )
    if m.get("train_pseudo_log_likelihood") is not None:
        text += (
            f" · PLL train {m['train_pseudo_log_likelihood']:.2f} "
            f"val {m['validation_pseudo_log_likelihood']:.2f}"
        )
    return text


def averaging_text(rounds: int, divergence: list[float]) -> str:
    """An epoch line's averaging part: rounds, and the last round's replica divergence."""
    if not divergence:
        return ""
    many = f"{rounds} rounds · " if rounds > 1 else ""
    return f" · {many}divergence {divergence[-1]:.2f}"


def _finetune_epoch(f: dict[str, Any]) -> str:
    return (
        f"{f['stage']} · epoch {f['epoch']}/{f['epochs']} · loss {f['loss']:.4f} · "
        f"train acc {f['train_accuracy']:.4f} · {f['seconds']:.2f} s"
        f"{averaging_text(f.get('rounds', 1), f.get('replica_divergence', []))}"
    )


def _resumed(f: dict[str, Any]) -> str:
    who = f"layer {f['layer']}" if "layer" in f else f["stage"]
    return f"{who} · resumed after epoch {f['after_epoch']}/{f['epochs']} (checkpoint)"


def _evaluation(f: dict[str, Any]) -> str:
    label = EVALUATED.get(f.get("stage", ""), f.get("stage", "model"))
    return f"test accuracy ({label}): {f['accuracy']:.4f}"


RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "epoch": epoch_line,
    "finetune_epoch": _finetune_epoch,
    "resumed": _resumed,
    "evaluation": _evaluation,
    "ready": lambda f: f"layer {f['layer']} ready",
    "message": lambda f: str(f["message"]),
    "error": lambda f: f"error: {f['message']}",
    "warning": lambda f: f"warning: {f['message']}",
}


def render_text(event: str, fields: dict[str, Any]) -> str:
    if event in RENDER:
        return RENDER[event](fields)
    return " · ".join([event, *(f"{k} {v}" for k, v in fields.items())])


# --- the --log-format flag ------------------------------------------------------------------


def add_log_format_argument(parser: Any) -> None:
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help=LOG_FORMAT_HELP
    )


def log_format_in(argv: Sequence[str]) -> str:
    """The --log-format an argument list asks for (text unless it validly says json).

    Read before (or without) argparse, so that errors in parsing itself, and errors raised
    before a job has made its reporter, are reported in the requested format. Like argparse,
    it accepts `--log-format json`, `--log-format=json` and unambiguous prefixes (`--log`).
    """
    found = "text"
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            break
        name, eq, value = token.partition("=")
        if name.startswith("--lo") and "--log-format".startswith(name):
            found = value if eq else next(tokens, "")
    return found if found in LOG_FORMATS else "text"
