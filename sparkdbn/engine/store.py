"""Versioned, atomically committed representations of one layer: ParDBN's hand-off between layers.

Layout under the store's base path (any Hadoop file system, or a local path under Connect)::

    BASE/v-000001/              Parquet part files (id, x[, label])
    BASE/_versions/v-000001.json  marker: the one atomic step that makes version 1 visible
    BASE/_versions/FINAL.json     the writer's last version: no newer one will come
    BASE/_leases/v-000001.READER  a reader is using version 1; garbage collection keeps it

Readers only list `_versions/`, so a version whose write is running, failed or was killed (a
`v-…` directory without a marker) is never seen. The marker is written after the write has
finished, with the row count and checksum of exactly the rows written, tallied by the writing
tasks themselves. Directory names are never reused: a killed job's executors might still be
writing into its directory.

Who writes the files depends on where the store is. On a local file system (file:, or a local
path under Connect) the stage's Python tasks write their partition's Parquet file with pyarrow
and return their tally: a version of 60,000 × 500 floats then costs about 0.1 s of writing
instead of about 1 s for handing the rows to the JVM and Spark's Parquet writer. A task writes
a hidden temporary file and renames it to its partition's name, so a retried task, which
computes the same rows (seeded generators), replaces it whole. Elsewhere (HDFS, S3, …) Spark
writes, under its commit protocol, and the tasks tally into an accumulator, which Spark merges
once per partition of the write; under Connect without a local path the files are read back.

Readers in the writer's own process (layers in threads of one application) are woken by each
commit (`wait_for_commit`); readers elsewhere see it at their next poll of `_versions/`.

A reader checks a version against its marker when it loads it, in a pass of its own, or, with
`load(..., deferred=True)`, in the first pass its own work makes over the rows (a training
epoch): the data is then read once instead of twice.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.accumulators import Accumulator, AccumulatorParam
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from sparkdbn.columns import unpack_rows
from sparkdbn.data import PACKED_ID, PACKED_LABEL, PACKED_X, PackedData
from sparkdbn.engine.filesystem import HadoopFS, filesystem
from sparkdbn.engine.jobinfo import spark_context
from sparkdbn.staging import Batches, PartWriter, StagedParts, StagedRows, written

VERSIONS_DIR = "_versions"
LEASES_DIR = "_leases"
FINAL_MARKER = "FINAL.json"
_DATA_NAME = re.compile(r"^v-(\d+)$")
_MARKER_NAME = re.compile(r"^v-(\d+)\.json$")
_PART_NAME = re.compile(r"^part-(\d+)\.parquet$")
_READER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Checksum resolution: every value is rounded to a multiple of 2**-20 and the rounded values are
# added as integers, so the sum is exact and independent of partitioning and batch order.
_CHECKSUM_SCALE = 2**20
_CHECKSUM_BLOCK = 1 << 16  # floats per block: 256 KB, within a core's cache
_STATS_SCHEMA = "n long, total long"

Rows = DataFrame | StagedRows  # what a stage runs over: Spark's rows or staged partitions


@dataclass(frozen=True)
class Version:
    """One committed version, as its marker describes it."""

    number: int
    path: str
    n_rows: int
    width: int
    checksum: float
    created_at: float
    meta: dict = field(default_factory=dict, hash=False)
    writer: str = ""
    schema: str = ""  # the rows' Spark schema as JSON, so a read needs no inference job


class CorruptVersionError(OSError):
    """A version's Parquet data no longer matches its marker (row count or checksum)."""


def checksum_terms(X: np.ndarray) -> int:
    """The exact integer sum of X's values rounded to multiples of 1 / _CHECKSUM_SCALE; the
    terms of all rows, added, give the checksum a marker records (`checksum_of`).

    Works through X in blocks of one reused buffer: temporaries the size of X (240 MB for a
    60,000 × 500 version) cost more in fresh pages than the arithmetic."""
    flat = np.ascontiguousarray(X, np.float32).reshape(-1)
    buffer = np.empty(min(flat.size, _CHECKSUM_BLOCK), np.float32)
    total = 0
    for start in range(0, flat.size, _CHECKSUM_BLOCK):
        block = flat[start : start + _CHECKSUM_BLOCK]
        out = buffer[: block.size]
        np.rint(np.multiply(block, np.float32(_CHECKSUM_SCALE), out=out), out=out)
        total += int(out.sum(dtype=np.int64))
    return total


