"""One data-parallel round: every partition updates a copy of the state, Spark averages them.

The state is one flat float32 vector (parameters and optimizer buffers). A round is a
`mapInArrow` stage in which each partition runs a numpy step over all its rows, then a grouped
`applyInArrow` stage that averages the partitions' states weighted by row count. The state is
cut into chunks and each chunk is averaged by its own group, so the reduction runs in
parallel, no task holds more than a bounded slice, and the driver only ever receives the
averaged vector: its memory is O(parameters), whatever the number of partitions. When all
partitions' states together fit that bound (a few partitions), the driver averages them
itself with the same function instead, which saves the shuffle stage.

Only DataFrame APIs are used, so the same code runs over Spark Connect. Determinism: each
partition's generator is seeded by (seed key, partition id), and the average adds the
partitions in partition order, so task retries and re-runs give bit-identical results.

An `EmittingRound` is the same round for a step that also emits rows (a layer's rough
representation, made during its epoch): the rows are the stage's output, which the caller
writes, and the states come back through an accumulator, which Spark merges exactly once per
partition of a result stage. It needs a SparkContext and all states within GROUP_BYTES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import SparkContext
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import DataFrame

from sparkdbn.engine.threads import task_blas_threads
from sparkdbn.staging import StagedRows

STATE_SCHEMA = "part int, chunk int, n long, sums binary, data binary"
REDUCED_SCHEMA = "chunk int, n long, sums binary, data binary"
# Upper bound for the bytes one reduce group holds (partitions × chunk floats × 4).
GROUP_BYTES = 1 << 26
MAX_CHUNK = 1 << 20

# A partition step gets the partition's rows (one Arrow table), the current state and its
# seeded generator; it returns the new state, its row count and sums of per-row metrics.
StepResult = tuple[np.ndarray, int, np.ndarray]
PartitionStep = Callable[[pa.Table, np.ndarray, np.random.Generator], StepResult]
# An emitting step also returns the rows its partition emits.
EmittingStep = Callable[
    [pa.Table, np.ndarray, np.random.Generator], tuple[StepResult, Iterator[pa.RecordBatch]]
]
# Sums travel as float64; an exact integer is carried as two float64 limbs of 32 bits each,
# whose partition sums stay exact for up to 2**21 partitions.
_LIMB = 1 << 32


@dataclass
class RoundResult:
    state: np.ndarray
    n_rows: int
    sums: np.ndarray


def exact_limbs(value: int) -> list[float]:
    """An integer as [high, low] float64 limbs, for a step's sums: their sums stay exact."""
    high = value // _LIMB
    return [float(high), float(value - high * _LIMB)]


def from_limbs(limbs: np.ndarray) -> int:
    """The exact integer behind summed `exact_limbs`."""
    return int(limbs[0]) * _LIMB + int(limbs[1])


