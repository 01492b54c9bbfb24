"""RepresentationStore on real Spark and real Parquet: commits, concurrent and killed writers,
waiting, leases and garbage collection, integrity checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality

from sparkdbn.engine.filesystem import HadoopFS, LocalFS, filesystem
from sparkdbn.engine.store import CorruptVersionError, RepresentationStore

REPO = Path(__file__).resolve().parents[2]
N, W = 40, 6
BASE_X = np.random.default_rng(7).random((N, W), dtype=np.float32)

# A writer in its own process and Spark application: publishes version 1, then starts version 2
# with a write that never finishes, so the test can kill it mid-write.
KILLED_WRITER = """
import sys, time
import numpy as np
from pyspark.sql import SparkSession
from sparkdbn.engine.store import RepresentationStore

spark = (
    SparkSession.builder.master("local[1]").appName("store-killed-writer")
    .config("spark.ui.enabled", "false").config("spark.driver.memory", "512m")
    # A short-lived JVM: quick JIT and a simple GC start it several seconds sooner.
    .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    .getOrCreate()
)
store = RepresentationStore(spark, sys.argv[1])
running = sys.argv[2]  # created by the slow task once it runs
rows = [(i, np.full(2, i, np.float32).tobytes()) for i in range(10)]
df = spark.createDataFrame(rows, "id long, x binary").coalesce(1)
store.publish(df, 2, {"k": 1})

def slow(batches):
    open(running, "w").close()
    for batch in batches:
        time.sleep(600)
        yield batch

store.publish(df.mapInArrow(slow, df.schema), 2, {"k": 2})
"""

# A writer under local[2,4] (Spark retries a task up to 4 times) whose transform, in
# partition 1's first attempt, emits one batch and then fails: the tally must count only the
# attempt that succeeded, whether the tasks write their files (and return their tally) or
# Spark writes them (and the tasks feed an accumulator). Prints markers, read-backs and files.
RETRIED_WRITER = """
import json, os, sys
import numpy as np
import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import SparkSession
from sparkdbn.engine.store import RepresentationStore

spark = (
    SparkSession.builder.master("local[2,4]").appName("store-retried-writer")
    .config("spark.ui.enabled", "false").config("spark.driver.memory", "512m")
    .config("spark.sql.execution.arrow.maxRecordsPerBatch", "5")
    .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    .getOrCreate()
)
X = np.arange(40 * 3, dtype=np.float32).reshape(40, 3) / 7
df = spark.createDataFrame([(i, X[i].tobytes()) for i in range(40)], "id long, x binary")

def doubled_failing_once(batches):
    context = TaskContext.get()
    for i, batch in enumerate(batches):
        if i == 1 and context.partitionId() == 1 and context.attemptNumber() == 0:
            raise RuntimeError("injected fault: partition 1, first attempt")
        x = np.frombuffer(batch.column("x").buffers()[2], np.float32) * 2
        n = len(batch)
        offsets = pa.py_buffer(np.arange(0, (n + 1) * 12, 12, dtype=np.int32))
        column = pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(x)])
        yield pa.RecordBatch.from_arrays([batch.column("id"), column], names=["id", "x"])

out = {}
for task_writes in (True, False):
    store = RepresentationStore(spark, f"{sys.argv[1]}/{task_writes}", task_writes=task_writes)
    v = store.publish(df.repartition(2), 3, batches=doubled_failing_once)
    back = spark.read.parquet(v.path).collect()
    out[str(task_writes)] = {
        "n_rows": v.n_rows, "checksum": v.checksum, "verified": store.verify(v),
        "sum": float(sum(np.frombuffer(r["x"], np.float32).sum() for r in back)),
        "files": sorted(os.listdir(v.path)),
    }
