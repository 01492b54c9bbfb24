"""Fault injection for testing Spark's task retries: a training step that fails its first try.

A failed attempt leaves no trace: the retry gets a fresh copy of the same state and a generator
seeded by the same (seed key, partition) and round, so the model is bit-identical with or
without faults. A task that serves several staged partitions fails, and is retried, whole; an
epoch whose rounds run as one barrier stage (`StagedEpoch`) fails once and reruns whole.
Local mode retries only with a master such as `local[2,4]` (spark.task.maxFailures = 4).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from sparkdbn.engine.averaging import EmittingStep, Local, PartitionStep, current_partition

Step = TypeVar("Step", PartitionStep, EmittingStep)


def failing_first_attempt(step: Step, partitions: frozenset[int]) -> Step:
    """`step`, except that tasks of `partitions` raise RuntimeError on their first attempt."""
    if not partitions:
        return step

    def run(
        table: pa.Table, state: np.ndarray, rng: np.random.Generator, rows: np.ndarray,
        local: Local,
    ) -> Any:
        from pyspark import TaskContext

        part = current_partition()
        if part in partitions and _first_try(TaskContext.get(), part):
            raise RuntimeError(
                f"injected fault (fault_injection): partition {part}, first attempt"
            )
        return step(table, state, rng, rows, local)

    return run


def _first_try(context: Any, part: int) -> bool:
    """Whether this is the partition's first try in this stage, and if so, mark it tried.

    A retried task has a later attempt number. A failed barrier stage (`StagedEpoch`, local
    master only) reruns as a new attempt of the same stage, whose tasks count from 0 again,
    so the first try also leaves a marker in the application's scratch directory.
    """
    from pyspark import SparkFiles

    if context.attemptNumber() != 0:
        return False
    marker = os.path.join(
        SparkFiles.getRootDirectory(), f"sparkdbn-fault-{context.stageId()}-{part}"
    )
    try:
        with open(marker, "x"):
            return True
    except FileExistsError:
        return False
