"""Running a job's `main` in this process, on the test session's SparkSession.

A job started as a subprocess pays 10-30 s for its own JVM; in-process, `get_session` finds
the session of the `spark` fixture instead. What the job writes to stdout and stderr and its
exit code come from the same `sparkdbn.cli.run` a real process uses.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import subprocess
import sys


def run_in_process(job: str, *args: str) -> subprocess.CompletedProcess[str]:
    """jobs/JOB.py's main with `args`, as `python jobs/JOB.py ARGS` would run it."""
    from sparkdbn.cli import run

    module = importlib.import_module(f"sparkdbn.jobs.{job}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(module.main, list(args))
    return subprocess.CompletedProcess([sys.executable, job, *args], code, out.getvalue(),
                                       err.getvalue())
