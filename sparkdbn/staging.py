"""Partitions kept as local files, one per partition, that tasks read themselves.

An epoch's stage needs every row of its partition in the Python worker. From Spark's cache the
JVM converts them to Arrow and streams them over a socket: 0.25-0.45 s per 94 MB partition on
this machine, about a sixth of the epoch. When all tasks run on the driver's machine (a local
master), the partition can instead sit in an Arrow IPC file there, which the task memory-maps:
its rows are used in place, from the page cache. The stage then runs over a tiny frame with
one row per partition, and the task's partition id names its file, so partition i holds the
same rows, in the same order, as partition i of the frame that was staged: the seeds, and so
the model, do not change.

Files are written by the tasks that produce the rows: a hidden temporary file renamed to
`part-NNNNN.arrow`, so a retried task replaces it whole. An empty partition has no file. A
representation store's Parquet part files (`part-NNNNN.parquet`) are read the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

Batches = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
STAGED_SUFFIX = ".arrow"
# A staged partition is one record batch up to this size, so readers use it in place; larger
# ones keep their batches, which a reader's numpy view then concatenates.
ONE_BATCH_BYTES = (1 << 31) - 1


def part_name(part: int, suffix: str) -> str:
    return f"part-{part:05d}{suffix}"


def task_paths(directory: str, suffix: str) -> tuple[str, str]:
    """In a task: its partition's file in `directory`, and a hidden temporary name for it
    that is this attempt's own."""
    from pyspark import TaskContext

    context = TaskContext.get()
    name = part_name(context.partitionId(), suffix)
    tmp = f".{name}.{context.taskAttemptId()}.tmp"
    return os.path.join(directory, name), os.path.join(directory, tmp)


def is_local(master: str) -> bool:
    """Whether a master URL runs every task in the driver's process (local, local[…])."""
    return master == "local" or master.startswith("local[")


def local_master(spark: SparkSession) -> bool:
    """Whether every task of this classic session runs in the driver's process (local[…])."""
    try:
        master = spark.sparkContext.master
    except Exception:  # Spark Connect has no SparkContext; its tasks run elsewhere
        return False
    return is_local(master)


class PartWriter:
    """One task's partition file: tables are appended, then `commit` renames it into place.

    Binary columns (packed rows) are written without dictionary or statistics, which only
    cost time on unique float data.
    """

    def __init__(self, directory: str, schema: pa.Schema, compression: str = "none") -> None:
        self.path, self._tmp = task_paths(directory, ".parquet")
        self.schema = schema
        self._compression = compression
        self._out: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self._out is None:
            plain = [f.name for f in self.schema if not pa.types.is_binary(f.type)]
            self._out = pq.ParquetWriter(
                self._tmp, self.schema, compression=self._compression,
                use_dictionary=plain, write_statistics=plain,
            )
        self._out.write_table(table.select(self.schema.names).cast(self.schema))

    def commit(self) -> bool:
        """Put the file in place; False (and no file) if nothing was written."""
        if self._out is None:
            return False
        self._out.close()
        os.replace(self._tmp, self.path)
        return True

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()
            os.remove(self._tmp)


class StagedWriter:
    """One task's staged partition: an Arrow IPC file of one record batch (up to
    ONE_BATCH_BYTES), so a reader maps the rows' buffers straight from the page cache,
    without decoding or copying them. Tables are kept until `commit`, which writes the file
    and renames it into place."""

    def __init__(self, directory: str, schema: pa.Schema) -> None:
        self.path, self._tmp = task_paths(directory, STAGED_SUFFIX)
        self.schema = schema
        self._tables: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        self._tables.append(table.select(self.schema.names).cast(self.schema))

    def commit(self) -> bool:
        """Put the file in place; False (and no file) if nothing was written."""
        if not self._tables:
            return False
        table = pa.concat_tables(self._tables)
        self._tables = []
        if table.nbytes < ONE_BATCH_BYTES:  # beyond, binary offsets (int32) would overflow
            table = table.combine_chunks()
        try:
            with pa.OSFile(self._tmp, "wb") as sink, pa.ipc.new_file(sink, self.schema) as out:
                out.write_table(table)
            os.replace(self._tmp, self.path)
        except BaseException:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)
            raise
        return True

    def abort(self) -> None:
        self._tables = []


