"""Atomic directory commits on the local file system: a reader sees all of a result or none."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparkdbn.errors import InputError

IF_EXISTS = ("error", "overwrite")
# Jobs whose finished output can be recognised also accept "resume": train_dbn continues from
# the checkpoint beside the output; prepare_data, pretrain_layer and evaluate keep a finished
# output and exit 0 (each job's --help says what it checks).
RESUMABLE_IF_EXISTS = (*IF_EXISTS, "resume")


def check_target(path: str | Path, if_exists: str, choices: tuple[str, ...] = IF_EXISTS) -> None:
    """Fail early (before any work) when the output exists and may not be replaced.

    "resume" (where `choices` allow it) passes: the resuming job decides what an existing
    output means.
    """
    if if_exists not in choices:
        raise InputError(f"--if-exists must be one of {choices}, got {if_exists!r}")
    if Path(path).exists() and if_exists == "error":
        raise InputError(f"output {str(path)!r} already exists (use --if-exists overwrite)")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file by a rename from a sibling temporary file: never seen half-written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    On failure the temporary directory is removed, so a crashed or rejected run never leaves
    anything that looks like a finished output. An existing `path` is moved aside first and
    deleted only after the new one is in place.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
