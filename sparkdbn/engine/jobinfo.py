"""Name Spark jobs so the UI reads "layer 0 · epoch 3", where the session allows it.

Job descriptions and scheduler pools are SparkContext features; under Spark Connect there is
no SparkContext, so these helpers do nothing there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from sparkdbn.session import spark_context


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
