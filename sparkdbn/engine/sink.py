"""A job's DataFrame output committed whole, to a Parquet directory or a catalog table.

A reader never sees a partial output, also when the job is killed mid-write: Spark writes a
hidden sibling (`.NAME.tmp-…`, which readers of the parent skip) that one rename makes the
output; a table is written as a staging table beside it (`NAME__sparkdbn_staging`) and
renamed. The next run for the same output removes what a killed run left behind, so one
output has one writer at a time.
"""

from __future__ import annotations

import posixpath
import uuid

from pyspark.sql import DataFrame, SparkSession

from sparkdbn.engine.filesystem import filesystem
from sparkdbn.tables import Table

STAGING_SUFFIX = "__sparkdbn_staging"


def output_exists(spark: SparkSession, location: str | Table) -> bool:
    if isinstance(location, Table):
        return bool(spark.catalog.tableExists(location.name))
    return filesystem(spark, location).exists(location)


def write_output(
    df: DataFrame, location: str | Table, partition_by: list[str] | None = None
) -> None:
    """Write `df` and replace whatever `location` holds by one rename (the caller has
    applied --if-exists)."""
    if isinstance(location, Table):
        _write_table(df, location, partition_by or [])
    else:
        _write_directory(df, location, partition_by or [])


def _write_directory(df: DataFrame, path: str, partition_by: list[str]) -> None:
    fs = filesystem(df.sparkSession, path)
    parent, name = posixpath.split(path.rstrip("/"))
    parent = parent or "."
    for leftover in fs.list(parent):
        if leftover.startswith((f".{name}.tmp-", f".{name}.old-")):
            fs.delete(f"{parent}/{leftover}", recursive=True)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        df.write.parquet(tmp, partitionBy=partition_by or None)
        old = None
        if fs.exists(path):
            old = f"{parent}/.{name}.old-{uuid.uuid4().hex[:8]}"
            fs.rename(path, old)
        fs.rename(tmp, path)
    except BaseException:
        fs.delete(tmp, recursive=True)
        raise
    if old is not None:
        fs.delete(old, recursive=True)


def _write_table(df: DataFrame, table: Table, partition_by: list[str]) -> None:
    """Staging table, then DROP the old one (overwrite) and RENAME: the table's name never
    points at half the rows (between the two statements it is briefly absent)."""
    spark = df.sparkSession
    staging = table.sibling(STAGING_SUFFIX)
    spark.sql(f"DROP TABLE IF EXISTS {staging.name}")
    writer = df.write.mode("errorifexists")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.saveAsTable(staging.name)
    spark.sql(f"DROP TABLE IF EXISTS {table.name}")
    # RENAME TO stays in the staging table's catalog: the new name is db.table.
    spark.sql(f"ALTER TABLE {staging.name} RENAME TO {'.'.join(table.parts[-2:])}")
