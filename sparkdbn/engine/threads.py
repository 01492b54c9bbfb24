"""BLAS threads inside Spark tasks: as many as the task's CPUs, never more.

Spark sets OMP_NUM_THREADS to the executor's cores for every Python worker, so with several
tasks per executor each numpy matrix product would start that many BLAS threads per task and
oversubscribe the cores. Limiting to the task's `spark.task.cpus` keeps one thread per core.
A worker finds its BLAS libraries once (a scan of the loaded libraries, milliseconds) and
reuses that for every task it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any


@cache
def _controller() -> Any:
    import numpy  # noqa: F401  (loads the BLAS library the scan must find)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def task_blas_threads() -> Iterator[None]:
    from pyspark import TaskContext

    context = TaskContext.get()
    cpus = context.cpus() if context is not None else None
    if not cpus:
        yield
        return
    with _controller().limit(limits=cpus, user_api="blas"):
        yield