def checksum_of(terms: int) -> float:
    return terms / _CHECKSUM_SCALE


@dataclass(frozen=True)
class PendingCheck:
    """A loaded version's marker figures, to be compared with the first pass over its rows."""

    version: Version

    def verify(self, n_rows: int, checksum: float) -> None:
        """Raise CorruptVersionError unless the rows seen match the marker."""
        v = self.version
        if (n_rows, checksum) != (v.n_rows, v.checksum):
            raise CorruptVersionError(
                f"version {v.number} at {v.path} has {n_rows} rows and checksum {checksum}; "
                f"its marker says {v.n_rows} and {v.checksum}"
            )


def _stats_batches(width: int):
    """Per non-empty partition: its row count and the exact integer sum of its rounded values."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        n, total = 0, 0
        for batch in batches:
            X = unpack_rows(batch.column(PACKED_X), width)
            n += X.shape[0]
            total += checksum_terms(X)
        if n:
            yield pa.RecordBatch.from_pydict(
                {"n": pa.array([n], pa.int64()), "total": pa.array([total], pa.int64())}
            )

    return run


def _stats(df: Rows, width: int) -> tuple[int, float, int]:
    """Rows, checksum and number of non-empty partitions of a packed DataFrame, in one pass."""
    rows = df.select(PACKED_X).mapInArrow(_stats_batches(width), _STATS_SCHEMA).collect()
    n = sum(r["n"] for r in rows)
    checksum = checksum_of(sum(r["total"] for r in rows))
    return n, checksum, len(rows)


class _PairSum(AccumulatorParam):
    """(rows, checksum terms) added element-wise: Python ints, so the sum stays exact."""

    def zero(self, value: tuple[int, int]) -> tuple[int, int]:
        return (0, 0)

    def addInPlace(self, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        return (a[0] + b[0], a[1] + b[1])


def _tallied(batches: Batches, width: int, tally: Accumulator) -> Batches:
    """`batches`, also adding the rows and checksum terms of what it emits to `tally`."""

    def run(source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches(source):
            X = unpack_rows(batch.column(PACKED_X), width)
            tally.add((X.shape[0], checksum_terms(X)))
            yield batch

    return run


class RepresentationStore:
    """Versions of one layer's representation under `base`; one writer, any number of readers.

    `keep` is how many of the newest versions garbage collection leaves (leased ones survive
    too). Readers that use a version for longer than a moment (e.g. train on it) hold a lease.
    `task_writes` says who writes the files (see the module's docstring): None lets the
    store's location decide; True needs a local file system; False always uses Spark's writer.
    """

    def __init__(
        self, spark: SparkSession, base: str, keep: int = 3, task_writes: bool | None = None
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.spark = spark
        self.base = str(base).rstrip("/")
        self.keep = keep
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._fs = filesystem(spark, self.base)
        local = self._fs.local_path(self.base) is not None
        if task_writes and not local:
            raise ValueError(f"task_writes needs a store on a local file system, not {base!r}")
        self.task_writes = local if task_writes is None else task_writes
        self._commits = 0  # markers (versions and FINAL) this object has written
        self._committed = threading.Condition()

    def __repr__(self) -> str:
        return f"RepresentationStore({self.base!r}, keep={self.keep})"

    @property
    def on_local_disk(self) -> bool:
        """Whether the versions sit on the local file system of a classic Spark application,
        where reading uncompressed Parquet again costs no more than Spark's cache (measured on
        one core: 3.5-3.6 s epochs either way, while filling the cache added about 1 s)."""
        return isinstance(self._fs, HadoopFS) and self._fs.is_local

    # -- paths ---------------------------------------------------------------------------------

    def _data_path(self, number: int) -> str:
        return f"{self.base}/v-{number:06d}"

    def _marker_path(self, number: int) -> str:
        return f"{self.base}/{VERSIONS_DIR}/v-{number:06d}.json"

    def _final_path(self) -> str:
        return f"{self.base}/{VERSIONS_DIR}/{FINAL_MARKER}"

    def _lease_path(self, number: int, reader: str) -> str:
        return f"{self.base}/{LEASES_DIR}/v-{number:06d}.{reader}"

    def _numbers(self, directory: str, pattern: re.Pattern) -> list[int]:
        names = self._fs.list(directory)
        return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)

    def _committed_numbers(self) -> list[int]:
        return self._numbers(f"{self.base}/{VERSIONS_DIR}", _MARKER_NAME)

    def _leased_numbers(self) -> set[int]:
        names = self._fs.list(f"{self.base}/{LEASES_DIR}")
        return {int(m.group(1)) for m in (re.match(r"^v-(\d+)\.", n) for n in names) if m}

    def _read_version(self, number: int) -> Version:
        record = json.loads(self._fs.read_bytes(self._marker_path(number)))
        return Version(
            number=record["version"],
            path=self._data_path(record["version"]),
            n_rows=record["n_rows"],
            width=record["width"],
            checksum=record["checksum"],
            created_at=record["created_at"],
            meta=record["meta"],
            writer=record["writer"],
            schema=record.get("schema", ""),
        )

    # -- writer --------------------------------------------------------------------------------

    def publish(
        self,
        df: Rows,
        width: int,
        meta: dict | None = None,
        batches: Batches | None = None,
        compression: str = "snappy",
        before_commit: Callable[[], None] | None = None,
    ) -> Version:
        """Write `df` (id, x[, label]) as the next version, then commit it with its marker.

        `batches`, a mapInArrow function from `df`'s rows to rows of the same schema (such as
        a layer's transform), runs in the writing tasks, which then tally what they write: no
        read-back pass, except for Spark's writer under Connect. `compression` is Parquet's
        codec ("none" suits float probabilities, which do not compress). `before_commit` runs
        between the write and the marker; if it raises, the version is never committed. Numbering
        continues after every marker and every leftover directory (a restarted writer never
        reuses a name), and both writers refuse an existing directory.
        """
        fields = {f.name: f.dataType for f in df.schema.fields}
        if PACKED_ID not in fields or not isinstance(fields.get(PACKED_X), T.BinaryType):
            raise ValueError(
                f"publish needs columns {PACKED_ID!r} and binary {PACKED_X!r}; got {df.schema}"
            )
        meta = dict(meta or {})
        json.dumps(meta)  # fail before the expensive write, not after it
        used = self._committed_numbers() + self._numbers(self.base, _DATA_NAME)
        number = max(used, default=0) + 1
        path = self._data_path(number)
        columns = [c for c in (PACKED_ID, PACKED_X, PACKED_LABEL) if c in fields]
        df = df.select(*columns)
        if self.task_writes:
            n_rows, checksum = self._write_in_tasks(df, path, width, batches, compression)
        else:
            n_rows, checksum = self._write_with_spark(df, path, width, batches, compression)
        if before_commit is not None:
            before_commit()
        record = {
            "version": number,
            "n_rows": n_rows,
            "width": width,
            "checksum": checksum,
            "created_at": time.time(),
            "writer": self.writer,
            "meta": meta,
            "schema": df.schema.json(),
        }
        self._fs.write_bytes(self._marker_path(number), json.dumps(record).encode())
        self._notify_commit()
        return self._read_version(number)

    def _write_in_tasks(
        self, df: Rows, path: str, width: int, batches: Batches | None, compression: str
    ) -> tuple[int, float]:
        """Each task writes its partition's file with pyarrow and returns its tally."""
        directory = self._fs.local_path(path)
        os.makedirs(directory)
        new_writer = partial(PartWriter, directory, to_arrow_schema(df.schema), compression)
        writing = written(batches or (lambda source: source), new_writer, _stats_batches(width))
        rows = df.mapInArrow(writing, _STATS_SCHEMA).collect()
        return sum(r["n"] for r in rows), checksum_of(sum(r["total"] for r in rows))

    def _write_with_spark(
        self, df: Rows, path: str, width: int, batches: Batches | None, compression: str
    ) -> tuple[int, float]:
        """Spark writes; the tasks tally into an accumulator (read back without one)."""
        sc = spark_context(self.spark)
        tally = None if batches is None or sc is None else sc.accumulator((0, 0), _PairSum())
        if tally is not None:
            batches = _tallied(batches, width, tally)
        if batches is not None:
            df = df.mapInArrow(batches, df.schema)
        elif isinstance(df, StagedRows):
            df = df.frame()
        # "error", not its alias "errorifexists", which the Spark Connect client rejects
        df.write.mode("error").option("compression", compression).parquet(path)
        if tally is None:
            n_rows, checksum, _ = _stats(self.spark.read.parquet(path), width)
            return n_rows, checksum
        return tally.value[0], checksum_of(tally.value[1])

    def mark_final(self, version: Version) -> None:
        """Tell readers that `version` is the last one this writer will publish."""
        if not self._fs.exists(self._marker_path(version.number)):
            raise FileNotFoundError(f"version {version.number} is not committed in {self.base}")
        record = {"version": version.number, "created_at": time.time(), "writer": self.writer}
        self._fs.write_bytes(self._final_path(), json.dumps(record).encode())
        self._notify_commit()

    def _notify_commit(self) -> None:
        with self._committed:
            self._commits += 1
            self._committed.notify_all()

    @property
    def commits(self) -> int:
        """How many markers this store object has written: `wait_for_commit`'s reference."""
        return self._commits

    def wait_for_commit(self, seen: int, timeout: float) -> bool:
        """Block until this store object writes a marker after the `seen`-th (`commits` read
        before looking at the versions), or `timeout` passes; True if it did. Commits by other
        processes do not wake it: a reader polls for those."""
        with self._committed:
            return self._committed.wait_for(lambda: self._commits != seen, timeout)

    def collect_garbage(self) -> list[int]:
        """Delete versions older than the newest `keep` unless leased or final; return them.

        Each marker goes first, so new readers stop seeing the version at once; a lease taken
        in the meantime (see `acquire`) puts the marker back. Leftover uncommitted directories
        older than the newest committed version (killed or failed writes) go too.
        """
        committed = self._committed_numbers()
        if not committed:
            return []
        final = self.final()
        protected = self._leased_numbers() | ({final.number} if final else set())
        deleted = []
        for number in committed[: -self.keep]:
            if number in protected:
                continue
            marker = self._marker_path(number)
            saved = self._fs.read_bytes(marker)
            self._fs.delete(marker)
            if number in self._leased_numbers():
                self._fs.write_bytes(marker, saved)
                continue
            self._fs.delete(self._data_path(number), recursive=True)
            deleted.append(number)
        still = set(self._committed_numbers())
        for number in self._numbers(self.base, _DATA_NAME):
            if number < committed[-1] and number not in still:
                self._fs.delete(self._data_path(number), recursive=True)
                deleted.append(number)
        return sorted(set(deleted))

    # -- readers -------------------------------------------------------------------------------

    def versions(self) -> list[Version]:
        """Committed versions, oldest first (a version collected while listing is skipped)."""
        found = []
        for number in self._committed_numbers():
            try:
                found.append(self._read_version(number))
            except FileNotFoundError:
                continue
        return found

    def latest(self) -> Version | None:
        """The newest committed version, or None before the first commit."""
        for number in reversed(self._committed_numbers()):
            try:
                return self._read_version(number)
            except FileNotFoundError:
                continue
        return None

    def final(self) -> Version | None:
        """The version the writer marked final, or None while newer versions may still come."""
        try:
            record = json.loads(self._fs.read_bytes(self._final_path()))
        except FileNotFoundError:
            return None
        return self._read_version(record["version"])

    def wait_for(
        self, newer_than: int = 0, timeout: float | None = None, poll: float = 0.2
    ) -> Version:
        """Block until a version numbered above `newer_than` is committed, and return it;
        woken at once by a commit of this store object, else at the next poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = self._commits
            version = self.latest()
            if version is not None and version.number > newer_than:
                return version
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no version newer than {newer_than} was committed in {self.base} "
                    f"within {timeout} s"
                )
            left = poll if deadline is None else deadline - time.monotonic()
            self.wait_for_commit(seen, max(0.0, min(poll, left)))

    def read(self, version: Version) -> DataFrame:
        """The version's rows (id, x[, label]); lazily read, so hold a lease while using it.

        The marker's schema spares Spark its schema inference, which reads a footer in a job
        of its own: behind another layer's running tasks, that job waited seconds for a slot.
        """
        reader = self.spark.read
        if version.schema:
            reader = reader.schema(T.StructType.fromJson(json.loads(version.schema)))
        return reader.parquet(version.path)

    def load(
        self,
        version: Version,
        partitions: int | None = None,
        deferred: bool = False,
        cache: bool = True,
    ) -> PackedData:
        """The version as training data, checked against its marker on the way in.

        With `partitions`, rows are hashed by id and sorted inside each partition, as
        `data.prepare` does, so a reload partitions them the same way. With `deferred` (and a
        SparkContext, to count partitions without a pass), nothing is read yet: the data
        carries a `PendingCheck` that its first pass must settle. With `cache`, the rows are
        kept in Spark's cache (filled by the first pass); without, every pass reads the files,
        and where this store's tasks wrote them, the reading tasks map their partition's file
        themselves (`sparkdbn.staging`, one partition per file).
        """
        staged = None if cache or partitions is not None else self._staged(version)
        if staged is not None:
            if not deferred:
                n_rows, checksum, _ = _stats(staged.rows(self.spark), version.width)
                PendingCheck(version).verify(n_rows, checksum)
            return PackedData(
                staged.rows(self.spark).frame(), version.width, version.n_rows,
                staged.partitions, PACKED_LABEL in staged.struct.names,
                check=PendingCheck(version) if deferred else None, parts=staged,
            )
        df = self.read(version)
        if partitions is not None:
            df = df.repartition(partitions, PACKED_ID).sortWithinPartitions(PACKED_ID)
        if cache:
            df = df.persist(StorageLevel.MEMORY_AND_DISK)
        has_label = PACKED_LABEL in df.columns
        sc = spark_context(self.spark)
        if deferred and sc is not None:
            # An upper bound on the non-empty partitions, which is all averaging needs.
            parts = df.rdd.getNumPartitions()
            check = PendingCheck(version)
            return PackedData(df, version.width, version.n_rows, parts, has_label, check=check)
        n_rows, checksum, parts = _stats(df, version.width)
        try:
            PendingCheck(version).verify(n_rows, checksum)
        except CorruptVersionError:
            df.unpersist()
            raise
        return PackedData(df, version.width, n_rows, parts, has_label)

    def _staged(self, version: Version) -> StagedParts | None:
        """The version's files as staged partitions, when its tasks wrote them here: one
        `part-NNNNN.parquet` per partition, which the reading tasks map themselves."""
        if not self.task_writes or not version.schema:
            return None
        names = self._fs.list(version.path)
        found = [int(m.group(1)) for m in map(_PART_NAME.match, names) if m]
        if not found or len(found) != sum(not n.startswith((".", "_")) for n in names):
            return None
        directory = self._fs.local_path(version.path)
        return StagedParts(
            directory, max(found) + 1, version.schema, owned=False, suffix=".parquet"
        )

    def verify(self, version: Version) -> bool:
        """Whether the version's Parquet data still has the marker's row count and checksum."""
        n_rows, checksum, _ = _stats(self.read(version), version.width)
        return (n_rows, checksum) == (version.n_rows, version.checksum)

    def acquire(self, version: Version, reader: str) -> None:
        """Lease `version` for `reader` so garbage collection keeps it until `release`.

        The lease is written before the marker is checked again; with the collector's
        marker-first order, either it sees the lease or this sees the version gone.
        """
        if not _READER_NAME.match(reader):
            raise ValueError(f"reader name {reader!r} may only use letters, digits, '_.-'")
        lease = self._lease_path(version.number, reader)
        record = {"reader": reader, "created_at": time.time(), "host": socket.gethostname()}
        self._fs.write_bytes(lease, json.dumps(record).encode())
        if not self._fs.exists(self._marker_path(version.number)):
            self._fs.delete(lease)
            raise FileNotFoundError(
                f"version {version.number} of {self.base} was garbage-collected; read a newer one"
            )

    def release(self, version: Version, reader: str) -> None:
        """Drop `reader`'s lease on `version` (no error if it holds none)."""
        self._fs.delete(self._lease_path(version.number, reader))
