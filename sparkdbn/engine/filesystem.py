"""Small file operations (list, atomic write, read, rename, delete) on any path Spark can use.

The representation store and the saved ml models need a few files beside what Spark writes:
markers, leases, JSON and npz. Hadoop's FileSystem serves them wherever the cluster reads and
writes (HDFS, S3A, ABFS, DBFS…); under Spark Connect there is no JVM on the client, so local
paths are served by plain Python instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from urllib.parse import urlparse

from pyspark.sql import SparkSession

from sparkdbn.engine.jobinfo import spark_context
from sparkdbn.errors import InputError


class LocalFS:
    """Plain-Python file system for local paths and file: URIs (works without a JVM)."""

    @staticmethod
    def _os(path: str) -> str:
        return urlparse(path).path if path.startswith("file:") else path

    def local_path(self, path: str) -> str:
        """`path` as an operating-system path."""
        return self._os(path)

    def list(self, path: str) -> list[str]:
        try:
            return os.listdir(self._os(path))
        except FileNotFoundError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(self._os(path))

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a temporary sibling, then rename it over `path` (atomic on POSIX)."""
        target = self._os(path)
        parent, name = os.path.split(target)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def read_bytes(self, path: str) -> bytes:
        with open(self._os(path), "rb") as f:
            return f.read()

    def rename(self, source: str, target: str) -> None:
        """Move a file or directory to a `target` that does not exist (one rename)."""
        os.rename(self._os(source), self._os(target))

    def delete(self, path: str, recursive: bool = False) -> None:
        target = self._os(path)
        if recursive and os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(target)


class HadoopFS:
    """Hadoop FileSystem through py4j: HDFS, S3A, ABFS, DBFS… whatever the cluster can read."""

    def __init__(self, spark: SparkSession, base: str) -> None:
        self._jvm = spark._jvm
        self._fs = self._path(base).getFileSystem(spark._jsc.hadoopConfiguration())

    def _path(self, path: str):
        return self._jvm.org.apache.hadoop.fs.Path(path)

    @property
    def is_local(self) -> bool:
        """Whether the paths are on this machine's own file system (file:)."""
        return self._fs.getUri().getScheme() == "file"

    def local_path(self, path: str) -> str | None:
        """`path` as an operating-system path, or None off the local file system."""
        if not self.is_local:
            return None
        return str(self._fs.makeQualified(self._path(path)).toUri().getPath())

    def list(self, path: str) -> list[str]:
        p = self._path(path)
        if not self._fs.exists(p):
            return []
        return [status.getPath().getName() for status in self._fs.listStatus(p)]

    def exists(self, path: str) -> bool:
        return bool(self._fs.exists(self._path(path)))

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a temporary sibling, then rename it to `path` (replacing an existing file).

        On object stores the rename is a copy of one small file, which is still all-or-nothing.
        """
        target = self._path(path)
        name = f".{target.getName()}.tmp-{uuid.uuid4().hex[:8]}"
        tmp = self._path(f"{target.getParent().toString()}/{name}")
        out = self._fs.create(tmp, False)
        try:
            out.write(bytearray(data))
        finally:
            out.close()
        if not self._fs.rename(tmp, target):
            self._fs.delete(target, False)
            if not self._fs.rename(tmp, target):
                self._fs.delete(tmp, False)
                raise OSError(f"cannot rename {tmp.toString()} to {path}")

    def read_bytes(self, path: str) -> bytes:
        from py4j.protocol import Py4JJavaError

        try:
            stream = self._fs.open(self._path(path))
        except Py4JJavaError as err:
            missing = self._jvm.java.lang.Class.forName("java.io.FileNotFoundException")
            if missing.isInstance(err.java_exception):
                raise FileNotFoundError(path) from None
            raise
        try:
            return bytes(stream.readAllBytes())
        finally:
            stream.close()

    def rename(self, source: str, target: str) -> None:
        """Move a file or directory to a `target` that does not exist (on HDFS one atomic
        rename; object stores copy, as their committers do)."""
        if not self._fs.rename(self._path(source), self._path(target)):
            raise OSError(f"cannot rename {source} to {target}")

    def delete(self, path: str, recursive: bool = False) -> None:
        self._fs.delete(self._path(path), recursive)


def filesystem(spark: SparkSession, base: str) -> LocalFS | HadoopFS:
    """Hadoop where a JVM is at hand (it also resolves scheme-less paths against fs.defaultFS);
    plain Python for local paths under Spark Connect, which has no JVM on the client."""
    if spark_context(spark) is not None:
        return HadoopFS(spark, base)
    if urlparse(base).scheme in ("", "file"):
        return LocalFS()
    raise ValueError(
        f"{base!r}: without a SparkContext (Spark Connect) only local "
        "paths and file: URIs are supported; use a path the client and the cluster share, "
        "such as /Volumes/… on Databricks"
    )


def check_shared(spark: SparkSession, base: str) -> None:
    """Under Spark Connect a store is plain file I/O on the client and in the server's tasks,
    so both must see one directory: a file the client writes there must reach a task.

    With a SparkContext, Hadoop's FileSystem serves both sides and there is nothing to check.
    """
    if spark_context(spark) is not None:
        return
    fs = LocalFS()
    token = uuid.uuid4().hex
    probe = fs.local_path(f"{base.rstrip('/')}/_shared-{token}")
    fs.write_bytes(probe, token.encode())

    def look(batches):
        import pyarrow as pa

        for _ in batches:
            pass
        try:
            with open(probe, encoding="ascii") as f:
                seen = f.read() == token
        except OSError:
            seen = False
        yield pa.record_batch([pa.array([seen])], names=["seen"])

    try:
        rows = spark.range(1, numPartitions=1).mapInArrow(look, "seen boolean").collect()
    finally:
        fs.delete(probe)
    if not all(row.seen for row in rows):
        raise InputError(
            f"store {base!r} is not shared: the Spark Connect server's tasks do not see the "
            "files this client writes there. Under Spark Connect the store is plain file I/O "
            "on both sides, so give --store a path the client and the cluster share (such as "
            "/Volumes/… on Databricks)"
        )
