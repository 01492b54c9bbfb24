"""Name Spark jobs so the UI reads "layer 0 · epoch 3", where the session allows it.

Job descriptions and scheduler pools are SparkContext features; under Spark Connect there is
no SparkContext, so these helpers do nothing there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession


def _context(spark: SparkSession):
    try:
        return spark.sparkContext
    except Exception:  # Spark Connect sessions have no SparkContext
        return None


@contextmanager
def described(spark: SparkSession, text: str, pool: str | None = None) -> Iterator[None]:
    """Run the block's Spark jobs under a description (and FAIR pool) for this thread."""
    sc = _context(spark)
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