print(json.dumps(out))
"""


def frame(spark, k: float, label: bool = True):
    """BASE_X scaled by k, packed, with ids and labels, in two partitions."""
    X = BASE_X * np.float32(k)
    rows = [(i, X[i].tobytes(), i % 3) for i in range(N)]
    df = spark.createDataFrame(rows, "id long, x binary, label long").repartition(2)
    return df if label else df.drop("label")


def unpack_sorted(df) -> np.ndarray:
    rows = df.orderBy("id").select("x").collect()
    return np.stack([np.frombuffer(r["x"], np.float32) for r in rows])


@pytest.fixture
def base(tmp_path: Path) -> Path:
    # Hidden parent, like training's default store beside the output.
    return tmp_path / ".out.store" / "layer_0"


@pytest.mark.parametrize("task_writes", [True, False])
def test_publish_latest_versions_read_and_load(spark, base, task_writes):
    store = RepresentationStore(spark, str(base), task_writes=task_writes)
    assert store.latest() is None and store.versions() == []
    published = [store.publish(frame(spark, k), W, {"k": k}) for k in (1, 2, 3)]

    assert [v.number for v in published] == [1, 2, 3]
    assert store.versions() == published
    assert store.latest() == published[2]
    v2 = published[1]
    assert (v2.n_rows, v2.width, v2.meta, v2.writer) == (N, W, {"k": 2}, store.writer)
    assert v2.path == f"{base}/v-000002"
    assert v2.checksum == pytest.approx(float((BASE_X * 2).sum(dtype=np.float64)), abs=1e-3)
    assert len({v.checksum for v in published}) == 3

    got = store.read(v2)
    assert_df_equality(
        got.select("id", "label"),
        frame(spark, 2).select("id", "label"),
        ignore_row_order=True,
    )
    assert np.array_equal(unpack_sorted(got), BASE_X * np.float32(2))

    data = store.load(published[2], partitions=3)
    try:
        assert (data.n_rows, data.width, data.has_label) == (N, W, True)
        assert 1 <= data.partitions <= 3
        assert np.array_equal(unpack_sorted(data.df), BASE_X * np.float32(3))
    finally:
        data.unpersist()


@pytest.mark.parametrize("task_writes", [True, False])
def test_publish_tallies_what_its_tasks_write(spark, base, task_writes):
    """A transform given to publish runs in the writing tasks, which count and checksum what
    they write: the marker equals a read-back of the files. `compression` reaches Parquet."""
    store = RepresentationStore(spark, str(base), task_writes=task_writes)

    def tripled(batches):
        for batch in batches:
            x = np.frombuffer(batch.column("x").buffers()[2], np.float32) * np.float32(3)
            column = pa.BinaryArray.from_buffers(
                pa.binary(), len(batch), [None, batch.column("x").buffers()[1], pa.py_buffer(x)]
            )
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), column, batch.column("label")], names=["id", "x", "label"]
            )

    v1 = store.publish(frame(spark, 1), W, batches=tripled, compression="none")
    assert (v1.n_rows, v1.width) == (N, W)
    assert v1.checksum == pytest.approx(float((BASE_X * 3).sum(dtype=np.float64)), abs=1e-3)
    assert store.verify(v1)
    assert np.array_equal(unpack_sorted(store.read(v1)), BASE_X * np.float32(3))
    parts = sorted(Path(v1.path).glob("*.parquet"))
    assert parts and {
        pq.ParquetFile(part).metadata.row_group(0).column(1).compression for part in parts
    } == {"UNCOMPRESSED"}
    with pytest.raises(Exception, match="not 7 float32 values wide"):
        store.publish(frame(spark, 1), W + 1, batches=tripled)


def test_both_writers_write_the_same_version(spark, base):
    """Files written by the tasks read back as the same rows, schema and marker as Spark's."""
    by_tasks = RepresentationStore(spark, str(base / "tasks"), task_writes=True)
    by_spark = RepresentationStore(spark, str(base / "spark"), task_writes=False)
    assert by_tasks.task_writes and not by_spark.task_writes
    a, b = (store.publish(frame(spark, 2), W, {"k": 2}) for store in (by_tasks, by_spark))
    assert (a.n_rows, a.checksum, a.schema, a.meta) == (b.n_rows, b.checksum, b.schema, b.meta)
    assert_df_equality(by_tasks.read(a), by_spark.read(b), ignore_row_order=True)
    inferred = spark.read.parquet(a.path)
    assert inferred.schema == spark.read.parquet(b.path).schema


