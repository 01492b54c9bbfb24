"""One data-parallel round: every partition updates a copy of the state, Spark averages them.

The state is one flat float32 vector (parameters and optimizer buffers). A round is a
`mapInArrow` stage in which each partition runs a numpy step over its next slice of rows (all
of them when an epoch is one round), then a grouped `applyInArrow` stage that averages the
partitions' states weighted by row count. The state is cut into chunks and each chunk is
averaged by its own group, so the reduction runs in parallel, no task holds more than a
bounded slice, and the driver only ever receives the averaged vector: its memory is
O(parameters), whatever the number of partitions. When all partitions' states together fit
that bound (a few partitions), the driver averages them itself with the same function
instead, which saves the shuffle stage. Staged rows (local master) go further: each task
trains a run of consecutive partitions and returns their weighted sum, so a round costs one
task per core and one state per task, however many partitions there are; and an epoch of
several rounds over staged rows is one barrier stage whose tasks stay for all its rounds
(`StagedEpoch`, chosen by `epoch_rounds`).

Rows that are not staged go through DataFrame APIs only, so the same code runs over Spark
Connect; staged rows exist under a local master only, whose stage is a plain RDD one (see
`StagedRows.run_parts`). Determinism: each
partition's epoch order and generator are seeded by (seed key, partition id); a round after
the first continues the generator where the partition's previous round left it (its state
travels with the round's result), so the rounds of an epoch draw exactly what one
uninterrupted epoch would. The average adds the partitions in groups of SUM_GROUP, each in
partition order, then the groups in order, on every path (`_Total`), so task retries, re-runs
and other parallelisms give bit-identical results. Empty partitions, and partitions with no
mini-batch left in a round, contribute nothing.

A step may also keep an array of the partition's own (`Local`: PCD's fantasy particles), which
is never averaged: it travels back beside the generator's state and goes to the partition's
next round, across epochs too (`rounds.AveragingLoop` carries it, the checkpoint keeps it).
Like the start state, it reaches the task from the driver, so a retried task starts from the
same one.

An `EmittingRound` is the same round for a step that also emits rows (a layer's rough
representation, made during its epoch): the rows are the stage's output, which the caller
writes, and the states come back through an accumulator, which Spark merges exactly once per
partition of a result stage. It needs a SparkContext and all states within GROUP_BYTES.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import SparkContext
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import DataFrame

from sparkdbn.engine.threads import task_blas_threads
from sparkdbn.kernels.averaging import round_rows
from sparkdbn.staging import StagedRows, scratch_directory, task_runs

STATE_SCHEMA = "part int, chunk int, n long, sums binary, gens string, data binary"
REDUCED_SCHEMA = "chunk int, n long, sums binary, gens string, data binary"
# Upper bound for the bytes one reduce group holds (partitions × chunk floats × 4).
GROUP_BYTES = 1 << 26
MAX_CHUNK = 1 << 20
START_FILE = "start.npy"
# Partitions whose weighted states are added one after the other before the groups are.
SUM_GROUP = 8
# Floats per chunk of a partition's per-round arithmetic (float64: 512 KB, within L2).
SCRATCH_FLOATS = 1 << 16



@dataclass
class Local:
    """A partition's own array, kept from one of its rounds to the next, across epochs, and
    never averaged (PCD's fantasy particles). A step reads `array` (None until the partition
    first keeps one) and may replace it with its new value."""

    array: np.ndarray | None = None


# A partition step gets the partition's rows (one Arrow table), the current state, its
# seeded generator, the indices of the rows it trains on, in order, and its `Local`; it
# returns the new state, its row count and sums of per-row metrics.
StepResult = tuple[np.ndarray, int, np.ndarray]
PartitionStep = Callable[
    [pa.Table, np.ndarray, np.random.Generator, np.ndarray, Local], StepResult
]
# An emitting step also returns the rows its partition emits.
EmittingStep = Callable[
    [pa.Table, np.ndarray, np.random.Generator, np.ndarray, Local],
    tuple[StepResult, Iterator[pa.RecordBatch]],
]
# Sums travel as float64; an exact integer is carried as two float64 limbs of 32 bits each,
# whose partition sums stay exact for up to 2**21 partitions.
_LIMB = 1 << 32
# The partition whose step is running in this task (fault injection and tests read it).
_PARTITION: ContextVar[int] = ContextVar("sparkdbn_partition")


@dataclass(frozen=True)
class Round:
    """Which slice of the epoch a round trains: round `index` of `count`, cut at whole
    mini-batches of `batch_size`, the partitions' generator states after the rounds before
    it (JSON, by partition) and their `Local` arrays from every round before it."""

    index: int = 0
    count: int = 1
    batch_size: int = 1
    generators: dict[int, str] = field(default_factory=dict)
    local: dict[int, np.ndarray] = field(default_factory=dict)


WHOLE_EPOCH = Round()


@dataclass
class RoundResult:
    """The row-weighted mean state, the rows trained, the partitions' summed metrics, their
    spread Σ nᵢ·‖dᵢ‖² (dᵢ: partition i's change of the first `spread_size` values), their
    generator states for the next round and the `Local` arrays they kept."""

    state: np.ndarray
    n_rows: int
    sums: np.ndarray
    spread: float = 0.0
    generators: dict[int, str] = field(default_factory=dict)
    local: dict[int, np.ndarray] = field(default_factory=dict)


def idle(state: np.ndarray) -> RoundResult:
    """A round in which no partition had a row to train: it changes nothing."""
    return RoundResult(np.array(state, np.float32), 0, np.zeros(0))


def current_partition() -> int:
    """The partition whose step runs now (inside a task)."""
    return _PARTITION.get()


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


@dataclass
class _Ran:
    """One partition's share of a round, inside its task."""

    part: int
    state: np.ndarray
    n: int
    sums: np.ndarray  # the step's sums, then the spread
    generator: str
    local: np.ndarray | None = None

    def carry(self) -> dict[str, Any]:
        """What goes to the partition's next round, as JSON: the generator's state and the
        local array (little-endian float32, base64)."""
        carry: dict[str, Any] = {"rng": self.generator}
        if self.local is not None:
            data = base64.b64encode(np.ascontiguousarray(self.local, "<f4").tobytes())
            carry["local"] = {"shape": list(self.local.shape), "data": data.decode()}
        return carry


def _carried(carries: dict[Any, dict[str, Any]]) -> tuple[dict[int, str], dict[int, np.ndarray]]:
    """Partitions' `_Ran.carry` values (keyed by partition, as JSON keys them): their
    generators and their local arrays."""
    generators = {int(part): carry["rng"] for part, carry in carries.items()}
    local = {
        int(part): np.frombuffer(base64.b64decode(carry["local"]["data"]), "<f4")
        .reshape(carry["local"]["shape"]).astype(np.float32)
        for part, carry in carries.items()
        if "local" in carry
    }
    return generators, local


def _generator(seed_key: tuple[int, ...], part: int, n_rows: int, rnd: Round):
    """The partition's epoch order and its generator, continued from the round before."""
    rng = np.random.default_rng([*seed_key, part])
    order = rng.permutation(n_rows)
    carried = rnd.generators.get(part)
    if carried is not None:
        rng.bit_generator.state = json.loads(carried)
    return order, rng


def _run_part(
    step: PartitionStep | EmittingStep,
    state: np.ndarray,
    seed_key: tuple[int, ...],
    part: int,
    table: pa.Table,
    rnd: Round,
    spread_size: int,
) -> tuple[_Ran, Any] | None:
    """In a task: `step` over the partition's slice of the round, from `state` (read-only: a
    step builds its new state apart); None when the partition has no rows in it. Returns the
    share and the step's extra output."""
    if table.num_rows == 0:
        return None
    order, rng = _generator(seed_key, part, table.num_rows, rnd)
    rows = order[round_rows(table.num_rows, rnd.batch_size, rnd.index, rnd.count)]
    if rows.size == 0:
        return None
    local = Local(rnd.local.get(part))
    token = _PARTITION.set(part)
    try:
        out = step(table, state, rng, rows, local)
    finally:
        _PARTITION.reset(token)
    (new_state, n, sums), extra = (out, None) if len(out) == 3 else out
    spread = float(n) * _squared_distance(new_state[:spread_size], state[:spread_size])
    all_sums = np.append(np.asarray(sums, np.float64), spread)
    generator = json.dumps(rng.bit_generator.state)
    return _Ran(part, new_state, n, all_sums, generator, local.array), extra


def _squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖² in float64, a cache-sized chunk at a time: a partition pays it every round, and
    einsum's float64 path over the whole state cost more than the partition's training."""
    total = 0.0
    for i in range(0, a.size, SCRATCH_FLOATS):
        d = np.subtract(a[i : i + SCRATCH_FLOATS], b[i : i + SCRATCH_FLOATS], dtype=np.float64)
        total += float(np.dot(d, d))
    return total


def _table(batches: Iterable[pa.RecordBatch]) -> pa.Table:
    """A task's batches as one table; a partition with no batches at all is an empty one."""
    batches = list(batches)
    if not batches:
        return pa.table({})
    return pa.Table.from_batches(batches)


def _state_batch(ran: _Ran, chunk: int) -> pa.RecordBatch:
    """One partition's new state as STATE_SCHEMA rows, one per chunk."""
    starts = range(0, ran.state.size, chunk)
    gens = json.dumps({ran.part: ran.carry()})
    return pa.RecordBatch.from_pydict(
        {
            "part": pa.array([ran.part] * len(starts), pa.int32()),
            "chunk": pa.array(range(len(starts)), pa.int32()),
            "n": pa.array([ran.n] * len(starts), pa.int64()),
            "sums": pa.array([ran.sums.tobytes()] * len(starts)),
            "gens": pa.array([gens if i == 0 else "{}" for i in range(len(starts))]),
            "data": pa.array(
                [ran.state[s : s + chunk].astype("<f4").tobytes() for s in starts], pa.binary()
            ),
        }
    )


def _map_partitions(
    step: PartitionStep, state: np.ndarray, seed_key: tuple[int, ...], chunk: int, rnd: Round,
    spread_size: int,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        with task_blas_threads():
            ran = _run_part(step, state, seed_key, part, _table(batches), rnd, spread_size)
        if ran is not None:
            yield _state_batch(ran[0], chunk)

    return run


def _train_parts(
    step: PartitionStep, state: np.ndarray, seed_key: tuple[int, ...],
    parts: Iterable[tuple[int, pa.Table]], rnd: Round, spread_size: int,
) -> list[_Summand]:
    """In a task: `step` over a run of staged partitions; their row-weighted states (float64)
    added as `_Total` adds them."""
    summands: list[_Summand] = []
    start: int | None = None
    for part, table in parts:
        start = part if start is None else start
        ran = _run_part(step, state, seed_key, part, table, rnd, spread_size)
        if ran is None:
            continue
        share = ran[0]
        last = summands[-1] if summands else None
        group = part // SUM_GROUP
        # A run of the group from its first partition on is added up here; a group begun in
        # another task gets its partitions one by one, for the driver to add.
        if last is not None and last.group == group and group * SUM_GROUP >= start:
            last.add(share)
        else:
            summands.append(_Summand(group, share))
    return summands


def _map_staged(
    step: PartitionStep, exchange: str, seed_key: tuple[int, ...], rnd: Round, spread_size: int,
) -> Callable[[Iterator[tuple[int, pa.Table]]], Iterator[dict]]:
    """A task over a run of staged partitions. The round's start state is a file in the
    `exchange` directory (the driver's machine runs every task), and so is what the task
    returns: its summands, each a file renamed into place so that a retried attempt replaces
    it whole."""

    def run(parts: Iterator[tuple[int, pa.Table]]) -> Iterator[dict]:
        from pyspark import TaskContext

        state = np.load(os.path.join(exchange, START_FILE), mmap_mode="r")
        attempt = TaskContext.get().taskAttemptId()
        with task_blas_threads():
            summands = _train_parts(step, state, seed_key, parts, rnd, spread_size)
        for summand in summands:
            yield summand.written(exchange, "", attempt)

    return run


class _Summand:
    """Consecutive partitions' row-weighted states of one sum group, added in order."""

    def __init__(self, group: int, share: _Ran) -> None:
        self.group, self.first = group, share.part
        self.total = np.multiply(share.state, share.n, dtype=np.float64)
        self.n, self.sums, self.gens = share.n, share.sums.copy(), {share.part: share.carry()}

    def add(self, share: _Ran) -> None:
        """total += n·state, in chunks: the same float64 products and sums as adding the
        whole weighted state, without a state-sized temporary per partition."""
        scratch = np.empty(min(SCRATCH_FLOATS, self.total.size), np.float64)
        for i in range(0, self.total.size, SCRATCH_FLOATS):
            chunk = self.total[i : i + SCRATCH_FLOATS]
            chunk += np.multiply(
                share.state[i : i + SCRATCH_FLOATS], share.n, out=scratch[: chunk.size],
                dtype=np.float64,
            )
        self.n += share.n
        self.sums += share.sums
        self.gens[share.part] = share.carry()

    def written(self, exchange: str, prefix: str, attempt: int) -> dict:
        """The summand saved in `exchange` (`prefix` names its round), and the row that tells
        the driver where (JSON values only)."""
        path = os.path.join(exchange, f"{prefix}partial-{self.first:05d}.npy")
        tmp = f"{path}.{attempt}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, self.total)
        os.replace(tmp, path)
        return {
            "first": self.first, "n": self.n, "sums": self.sums.tolist(),
            "gens": json.dumps(self.gens), "path": path,
        }


class _Total:
    """The sum every path computes, so that staged, cached and emitting rounds agree to the
    bit whatever the session's parallelism: partitions in groups of SUM_GROUP consecutive
    ones, each group added in partition order, then the groups in order. Summands come in
    partition order; one may already hold the start of its group added up."""

    def __init__(self) -> None:
        self._groups: list[list] = []  # [group, weighted total, sums]
        self.n = 0

    def add(self, first: int, weighted: np.ndarray, sums: np.ndarray, n: int) -> None:
        group = first // SUM_GROUP
        if self._groups and self._groups[-1][0] == group:
            self._groups[-1][1] += weighted
            self._groups[-1][2] += sums
        else:
            self._groups.append([group, np.array(weighted, np.float64), np.array(sums)])
        self.n += n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The total of the weighted states and of the sums."""
        _, total, sums = self._groups[0]
        for _, more, more_sums in self._groups[1:]:
            total = total + more
            sums = sums + more_sums
        return total, sums


def _merged_carries(column: list[str]) -> str:
    merged: dict[str, Any] = {}
    for text in column:
        merged.update(json.loads(text))
    return json.dumps(merged)


def _average_chunk(table: pa.Table) -> pa.Table:
    """Row-weighted mean of one chunk over all partitions, added as `_Total` adds."""
    order = np.argsort(table.column("part").to_numpy(), kind="stable")
    parts = table.column("part").to_numpy()[order]
    weights = table.column("n").to_numpy()[order]
    datas = table.column("data").to_pylist()
    sums_col = table.column("sums").to_pylist()
    adder = _Total()
    for i, part, w in zip(order, parts, weights, strict=True):
        x = np.frombuffer(datas[i], "<f4").astype(np.float64)
        adder.add(int(part), x * w, np.frombuffer(sums_col[i], np.float64), int(w))
    acc, sums = adder.result()
    total = int(weights.sum())
    mean = (acc / total).astype("<f4")
    return pa.table(
        {
            "chunk": pa.array([table.column("chunk")[0].as_py()], pa.int32()),
            "n": pa.array([total], pa.int64()),
            "sums": pa.array([sums.tobytes()]),
            "gens": pa.array([_merged_carries(table.column("gens").to_pylist())]),
            "data": pa.array([mean.tobytes()], pa.binary()),
        }
    )


def _average_states(table: pa.Table, state: np.ndarray) -> RoundResult:
    """The averaged round from all partitions' STATE_SCHEMA rows (chunks in any order)."""
    if table.num_rows == 0:
        return idle(state)
    chunks = table.column("chunk").to_numpy()
    reduced = [
        _average_chunk(table.filter(pa.array(chunks == c))).to_pylist()[0]
        for c in np.unique(chunks)
    ]
    return _assemble(reduced, state.size)


def _result(state: np.ndarray, n: int, sums: np.ndarray, gens: str) -> RoundResult:
    generators, local = _carried(json.loads(gens))
    return RoundResult(state, n, sums[:-1].copy(), float(sums[-1]), generators, local)


def _assemble(reduced: list[dict], size: int) -> RoundResult:
    """The averaged chunks, in order, as one state of `size` values."""
    reduced.sort(key=lambda row: row["chunk"])
    new_state = np.concatenate([np.frombuffer(row["data"], "<f4") for row in reduced])
    if new_state.size != size:
        raise RuntimeError(f"averaged state has {new_state.size} values, expected {size}")
    first = reduced[0]
    sums = np.frombuffer(first["sums"], np.float64)
    gens = _merged_carries([row["gens"] for row in reduced])
    return _result(new_state.copy(), int(first["n"]), sums, gens)


def _add_partials(partials: list[dict], state: np.ndarray) -> RoundResult:
    """The averaged round from the staged tasks' summands (`_Summand.written`), in order."""
    size = state.size
    if not partials:
        return idle(state)
    rows = sorted(partials, key=lambda row: row["first"])
    adder = _Total()
    for row in rows:
        weighted = np.load(row["path"], mmap_mode="r")
        adder.add(row["first"], weighted, np.array(row["sums"], np.float64), row["n"])
    total, sums = adder.result()
    n = adder.n
    if total.size != size:
        raise RuntimeError(f"averaged state has {total.size} values, expected {size}")
    gens = _merged_carries([row["gens"] for row in rows])
    return _result((total / n).astype(np.float32), n, sums, gens)


def _staged_round(
    data: StagedRows, state: np.ndarray, step: PartitionStep, seed_key: tuple[int, ...],
    rnd: Round, spread_size: int,
) -> RoundResult:
    """`average_round` over staged rows: one task per core, state in and out through files."""
    exchange = scratch_directory(data.spark, "round")
    try:
        np.save(os.path.join(exchange, START_FILE), state)
        run = _map_staged(step, exchange, seed_key, rnd, spread_size)
        return _add_partials(data.run_parts(run), state)
    finally:
        shutil.rmtree(exchange, ignore_errors=True)


ROUND_POLL_SECONDS = 0.0005
STOP_FILE = "stop"


def _round_prefix(index: int) -> str:
    return f"round-{index:04d}-"


def _write_json(path: str, value: Any, attempt: int) -> None:
    tmp = f"{path}.{attempt}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _await_file(path: str, stop: str) -> bool:
    """In a task: wait until `path` exists (True), or `stop` does (False)."""
    while not os.path.exists(path):
        if os.path.exists(stop):
            return False
        time.sleep(ROUND_POLL_SECONDS)
    return True


def _epoch_task(
    steps: list[PartitionStep], data: StagedRows, runs: list[range], exchange: str,
    seed_key: tuple[int, ...], count: int, batch_size: int, spread_size: int,
    local: dict[int, np.ndarray],
) -> Callable[[int, Iterator[int]], Iterator[int]]:
    """A barrier task of a `StagedEpoch`: reads its run of partitions once, then for each
    round waits for the round's start state, trains, and leaves its summands and their rows
    (`round-R-task-T.json`) in `exchange`. Each partition's generator and `Local` array (from
    `local` at first) continue from round to round in memory, as the driver would carry them;
    a retried stage replays from round 0."""
    parts, columns = data.parts, data.columns
    stop = os.path.join(exchange, STOP_FILE)

    def run(task: int, _: Iterator[int]) -> Iterator[int]:
        from pyspark import TaskContext

        attempt = TaskContext.get().taskAttemptId()
        tables = [(i, parts.table(i, columns)) for i in runs[task]]
        generators: dict[int, str] = {}
        kept = dict(local)
        with task_blas_threads():
            for index, step in enumerate(steps):
                prefix = _round_prefix(index)
                start = os.path.join(exchange, prefix + START_FILE)
                if not _await_file(start, stop):
                    return
                state = np.load(start, mmap_mode="r")
                rnd = Round(index, count, batch_size, generators, kept)
                summands = _train_parts(step, state, seed_key, tables, rnd, spread_size)
                rows = [summand.written(exchange, prefix, attempt) for summand in summands]
                generators, changed = _carried(
                    {p: c for summand in summands for p, c in summand.gens.items()}
                )
                kept = {**kept, **changed}
                _write_json(os.path.join(exchange, f"{prefix}task-{task:03d}.json"), rows, attempt)
        yield task

    return run


class StagedEpoch:
    """The rounds of one epoch over staged rows as one barrier stage, instead of a stage each.

    A round's stage costs tens of milliseconds of scheduling whatever its work; here the tasks
    start once per epoch and stay, and each round is a start state the driver writes and the
    summands the tasks write back, in the application's scratch directory (a local master
    runs every task on the driver's machine). Barrier mode launches all tasks together, so
    layers training in parallel threads take the cores epoch by epoch instead of waiting on
    each other's tasks; a failed task fails the stage, which Spark reruns whole from round 0
    with the same start states and seeds, so the rounds come out bit-identical.
    `run(state, rnd)` is `average_round` for round `rnd.index`, which must come in order.
    """

    def __init__(
        self, data: StagedRows, steps: list[PartitionStep], seed_key: tuple[int, ...],
        spread_size: int | None,
    ) -> None:
        self._data, self._steps, self._seed_key = data, steps, seed_key
        self._spread = spread_size
        self._exchange = scratch_directory(data.spark, "epoch")
        self._runs = task_runs(data.parts.partitions, data.spark.sparkContext.defaultParallelism)
        self._tasks = len(self._runs)
        self._job: threading.Thread | None = None
        self._error: BaseException | None = None

    def run(self, state: np.ndarray, rnd: Round) -> RoundResult:
        state = np.array(state, np.float32)
        if self._job is None:
            self._start(rnd, state.size)
        prefix = _round_prefix(rnd.index)
        start = os.path.join(self._exchange, prefix + START_FILE)
        np.save(f"{start}.tmp.npy", state)
        os.replace(f"{start}.tmp.npy", start)
        rows = [row for task in range(self._tasks) for row in self._await_task(prefix, task)]
        return _add_partials(rows, state)

    def close(self) -> None:
        """Stop the tasks (after the last round they have stopped already) and clean up."""
        try:
            with open(os.path.join(self._exchange, STOP_FILE), "w"):
                pass
            if self._job is not None:
                self._job.join()
        finally:
            shutil.rmtree(self._exchange, ignore_errors=True)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> StagedEpoch:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the error that ended the epoch is reported
            self.close()

    def _start(self, rnd: Round, size: int) -> None:
        from pyspark import InheritableThread

        spread = size if self._spread is None else self._spread
        task = _epoch_task(
            self._steps, self._data, self._runs, self._exchange, self._seed_key, rnd.count,
            rnd.batch_size, spread, rnd.local,
        )
        sc = self._data.spark.sparkContext
        # Spark reruns a failed barrier stage only when it is a shuffle map stage, not the
        # result stage: the shuffle after it makes it one.
        stage = (
            sc.range(0, self._tasks, numSlices=self._tasks).barrier()
            .mapPartitionsWithIndex(task).repartition(1)
        )

        def job() -> None:
            try:
                stage.collect()
            except BaseException as err:  # reported by the round that waits, or by close()
                self._error = err

        self._job = InheritableThread(target=job, daemon=True)
        self._job.start()

    def _await_task(self, prefix: str, task: int) -> list[dict]:
        path = os.path.join(self._exchange, f"{prefix}task-{task:03d}.json")
        while not os.path.exists(path):
            if self._job is not None and not self._job.is_alive():
                if os.path.exists(path):
                    break
                error = self._error
                self._error = None
                raise error or RuntimeError("the epoch's stage ended before its rounds did")
            time.sleep(ROUND_POLL_SECONDS)
        with open(path, encoding="utf-8") as f:
            return json.load(f)


class _RoundByRound:
    """`average_round` for each round in turn: a stage per round."""

    def __init__(
        self, data: DataFrame | StagedRows, steps: list[PartitionStep],
        seed_key: tuple[int, ...], partitions: int, spread_size: int | None,
    ) -> None:
        self._data, self._steps, self._seed_key = data, steps, seed_key
        self._partitions, self._spread = partitions, spread_size

    def run(self, state: np.ndarray, rnd: Round) -> RoundResult:
        return average_round(
            self._data, state, self._steps[rnd.index], self._seed_key, self._partitions, rnd,
            self._spread,
        )

    def __enter__(self) -> _RoundByRound:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def epoch_rounds(
    data: DataFrame | StagedRows, steps: list[PartitionStep], seed_key: tuple[int, ...],
    partitions: int, spread_size: int | None = None,
) -> StagedEpoch | _RoundByRound:
    """A context whose `run(state, rnd)` averages round `rnd.index` with `steps[rnd.index]`:
    over staged rows, all of `steps` in one `StagedEpoch` stage (from two rounds on);
    otherwise `average_round`, a stage each."""
    if isinstance(data, StagedRows) and len(steps) > 1:
        return StagedEpoch(data, steps, seed_key, spread_size)
    return _RoundByRound(data, steps, seed_key, partitions, spread_size)


def average_round(
    data: DataFrame | StagedRows,
    state: np.ndarray,
    step: PartitionStep,
    seed_key: tuple[int, ...],
    partitions: int,
    rnd: Round = WHOLE_EPOCH,
    spread_size: int | None = None,
) -> RoundResult:
    """Run `step` on every partition of `data` from `state` over the round's slice of its
    rows; return the averaged new state (`spread_size`: how many leading values count in
    the partitions' spread, default all).

    When all partitions' states fit in one group's bound (GROUP_BYTES), the driver collects
    them and averages them itself with the same code: this saves the shuffle stage, about a
    tenth of a second per round, and keeps the driver's memory within the same bound.
    """
    state = np.array(state, np.float32)
    state.setflags(write=False)
    spread = state.size if spread_size is None else spread_size
    if isinstance(data, StagedRows):
        return _staged_round(data, state, step, seed_key, rnd, spread)
    chunk = chunk_length(state.size, partitions)
    mapped = data.mapInArrow(
        _map_partitions(step, state, seed_key, chunk, rnd, spread), STATE_SCHEMA
    )
    if partitions * state.size * 4 <= GROUP_BYTES:
        return _average_states(mapped.toArrow(), state)
    rows = mapped.groupBy("chunk").applyInArrow(_average_chunk, REDUCED_SCHEMA).collect()
    if not rows:
        return idle(state)
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
    same averaged state that `average_round` gives for the same step, seed, round and data.
    Every partition emits all its rows, also one with no mini-batch left in the round.
    """

    def __init__(
        self, sc: SparkContext, state: np.ndarray, step: EmittingStep, seed_key: tuple[int, ...],
        rnd: Round = WHOLE_EPOCH, spread_size: int | None = None,
    ) -> None:
        self.state = np.array(state, np.float32)
        self.state.setflags(write=False)
        self._step, self._seed_key, self._round = step, seed_key, rnd
        self._spread = self.state.size if spread_size is None else spread_size
        self._states = sc.accumulator([], _Collected())

    def batches(self, source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        table = _table(source)
        with task_blas_threads():
            ran = _run_part(
                self._step, self.state, self._seed_key, part, table, self._round, self._spread
            )
        if ran is None:
            # No mini-batch left here this round; the rows still belong in the version.
            if table.num_rows:
                _, rng = _generator(self._seed_key, part, table.num_rows, self._round)
                local = Local(self._round.local.get(part))
                _, rows = self._step(table, self.state, rng, np.empty(0, np.int64), local)
                yield from rows
            return
        share, rows = ran
        sink = pa.BufferOutputStream()
        batch = _state_batch(share, self.state.size)
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        self._states.add([sink.getvalue().to_pybytes()])
        yield from rows

    def result(self) -> RoundResult:
        """The averaged state, once the action that ran `batches` has finished."""
        parts = [pa.ipc.open_stream(blob).read_all() for blob in self._states.value]
        if not parts:
            return idle(self.state)
        return _average_states(pa.concat_tables(parts), self.state)
