"""Checkpoints: what a killed or failed training run needs to continue where it stopped.

Layout, a hidden directory beside the output (like the default representation store)::

    .OUT.checkpoint/checkpoint.json      manifest: the config, the training data's shape, and
                                         per trainer its epoch, state file and epoch records
    .OUT.checkpoint/layer_0-e000006.npz  one trainer's flat float32 state (parameters + velocity)
                                         and its partitions' local arrays (PCD's chains)
    .OUT.checkpoint/fine-tune-e000002.npz

Trainers are `layer_0`, `layer_1`, …, `fine-tune` and `baseline`. A state file's name carries
its epoch and is never rewritten; the manifest is replaced (temporary file, then os.replace)
only once the state file it names is complete, and the file it stops naming is deleted after.
So a kill at any moment leaves the previous checkpoint or the new one, never a mix. npz and
JSON only, never pickle. The state is the exact float32 vector the next averaging round
starts from, the local arrays are each partition's own as the epoch left them (`local_P` in
the npz), and seeds depend only on (seed, layer, epoch, partition), so resuming the
sequential schedule gives the bit-identical model.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from sparkdbn.errors import InputError

FORMAT = "sparkdbn-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"
LOCAL_PREFIX = "local_"
# Settings that may change between a run and its resume: those that steer the run but not its
# model (tracking among them), and the output, which names the checkpoint (so "out" and "./out"
# are the same run).
RUN_CONTROL = (
    "if_exists", "checkpoint_every", "fault_injection", "output", "mlflow",
    "mlflow_tracking_uri", "mlflow_experiment",
)


@dataclass
class Saved:
    """A trainer's checkpointed state after `epoch` epochs, its metric records so far and its
    partitions' local arrays (by partition)."""

    state: np.ndarray
    epoch: int
    records: list[dict[str, Any]]
    local: dict[int, np.ndarray] = field(default_factory=dict)


def checkpoint_dir(output: str | Path) -> Path:
    """Where a run's checkpoint lives: beside the output, hidden."""
    target = Path(output).resolve()
    return target.with_name(f".{target.name}.checkpoint")


def config_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key (old → new)' for every setting that differs, run-control settings aside."""
    keys = sorted((set(before) | set(now)) - set(RUN_CONTROL))
    return [
        f"{key} ({before.get(key)!r} → {now.get(key)!r})"
        for key in keys
        if before.get(key) != now.get(key)
    ]


def check_finished(output: str | Path, config: dict[str, Any]) -> None:
    """--if-exists resume on an existing output: it must be a finished run of this config."""
    meta_file = Path(output) / "model" / "model.json"
    try:
        before = json.loads(meta_file.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"output {str(output)!r} exists but is not a finished training run ({meta_file}: "
            f"{type(err).__name__}); use --if-exists overwrite"
        ) from err
    differences = config_differences(before, config)
    if differences:
        raise InputError(
            f"output {str(output)!r} was trained with another config, differing in "
            f"{', '.join(differences)}; use --if-exists overwrite"
        )


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Checkpoint:
    """The checkpoint of one run: loaded once when resuming, saved by the trainers as they go.

    `every` is the number of epochs between a trainer's saves (its last epoch is always
    saved); 0 turns saving off. Saving is thread-safe (the concurrent schedules' layers share
    one checkpoint).
    """

    def __init__(self, directory: str | Path, config: dict[str, Any], every: int) -> None:
        self.directory = Path(directory)
        self.config = config
        self.every = every
        self.resumed: dict[str, int] = {}
        self._data: dict[str, int] | None = None
        self._trainers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST

    def exists(self) -> bool:
        return self.manifest.is_file()

    def prepare(self, if_exists: str) -> None:
        """Before any work: load a checkpoint to resume, or refuse or clear a leftover one.

        `resume` continues from it (its config must match); `error` refuses to start while an
        unfinished run's checkpoint exists; `overwrite` deletes it and starts afresh. A
        directory without a manifest (killed before its first save) holds nothing: cleared.
        """
        if not self.exists():
            self.remove()
        elif if_exists == "resume":
            self._load()
        elif if_exists == "error":
            raise InputError(
                f"checkpoint {str(self.directory)!r} of an unfinished run exists; use "
                "--if-exists resume to continue it or --if-exists overwrite to start again"
            )
        else:
            self.remove()

    def _load(self) -> None:
        try:
            manifest = json.loads(self.manifest.read_text(encoding="utf-8"))
            saved_config, trainers = manifest["config"], manifest["trainers"]
            if manifest.get("format") != FORMAT or not isinstance(trainers, dict):
                raise ValueError(f"format {manifest.get('format')!r}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"checkpoint {str(self.manifest)!r} is unreadable ({err}); use --if-exists "
                "overwrite to start again"
            ) from err
        differences = config_differences(saved_config, self.config)
        if differences:
            raise InputError(
                f"cannot resume from {str(self.directory)!r}: the config differs in "
                f"{', '.join(differences)}; use the same settings, or --if-exists overwrite"
            )
        self._data = manifest.get("data")
        self._trainers = trainers

    def check_data(self, data: dict[str, int]) -> None:
        """The validated training data must be shaped as when the checkpoint was made."""
        if self._data is not None and self._data != data:
            raise InputError(
                f"cannot resume from {str(self.directory)!r}: the training data has {data}, the "
                f"checkpoint was made with {self._data}"
            )
        self._data = data

    def has(self, name: str) -> bool:
        return name in self._trainers

    def restore(self, name: str, size: int) -> Saved | None:
        """The trainer's saved state (checked to hold `size` float32 values), or None."""
        entry = self._trainers.get(name)
        if entry is None:
            return None
        file = self.directory / str(entry.get("file"))
        try:
            with np.load(file, allow_pickle=False) as npz:
                state = npz["state"]
                local = {
                    int(key.removeprefix(LOCAL_PREFIX)): npz[key]
                    for key in npz.files
                    if key.startswith(LOCAL_PREFIX)
                }
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(f"checkpoint file {str(file)!r} is unreadable ({err})") from err
        if state.dtype != np.float32 or state.shape != (size,):
            raise InputError(
                f"checkpoint file {str(file)!r} holds {state.dtype}{list(state.shape)}, "
                f"{name} needs float32[{size}]"
            )
        if any(array.dtype != np.float32 for array in local.values()):
            raise InputError(f"checkpoint file {str(file)!r} holds local arrays not float32")
        self.resumed[name] = int(entry["epoch"])
        return Saved(state, int(entry["epoch"]), list(entry["records"]), local)

    def save(
        self,
        name: str,
        state: np.ndarray,
        epoch: int,
        records: list[dict[str, Any]],
        last: bool = False,
        local: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Record a trainer's state (and its partitions' `local` arrays) after `epoch` epochs:
        every `every` epochs and its last."""
        if self.every <= 0 or not (last or epoch % self.every == 0):
            return
        arrays = {f"{LOCAL_PREFIX}{part}": array for part, array in (local or {}).items()}
        arrays["state"] = np.ascontiguousarray(state, np.float32)
        file = f"{name}-e{epoch:06d}.npz"
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.directory / file, lambda f: np.savez(f, **arrays))
            old = self._trainers.get(name, {}).get("file")
            self._trainers[name] = {"epoch": epoch, "file": file, "records": records}
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "saved_at": time.time(),
                "config": self.config,
                "data": self._data,
                "trainers": self._trainers,
            }
            text = json.dumps(manifest, indent=1).encode()
            _write_atomic(self.manifest, lambda f: f.write(text))
            if old is not None and old != file:
                (self.directory / old).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