def test_retried_tasks_are_tallied_once(tmp_path):
    """A writing task that fails after emitting rows is retried; its lost attempt leaves no
    trace in the marker or the files, which match exactly (40 rows, every value doubled),
    with either writer."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYSPARK_PYTHON=sys.executable)
    result = subprocess.run(
        [sys.executable, "-c", RETRIED_WRITER, str(tmp_path / "store")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "injected fault: partition 1, first attempt" in result.stderr
    written = json.loads(result.stdout.strip().splitlines()[-1])
    expected = float((np.arange(120, dtype=np.float32) / np.float32(7) * 2).sum(dtype=np.float64))
    for got in written.values():
        assert got["n_rows"] == 40 and got["verified"] is True
        assert got["checksum"] == pytest.approx(expected, abs=1e-3)
        assert got["sum"] == pytest.approx(expected, rel=1e-6)
    # The failed attempt removed its temporary file; the retry wrote the partition's file.
    assert written["True"]["files"] == ["part-00000.parquet", "part-00001.parquet"]
    assert "_SUCCESS" in written["False"]["files"]


def test_local_file_system_without_jvm_helpers(spark, tmp_path):
    """The pure-Python file system (used under Spark Connect) runs the same protocol."""
    store = RepresentationStore(spark, (tmp_path / "store").as_uri())
    store._fs = LocalFS()
    v1 = store.publish(frame(spark, 1, label=False), W)
    assert store.latest() == v1 and v1.path.startswith("file:")
    assert store.verify(v1)
    store.acquire(v1, "reader")
    assert store.collect_garbage() == []
    store.release(v1, "reader")
    data = store.load(v1)
    try:
        assert (data.n_rows, data.has_label) == (N, False)
    finally:
        data.unpersist()


@pytest.mark.parametrize("kind", ["local", "hadoop"])
def test_file_system_operations(spark, tmp_path, kind):
    fs = LocalFS() if kind == "local" else HadoopFS(spark, str(tmp_path))
    d = f"{tmp_path}/a"
    assert fs.list(d) == [] and not fs.exists(d)
    fs.write_bytes(f"{d}/b/c", b"")  # creates parents
    fs.write_bytes(f"{d}/f.json", b"one")
    fs.write_bytes(f"{d}/f.json", b"two")  # replaces
    assert fs.read_bytes(f"{d}/f.json") == b"two"
    assert sorted(n for n in fs.list(d) if not n.endswith(".crc")) == ["b", "f.json"]
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(f"{d}/missing")
    fs.delete(f"{d}/f.json")
    fs.delete(f"{d}/f.json")  # already gone: no error
    fs.delete(d, recursive=True)
    assert not fs.exists(d)


def test_filesystem_choice(spark, tmp_path):
    assert isinstance(filesystem(spark, str(tmp_path)), HadoopFS)
    connect_like = object()  # no SparkContext, like a Spark Connect session
    assert isinstance(filesystem(connect_like, str(tmp_path)), LocalFS)
    assert isinstance(filesystem(connect_like, tmp_path.as_uri()), LocalFS)
    with pytest.raises(ValueError, match="s3a://bucket/x"):
        filesystem(connect_like, "s3a://bucket/x")


@pytest.mark.parametrize("task_writes", [True, False])
def test_failed_publish_commits_nothing(spark, base, task_writes):
    store = RepresentationStore(spark, str(base), task_writes=task_writes)
    with pytest.raises(ValueError, match="binary 'x'"):
        store.publish(spark.range(3), W)
    assert store.versions() == [] and not base.exists()
    with pytest.raises(Exception, match="float32 values wide"):  # checked on the written files
        store.publish(frame(spark, 1), W + 1)
    assert store.latest() is None and (base / "v-000001").is_dir()
    assert store.publish(frame(spark, 1), W).number == 2  # the failed directory is not reused


def test_concurrent_writer_never_shows_partial_or_mixed_version(spark, base):
    store = RepresentationStore(spark, str(base), keep=2)
    total = 8
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for k in range(1, total + 1):
                store.publish(frame(spark, k), W, {"k": k})
                store.collect_garbage()
        except BaseException as err:  # surfaced by the main thread
            errors.append(err)

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while (not seen or seen[-1] < total) and not errors and time.monotonic() < deadline:
        version = store.latest()
        if version is None or (seen and version.number == seen[-1]):
            time.sleep(0.05)
            continue
        try:
            store.acquire(version, "reader")
        except FileNotFoundError:  # collected between latest() and acquire(): take a newer one
            continue
        try:
            df = store.read(version)
            assert df.count() == N
            assert np.array_equal(unpack_sorted(df), BASE_X * np.float32(version.meta["k"]))
            assert store.verify(version)
        finally:
            store.release(version, "reader")
        seen.append(version.number)
    writer.join()
    assert not errors, errors
    assert seen[-1] == total and len(seen) >= 2, seen
    # A version the reader still leased during the writer's last collection survives it; the
    # next collection (the writer's next publish) removes it.
    store.collect_garbage()
    assert [v.number for v in store.versions()] == [total - 1, total]


def test_killed_writer_leaves_no_visible_version(spark, base, tmp_path):
    log, running = tmp_path / "writer.log", tmp_path / "slow-task-running"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYSPARK_PYTHON=sys.executable)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(base), str(running)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: the JVM dies with it
        )
    try:
        deadline = time.monotonic() + 150
        while not running.exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "writer never started version 2's task"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    store = RepresentationStore(spark, str(base))
    (v1,) = store.versions()
    assert store.latest() == v1 and v1.number == 1 and v1.writer != store.writer
    assert (base / "v-000002").is_dir()
    assert not list((base / "v-000002").glob("part-*"))  # the write never finished a file
    assert store.verify(v1)

    v3 = store.publish(frame(spark, 3), W, {"k": 3})
    assert v3.number == 3 and store.latest() == v3
    assert store.collect_garbage() == [2]  # the leftover directory, below a committed version
    assert not (base / "v-000002").exists()
    assert [v.number for v in store.versions()] == [1, 3]


def test_wait_for_returns_new_version_or_times_out(spark, base):
    store = RepresentationStore(spark, str(base))
    with pytest.raises(TimeoutError, match=rf"newer than 0 .*{base}"):
        store.wait_for(timeout=0.3, poll=0.05)

    publisher = threading.Timer(0.5, lambda: store.publish(frame(spark, 1), W))
    publisher.start()
    version = store.wait_for(newer_than=0, timeout=60, poll=0.05)
    publisher.join()
    assert version.number == 1 and version == store.latest()
    with pytest.raises(TimeoutError, match="newer than 1"):
        store.wait_for(newer_than=1, timeout=0.2)


def test_commits_wake_readers_of_the_same_store(spark, base):
    """A version's marker and the final marker each wake a waiting reader at once (a broken
    wake-up shows as False after the long timeout); another store object on the same path,
    like another application's, is not woken and sees the commits when it looks."""
    store = RepresentationStore(spark, str(base))
    assert not store.wait_for_commit(store.commits, 0.05)
    woken: list[bool] = []

    def waiting(seen: int) -> threading.Thread:
        waiter = threading.Thread(target=lambda: woken.append(store.wait_for_commit(seen, 120)))
        waiter.start()
        return waiter

    waiter = waiting(store.commits)
    v1 = store.publish(frame(spark, 1), W)
    waiter.join(120)
    waiter = waiting(store.commits)
    store.mark_final(v1)
    waiter.join(120)
    assert woken == [True, True]
    other = RepresentationStore(spark, str(base))
    assert not other.wait_for_commit(other.commits, 0.05)
    assert other.latest() == v1 and other.final() == v1


