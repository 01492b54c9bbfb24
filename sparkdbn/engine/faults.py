"""Fault injection for testing Spark's task retries: a training step that fails its first try.

A failed attempt leaves no trace: the retry gets a fresh copy of the same state and a generator
seeded by the same (seed key, partition) and round, so the model is bit-identical with or
without faults. A task that serves several staged partitions fails, and is retried, whole.
Local mode retries only with a master such as `local[2,4]` (spark.task.maxFailures = 4).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from sparkdbn.engine.averaging import EmittingStep, PartitionStep, current_partition

Step = TypeVar("Step", PartitionStep, EmittingStep)


def failing_first_attempt(step: Step, partitions: frozenset[int]) -> Step:
    """`step`, except that tasks of `partitions` raise RuntimeError on their first attempt."""
    if not partitions:
        return step

    def run(
        table: pa.Table, state: np.ndarray, rng: np.random.Generator, rows: np.ndarray
    ) -> Any:
        from pyspark import TaskContext

        part = current_partition()
        if part in partitions and TaskContext.get().attemptNumber() == 0:
            raise RuntimeError(
                f"injected fault (fault_injection): partition {part}, first attempt"
            )
        return step(table, state, rng, rows)

    return run
