"""Name Spark jobs so the UI reads "layer 0 · epoch 3", where the session allows it.

Job descriptions and scheduler pools are SparkContext features; under Spark Connect there is
no SparkContext, so these helpers do nothing there. `spark_context` is the one test for that,
for the rest of the engine too. Executors import this module: it must do nothing at import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyspark import SparkContext
from pyspark.sql import SparkSession


def spark_context(spark: SparkSession) -> SparkContext | None:
    """The session's SparkContext, or None under Spark Connect, which has none: callers fall
    back to DataFrame-only ways (no accumulators, job descriptions or JVM file system)."""
    try:
        return spark.sparkContext
    except Exception:  # Connect raises a not-implemented error here
        return None


@contextmanager
def described(spark: SparkSession, text: str, pool: str | None = None) -> Iterator[None]:
    """Run the block's Spark jobs under a description (and FAIR pool) for this thread."""
    sc = spark_context(spark)
    if sc is None:
        yield
        return
    previous = sc.getLocalProperty("spark.job.description")
    sc.setJobDescription(text)
    if pool is not None:
        sc.setLocalProperty("spark.scheduler.pool", pool)
    try:
        yield
    finally:
        sc.setJobDescription(previous)