def test_garbage_collection_keeps_newest_and_leased_versions(spark, base):
    store = RepresentationStore(spark, str(base), keep=2)
    v1, *_ = [store.publish(frame(spark, k), W) for k in (1, 2, 3, 4)]
    store.acquire(v1, "layer1")
    assert store.collect_garbage() == [2]
    assert [v.number for v in store.versions()] == [1, 3, 4]
    assert not (base / "v-000002").exists()
    assert store.verify(v1)  # leased data is intact

    store.release(v1, "layer1")
    assert store.collect_garbage() == [1]
    assert [v.number for v in store.versions()] == [3, 4]
    with pytest.raises(FileNotFoundError, match="garbage-collected"):
        store.acquire(v1, "late")
    assert not any((base / "_leases").iterdir())
    with pytest.raises(ValueError, match="reader name"):
        store.acquire(store.latest(), "a/b")


def test_final_marks_last_version_and_survives_gc(spark, base):
    store = RepresentationStore(spark, str(base), keep=1)
    v1 = store.publish(frame(spark, 1), W)
    assert store.final() is None
    store.mark_final(v1)
    assert store.final() == v1
    v2 = store.publish(frame(spark, 2), W)  # e.g. a restarted writer that goes on
    assert store.collect_garbage() == []  # the final version stays
    store.mark_final(v2)
    assert store.final() == v2
    assert store.collect_garbage() == [1]


