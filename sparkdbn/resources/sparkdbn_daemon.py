"""PySpark's worker daemon, importing pyspark from its installed package rather than its zip.

Spark puts $SPARK_HOME/python/lib/pyspark.zip (and py4j's zip) first on the Python workers'
path. Python keeps no bytecode for modules imported from a zip, so every forked worker compiles
pyspark's modules again: on this project's 2-core machine an application's first Python job
took 3.1-3.4 s that way and 2.0-2.2 s with this daemon. When SPARK_HOME is a pip-installed
pyspark (a local master started from it), the zips are that package's own copies of modules
the site directory holds, bytecode cached, so they move behind it. Zips of any other Spark
installation keep their place. Standard library and pyspark only: the daemon starts before
any of a job's files are on the path, under whichever interpreter runs the workers.

Spark starts it as `python -m sparkdbn_daemon pyspark.worker` (spark.python.daemon.module).
"""

from __future__ import annotations

import os
import sys


def _installed(zip_path: str, sites: dict[str, str]) -> str | None:
    """The path entry of the site directory that holds `zip_path` as a file of its installed
    pyspark (SITE/pyspark/python/lib/NAME.zip) with the same modules, else None. py4j's zip
    counts only where SITE holds that very py4j version."""
    lib = os.path.dirname(os.path.realpath(zip_path))
    package = os.path.dirname(os.path.dirname(lib))
    entry = sites.get(os.path.dirname(package))
    if entry is None or os.path.basename(package) != "pyspark":
        return None
    name = os.path.basename(zip_path)
    if name == "pyspark.zip":
        return entry
    version = name.removeprefix("py4j-").removesuffix("-src.zip")
    dist_info = os.path.join(os.path.dirname(package), f"py4j-{version}.dist-info")
    return entry if name.startswith("py4j-") and os.path.isdir(dist_info) else None


def installed_first(path: list[str]) -> list[str]:
    """`path` with each zip of an installed pyspark moved right behind the site directory
    that holds the installation; every other entry keeps its place."""
    sites = {os.path.realpath(p): p for p in path if p and os.path.isdir(p)}
    moved = {p: site for p in path if p.endswith(".zip") and (site := _installed(p, sites))}
    out = [p for p in path if p not in moved]
    for zip_path, site in reversed(moved.items()):  # inserted in reverse: original order
        out.insert(out.index(site) + 1, zip_path)
    return out


if __name__ == "__main__":
    sys.path[:] = installed_first(sys.path)
    from pyspark.daemon import manager

    manager()