def staging(batches: Batches, directory: str, schema: pa.Schema) -> Batches:
    """`batches` (a mapInArrow function) that also saves the rows it reads to its partition's
    file in `directory`; the rows must have `schema`'s columns."""

    def run(source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        writer = StagedWriter(directory, schema)

        def saved() -> Iterator[pa.RecordBatch]:
            for batch in source:
                if batch.num_rows:
                    writer.write(pa.Table.from_batches([batch]))
                yield batch

        rows = saved()
        try:
            yield from batches(rows)
            for _ in rows:  # rows `batches` left unread are still saved
                pass
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    return run


def written(
    batches: Batches, new_writer: Callable[[], PartWriter | StagedWriter], tally: Batches
) -> Batches:
    """`batches` (a mapInArrow function) whose non-empty output batches go to the partition's
    file through `new_writer()` (PartWriter or StagedWriter); instead of the rows it yields
    `tally` over them, once the file is in place. A failed task leaves no file."""

    def run(source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        writer = new_writer()

        def kept() -> Iterator[pa.RecordBatch]:
            for batch in batches(source):
                if batch.num_rows:
                    writer.write(pa.Table.from_batches([batch]))
                    yield batch

        try:
            out = list(tally(kept()))
        except BaseException:
            writer.abort()
            raise
        writer.commit()
        yield from out

    return run


def row_count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A tally for `written`: the partition's row count (schema "n long")."""
    n = sum(batch.num_rows for batch in batches)
    yield pa.RecordBatch.from_pydict({"n": pa.array([n], pa.int64())})


@dataclass(frozen=True)
class StagedParts:
    """Partition files under `directory` for partitions 0..partitions-1 (rows: `schema`);
    `owned` files are removed with the data, others (a store's version) are left alone."""

    directory: str
    partitions: int
    schema: str  # Spark schema as JSON (a StructType does not travel as a frozen field)
    owned: bool = True
    suffix: str = STAGED_SUFFIX  # ".arrow" (StagedWriter) or ".parquet" (a store's PartWriter)

    @property
    def struct(self) -> T.StructType:
        return T.StructType.fromJson(json.loads(self.schema))

    def table(self, part: int, columns: list[str] | None = None) -> pa.Table:
        """The rows of partition `part` (none when it was empty)."""
        path = os.path.join(self.directory, part_name(part, self.suffix))
        if not os.path.exists(path):
            arrow = to_arrow_schema(self.struct)
            return arrow.empty_table().select(columns or arrow.names)
        if self.suffix == ".parquet":
            return pq.read_table(path, columns=columns, memory_map=True)
        table = pa.ipc.open_file(pa.memory_map(path)).read_all()
        return table.select(columns or table.schema.names)

    def rows(self, spark: SparkSession, columns: list[str] | None = None) -> StagedRows:
        return StagedRows(spark, self, columns or self.struct.names)

    def release(self) -> None:
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)


class StagedRows:
    """The staged rows, with the part of DataFrame's API the engine's stages use: `schema`,
    `columns`, `select` and `mapInArrow`, whose function gets the partition's file as batches
    in the same task. `frame()` is a real DataFrame of the rows, for everything else."""

    def __init__(self, spark: SparkSession, parts: StagedParts, columns: list[str]) -> None:
        self.spark, self.parts = spark, parts
        fields = {f.name: f for f in parts.struct.fields}
        self.schema = T.StructType([fields[c] for c in columns])
        self.columns = list(columns)

    def select(self, *columns: str) -> StagedRows:
        return StagedRows(self.spark, self.parts, list(columns))

    def mapInArrow(self, fn: Batches, schema: str | T.StructType) -> DataFrame:  # noqa: N802
        parts, columns = self.parts, self.columns

        def run(source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from pyspark import TaskContext

            for _ in source:
                pass
            yield from fn(iter(parts.table(TaskContext.get().partitionId(), columns).to_batches()))

        n = parts.partitions
        return self.spark.range(0, n, 1, n).mapInArrow(run, schema)

    def run_parts(
        self,
        fn: Callable[[Iterator[tuple[int, pa.Table]]], Iterator[Any]],
        tasks: int | None = None,
    ) -> list[Any]:
        """A stage of `tasks` tasks (default: the session's parallelism), each handing `fn`
        its run of consecutive partitions (`task_runs`) as (partition, rows); returns what the
        tasks yield, in task order.

        An RDD stage over a range rather than a DataFrame one: no plan, no UDF and no Arrow
        result to build, which is most of a short round's cost (staged rows exist under a
        local master only, where the session is classic).
        """
        parts, columns = self.parts, self.columns
        sc = self.spark.sparkContext
        runs = task_runs(parts.partitions, tasks or sc.defaultParallelism)

        def run(task: int, _: Iterator[int]) -> Iterator[Any]:
            yield from fn((i, parts.table(i, columns)) for i in runs[task])

        return sc.range(0, len(runs), numSlices=len(runs)).mapPartitionsWithIndex(run).collect()

    def frame(self) -> DataFrame:
        return self.mapInArrow(lambda batches: batches, self.schema)


def task_runs(partitions: int, tasks: int) -> list[range]:
    """Partitions 0..partitions-1 cut into min(tasks, partitions) runs of consecutive ones,
    as evenly as whole partitions allow."""
    count = max(1, min(tasks, partitions))
    return [range(i * partitions // count, (i + 1) * partitions // count) for i in range(count)]


def stage_directory(spark: SparkSession) -> str:
    """A new directory for staged partitions (see `scratch_directory`)."""
    return scratch_directory(spark, "staged")


def scratch_directory(spark: SparkSession, kind: str) -> str:
    """A new directory in the application's scratch space (removed with the SparkContext),
    beside the driver's files, which every task of a local master can reach."""
    from pyspark import SparkFiles

    path = os.path.join(SparkFiles.getRootDirectory(), f"sparkdbn-{kind}-{uuid.uuid4().hex}")
    os.makedirs(path)
    return path
