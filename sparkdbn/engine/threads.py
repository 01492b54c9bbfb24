"""BLAS threads inside Spark tasks: as many as the task's CPUs, never more.

Spark sets OMP_NUM_THREADS to the executor's cores for every Python worker, so with several
tasks per executor each numpy matrix product would start that many BLAS threads per task and
oversubscribe the cores. Limiting to the task's `spark.task.cpus` keeps one thread per core.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def task_blas_threads() -> Iterator[None]:
    from pyspark import TaskContext
    from threadpoolctl import threadpool_limits

    context = TaskContext.get()
    cpus = context.cpus() if context is not None else None
    if not cpus:
        yield
        return
    with threadpool_limits(limits=cpus, user_api="blas"):
        yield
