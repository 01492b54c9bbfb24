"""Shared plumbing for the thin job entry points: exit codes, one-line errors, --log-format."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sparkdbn.errors import InputError
from sparkdbn.logs import Reporter, add_log_format_argument, log_format_in

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class JobParser(argparse.ArgumentParser):
    """A job's argument parser: adds --log-format; under --log-format json a usage error is an
    InputError, so that `run` reports it as one JSON line (exit 2) like any bad input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_log_format_argument(self)
        self._log_format = "text"

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None):
        self._log_format = log_format_in(sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        if self._log_format == "json":
            raise InputError(f"{self.prog}: {message}")
        super().error(message)  # usage and the message on stderr, exit 2


def run(
    main: Callable[[list[str] | None], None],
    argv: list[str] | None = None,
    job: str | None = None,
) -> int:
    """Run a job's main and turn its outcome into an exit code.

    InputError means the user must fix something: one line on stderr, exit 2. Anything else
    is our failure (or the cluster's): exit 1 with the traceback visible on stderr, or under
    --log-format json one JSON line on stderr holding the exception's type, message and
    traceback (stdout stays JSON lines only).
    """
    fmt = log_format_in(sys.argv[1:] if argv is None else argv)
    errors = Reporter(job or _job_name(main), fmt, out=sys.stderr)
    try:
        main(argv)
    except InputError as err:
        errors.event("error", level="error", message=str(err), exit_code=EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if errors.is_json:
            errors.event("error", level="error", message="interrupted", exit_code=EXIT_FAILURE)
        else:
            print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:
        if not errors.is_json:
            raise  # the traceback stays visible; Python exits 1
        errors.event(
            "error", level="error", message=str(err), exit_code=EXIT_FAILURE,
            exception=type(err).__name__, traceback=traceback.format_exc(),
        )
        return EXIT_FAILURE
    return EXIT_OK


def _job_name(main: Callable[..., Any]) -> str:
    """jobs/train_dbn.py's main → "train_dbn" (also when the file is loaded under another
    module name, as tests do)."""
    code = getattr(main, "__code__", None)
    return Path(code.co_filename).stem if code is not None else "sparkdbn"
