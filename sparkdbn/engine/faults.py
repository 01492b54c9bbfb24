"""Fault injection for testing Spark's task retries: a training step that fails its first try.

A failed attempt leaves no trace: the retry gets a fresh copy of the same state and a generator
seeded by the same (seed key, partition), so the model is bit-identical with or without faults.
Local mode retries only with a master such as `local[2,4]` (spark.task.maxFailures = 4).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from sparkdbn.engine.averaging import EmittingStep, PartitionStep

Step = TypeVar("Step", PartitionStep, EmittingStep)


def failing_first_attempt(step: Step, partitions: frozenset[int]) -> Step:
    """`step`, except that tasks of `partitions` raise RuntimeError on their first attempt."""
    if not partitions:
        return step

    def run(table: pa.Table, state: np.ndarray, rng: np.random.Generator) -> Any:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context.partitionId() in partitions and context.attemptNumber() == 0:
            raise RuntimeError(
                f"injected fault (fault_injection): partition {context.partitionId()}, "
                "first attempt"
            )
        return step(table, state, rng)

    return run