def test_changed_data_fails_verification(spark, base):
    store = RepresentationStore(spark, str(base))
    v1 = store.publish(frame(spark, 1), W)
    frame(spark, 1.5).write.mode("overwrite").parquet(v1.path)
    assert not store.verify(v1)
    with pytest.raises(CorruptVersionError, match="version 1"):
        store.load(v1)


def test_before_commit_runs_after_the_write_and_can_refuse_the_version(spark, base):
    """The hook sees the written files before the marker exists; raising keeps the version
    invisible (its directory is a leftover for garbage collection), and numbering goes on."""
    store = RepresentationStore(spark, str(base))
    seen = []

    def refuse() -> None:
        seen.append((Path(base, "v-000001").is_dir(), store.latest()))
        raise RuntimeError("epoch diverged")

    with pytest.raises(RuntimeError, match="epoch diverged"):
        store.publish(frame(spark, 1), W, before_commit=refuse)
    assert seen == [(True, None)] and store.versions() == []
    v2 = store.publish(frame(spark, 2), W, before_commit=lambda: seen.append("ok"))
    assert v2.number == 2 and seen[-1] == "ok" and store.latest() == v2
    assert store.collect_garbage() == [1]


@pytest.mark.parametrize("label", [True, False])
def test_marker_schema_reads_like_inference(spark, base, label):
    """The marker records the rows' schema; reading with it gives what inference gives."""
    store = RepresentationStore(spark, str(base))
    v1 = store.publish(frame(spark, 1, label=label), W)
    assert json.loads(v1.schema)["fields"][0]["name"] == "id"
    inferred = spark.read.parquet(v1.path)
    assert_df_equality(store.read(v1), inferred, ignore_row_order=True)
    assert store.read(v1).columns == (["id", "x", "label"] if label else ["id", "x"])


def test_deferred_load_owes_a_check_that_a_first_pass_settles(spark, base):
    """load(deferred=True) reads nothing: the data carries the marker's figures, and the
    check passes for the real rows and fails, naming the version, for changed ones."""
    from sparkdbn.engine.store import checksum_of, checksum_terms

    store = RepresentationStore(spark, str(base))
    v1 = store.publish(frame(spark, 1), W)
    data = store.load(v1, deferred=True)
    try:
        assert data.check is not None and (data.n_rows, data.width) == (N, W)
        assert data.partitions >= 1
        X = unpack_sorted(data.df)
        data.check.verify(len(X), checksum_of(checksum_terms(X)))
        with pytest.raises(CorruptVersionError, match=r"version 1 .* has 39 rows"):
            data.check.verify(len(X) - 1, checksum_of(checksum_terms(X[1:])))
        changed = X * np.float32(1.5)
        with pytest.raises(CorruptVersionError, match="its marker says 40"):
            data.check.verify(len(X), checksum_of(checksum_terms(changed)))
    finally:
        data.unpersist()
    immediate = store.load(v1)  # checked in a pass of its own
    assert immediate.check is None
    immediate.unpersist()


def test_load_without_cache_rereads_the_files(spark, base):
    """A store on local disk says so; load(cache=False) leaves Spark's cache alone and every
    pass reads the version's files, which give the same rows as a cached load."""
    store = RepresentationStore(spark, str(base))
    assert store.on_local_disk
    v1 = store.publish(frame(spark, 1), W)
    cached, direct = store.load(v1, deferred=True), store.load(v1, deferred=True, cache=False)
    try:
        assert cached.df.is_cached and not direct.df.is_cached
        assert_df_equality(direct.df, cached.df, ignore_row_order=True)
        assert np.array_equal(unpack_sorted(direct.df), BASE_X)
    finally:
        cached.unpersist()
