"""`table:NAME` where a job takes a path: a catalog table instead of a Parquet directory.

`table:db.t`, or `table:catalog.db.t` where the session has catalogs (Unity Catalog, Iceberg,
Spark's `spark_catalog`). Parsed here once, without Spark, so a malformed name is refused
before a session starts; readers use `spark.table`, writers `saveAsTable`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparkdbn.errors import InputError

PREFIX = "table:"
_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Table:
    """A catalog table: `parts` is (db, table) or (catalog, db, table)."""

    parts: tuple[str, ...]

    @property
    def name(self) -> str:
        """The qualified name Spark resolves: db.t or catalog.db.t."""
        return ".".join(self.parts)

    def sibling(self, suffix: str) -> Table:
        """A table beside this one (same catalog and db), named NAME + suffix."""
        return Table((*self.parts[:-1], self.parts[-1] + suffix))

    def __str__(self) -> str:
        return PREFIX + self.name


def is_table(location: str) -> bool:
    return location.startswith(PREFIX)


def parse_location(location: str) -> str | Table:
    """A path as is, or the `Table` a `table:` location names (InputError when malformed)."""
    if not is_table(location):
        return location
    parts = tuple(location[len(PREFIX):].split("."))
    if not 2 <= len(parts) <= 3 or not all(_PART.fullmatch(part) for part in parts):
        raise InputError(
            f"{location!r} is not a table name: use table:db.table or table:catalog.db.table "
            "(letters, digits and underscores)"
        )
    return Table(parts)