def chunk_length(state_size: int, partitions: int) -> int:
    """Floats per chunk: as large as possible while a group stays within GROUP_BYTES."""
    bound = max(1024, GROUP_BYTES // (4 * max(partitions, 1)))
    return max(1, min(state_size, MAX_CHUNK, bound))


def _state_batch(part: int, result: StepResult, chunk: int) -> pa.RecordBatch:
    """One partition's new state as STATE_SCHEMA rows, one per chunk."""
    new_state, n, sums = result
    starts = range(0, new_state.size, chunk)
    return pa.RecordBatch.from_pydict(
        {
            "part": pa.array([part] * len(starts), pa.int32()),
            "chunk": pa.array(range(len(starts)), pa.int32()),
            "n": pa.array([n] * len(starts), pa.int64()),
            "sums": pa.array([np.asarray(sums, np.float64).tobytes()] * len(starts)),
            "data": pa.array(
                [new_state[s : s + chunk].astype("<f4").tobytes() for s in starts], pa.binary()
            ),
        }
    )


def _run_step(
    step: PartitionStep | EmittingStep,
    state: np.ndarray,
    seed_key: tuple[int, ...],
    batches: Iterator[pa.RecordBatch],
) -> tuple[int, Any] | None:
    """In a task: `step` over all the partition's rows from a copy of `state`, with its seeded
    generator; None for an empty partition. Returns the partition id and the step's result."""
    from pyspark import TaskContext

    table = pa.Table.from_batches(list(batches))
    if table.num_rows == 0:
        return None
    part = TaskContext.get().partitionId()
    rng = np.random.default_rng([*seed_key, part])
    with task_blas_threads():
        return part, step(table, state.copy(), rng)


def _map_partitions(
    step: PartitionStep, state: np.ndarray, seed_key: tuple[int, ...], chunk: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ran = _run_step(step, state, seed_key, batches)
        if ran is not None:
            yield _state_batch(*ran, chunk)

    return run


def _average_chunk(table: pa.Table) -> pa.Table:
    """Row-weighted mean of one chunk over all partitions, added in partition order."""
    order = np.argsort(table.column("part").to_numpy(), kind="stable")
    weights = table.column("n").to_numpy()[order]
    datas = table.column("data").to_pylist()
    sums_col = table.column("sums").to_pylist()
    acc: np.ndarray | None = None
    sums: np.ndarray | None = None
    for i, w in zip(order, weights, strict=True):
        x = np.frombuffer(datas[i], "<f4").astype(np.float64)
        s = np.frombuffer(sums_col[i], np.float64)
        acc = x * w if acc is None else acc + x * w
        sums = s.copy() if sums is None else sums + s
    total = int(weights.sum())
    mean = (acc / total).astype("<f4")
    return pa.table(
        {
            "chunk": pa.array([table.column("chunk")[0].as_py()], pa.int32()),
            "n": pa.array([total], pa.int64()),
            "sums": pa.array([sums.tobytes()]),
            "data": pa.array([mean.tobytes()], pa.binary()),
        }
    )


def _average_states(table: pa.Table, size: int) -> RoundResult:
    """The averaged round from all partitions' STATE_SCHEMA rows (chunks in any order)."""
    chunks = table.column("chunk").to_numpy()
    reduced = [
        _average_chunk(table.filter(pa.array(chunks == c))).to_pylist()[0]
        for c in np.unique(chunks)
    ]
    return _assemble(reduced, size)


def _assemble(reduced: list[dict], size: int) -> RoundResult:
    """The averaged chunks, in order, as one state of `size` values."""
    if not reduced:
        raise ValueError("no partition had any rows")
    reduced.sort(key=lambda row: row["chunk"])
    new_state = np.concatenate([np.frombuffer(row["data"], "<f4") for row in reduced])
    if new_state.size != size:
        raise RuntimeError(f"averaged state has {new_state.size} values, expected {size}")
    first = reduced[0]
    return RoundResult(new_state.copy(), int(first["n"]), np.frombuffer(first["sums"], np.float64))


def average_round(
    data: DataFrame | StagedRows,
    state: np.ndarray,
    step: PartitionStep,
    seed_key: tuple[int, ...],
    partitions: int,
) -> RoundResult:
    """Run `step` on every partition of `data` from `state`; return the averaged new state.

    When all partitions' states fit in one group's bound (GROUP_BYTES), the driver collects
    them and averages them itself with the same code: this saves the shuffle stage, about a
    tenth of a second per round, and keeps the driver's memory within the same bound.
    """
    state = np.ascontiguousarray(state, np.float32)
    chunk = chunk_length(state.size, partitions)
    mapped = data.mapInArrow(_map_partitions(step, state, seed_key, chunk), STATE_SCHEMA)
    if partitions * state.size * 4 <= GROUP_BYTES:
        return _average_states(mapped.toArrow(), state.size)
    rows = mapped.groupBy("chunk").applyInArrow(_average_chunk, REDUCED_SCHEMA).collect()
    return _assemble([row.asDict() for row in rows], state.size)


class _Collected(AccumulatorParam):
    """A list that tasks append to: each partition's state batch, as Arrow IPC bytes."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, a: list, b: list) -> list:
        a.extend(b)
        return a


def can_emit(sc: SparkContext | None, state_size: int, partitions: int) -> bool:
    """Whether an EmittingRound works here: a SparkContext, and states that fit GROUP_BYTES."""
    return sc is not None and partitions * state_size * 4 <= GROUP_BYTES


class EmittingRound:
    """One round whose partitions also emit rows; `batches` is the stage's mapInArrow function.

    The caller runs the stage through an action that writes the rows, e.g.
    `df.mapInArrow(round.batches, schema).write.parquet(path)`; afterwards `result()` is the
    same averaged state that `average_round` gives for the same step, seed and data.
    """

    def __init__(
        self, sc: SparkContext, state: np.ndarray, step: EmittingStep, seed_key: tuple[int, ...]
    ) -> None:
        self.state = np.ascontiguousarray(state, np.float32)
        self._step, self._seed_key = step, seed_key
        self._states = sc.accumulator([], _Collected())

    def batches(self, source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ran = _run_step(self._step, self.state, self._seed_key, source)
        if ran is None:
            return
        part, (result, rows) = ran
        sink = pa.BufferOutputStream()
        batch = _state_batch(part, result, self.state.size)
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        self._states.add([sink.getvalue().to_pybytes()])
        yield from rows

    def result(self) -> RoundResult:
        """The averaged state, once the action that ran `batches` has finished."""
        parts = [pa.ipc.open_stream(blob).read_all() for blob in self._states.value]
        if not parts:
            raise ValueError("no partition had any rows")
        return _average_states(pa.concat_tables(parts), self.state.size)
