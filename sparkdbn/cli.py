"""Shared plumbing for the thin job entry points: exit codes and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sparkdbn.errors import InputError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a job's main and turn its outcome into an exit code.

    InputError means the user must fix something: one line on stderr, exit 2. Anything else
    is our failure (or the cluster's): the traceback stays visible, exit 1.
    """
    try:
        main(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
