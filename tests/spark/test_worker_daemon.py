"""The local workers' daemon: pyspark's zips move behind the installation they came from, and
only those; in real workers, pyspark comes from the installed package."""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

import pyarrow as pa
import pyspark

from sparkdbn.session import RESOURCES, get_session, local_worker_settings

SPEC = importlib.util.spec_from_file_location("sparkdbn_daemon", RESOURCES / "sparkdbn_daemon.py")
daemon = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(daemon)


def spark_home(site: Path, py4j: str | None = "0.10.9.9") -> tuple[str, str]:
    """A pip-installed pyspark under `site`: the package, its zips and py4j's dist-info."""
    lib = site / "pyspark" / "python" / "lib"
    lib.mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    zips = []
    for name in ("pyspark.zip", "py4j-0.10.9.9-src.zip"):
        with zipfile.ZipFile(lib / name, "w") as out:
            out.writestr("placeholder.py", "")
        zips.append(str(lib / name))
    if py4j is not None:
        (site / f"py4j-{py4j}.dist-info").mkdir()
    return zips[0], zips[1]


def test_installed_zips_move_behind_their_site(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    pyspark_zip, py4j_zip = spark_home(site)
    other = tmp_path / "elsewhere"
    other.mkdir()
    path = ["", pyspark_zip, py4j_zip, str(other), str(site), "/nonexistent"]
    assert daemon.installed_first(path) == [
        "", str(other), str(site), pyspark_zip, py4j_zip, "/nonexistent"
    ]


def test_site_reached_through_a_symlink(tmp_path: Path) -> None:
    site = tmp_path / "real-site"
    pyspark_zip, py4j_zip = spark_home(site)
    link = tmp_path / "linked-site"
    link.symlink_to(site)
    linked_zip = pyspark_zip.replace(str(site), str(link))
    assert daemon.installed_first([linked_zip, str(link)]) == [str(link), linked_zip]


def test_other_spark_installations_keep_their_place(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    spark_home(site, py4j="0.10.9.7")  # another py4j than the zip's: not the same modules
    cluster = tmp_path / "opt" / "spark"
    cluster_zip = cluster / "python" / "lib" / "pyspark.zip"
    cluster_zip.parent.mkdir(parents=True)
    cluster_zip.write_bytes(b"")
    own_py4j = str(site / "pyspark" / "python" / "lib" / "py4j-0.10.9.9-src.zip")
    path = [str(cluster_zip), own_py4j, str(site)]
    assert daemon.installed_first(path) == path


def test_no_site_directory_on_the_path(tmp_path: Path) -> None:
    pyspark_zip, py4j_zip = spark_home(tmp_path / "site-packages")
    assert daemon.installed_first([pyspark_zip, py4j_zip]) == [pyspark_zip, py4j_zip]


def test_real_workers_import_the_installed_pyspark(spark) -> None:
    """The session fixture starts its workers as jobs do (`local_worker_settings`): pyspark in
    the workers is the driver's installed package, not its zip."""
    assert spark is get_session("test")
    conf = spark.sparkContext.getConf()
    for key, value in local_worker_settings().items():
        assert conf.get(key) == value

    def where(batches):
        import sys

        import pyspark as worker_pyspark

        for _ in batches:
            pass
        zips = [p for p in sys.path if p.endswith(".zip")]
        yield pa.RecordBatch.from_pydict(
            {"file": [worker_pyspark.__file__], "zips": [len(zips)]}
        )

    rows = spark.range(0, 2, 1, 2).mapInArrow(where, "file string, zips long").collect()
    assert len(rows) == 2
    for row in rows:
        assert row.zips >= 1  # Spark still puts its zips on the path…
        assert ".zip" not in row.file  # …but the installed package comes first
        assert os.path.samefile(row.file, pyspark.__file__)
