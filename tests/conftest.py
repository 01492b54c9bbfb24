"""One SparkSession for the whole test session: local[2], few shuffle partitions, no UI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO / "tests" / "data" / "fashion-mnist-small"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# A tracking URI in the developer's shell would turn MLflow tracking on for every job the tests
# run, and send their runs to that store; tests/jobs/test_mlflow.py uses a store of its own.
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def spark() -> Iterator:
    from pyspark.sql import SparkSession

    from sparkdbn.session import local_worker_settings

    builder = SparkSession.builder
    for key, value in local_worker_settings().items():
        builder = builder.config(key, value)
    session = (
        builder.master("local[2]")
        .appName("sparkdbn-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def fashion_parquet(spark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Fashion-MNIST sample as the project's Parquet layout: DIR/train, DIR/test."""
    from sparkdbn.prepare import prepare_mnist

    output = tmp_path_factory.mktemp("fashion") / "parquet"
    prepare_mnist(spark, FIXTURE_DIR, output, partitions=2)
    return output


# spark-submit adds SPARK_SUBMIT_OPTS to the driver JVM's command line (unlike
# JAVA_TOOL_OPTIONS, without a "Picked up" line on stderr). A test application lives seconds:
# C1 alone and the serial collector start it with less CPU, and no web UI saves its Jetty.
QUICK_DRIVER = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dspark.ui.enabled=false"


def job_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell gives a job: this interpreter for driver and workers, a
    driver JVM tuned for short applications (QUICK_DRIVER); `extra` adds variables such as
    SPARKDBN_MASTER."""
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["SPARKDBN_DRIVER_MEMORY"] = "2g"
    env["SPARK_SUBMIT_OPTS"] = QUICK_DRIVER
    return {**env, **extra}


def run_job(
    job: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A real job CLI in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{job}.py"), *args],
        cwd=REPO, env=job_env(**(env or {})), capture_output=True, text=True, timeout=timeout,
    )


def start_job(job: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Like run_job, without waiting: for applications that must run at the same time.

    The job gets a process group of its own, so `os.killpg(proc.pid, …)` reaches its JVM too,
    as a crash of the driver's machine would (Spark's Python workers exit with the JVM).
    """
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / f"{job}.py"), *args],
        cwd=REPO, env=job_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )


@pytest.fixture(scope="session")
def pyfiles_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/sparkdbn.zip as `make dist` builds it (its stdlib-only `pyfiles` step)."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        ["make", "-s", "pyfiles", f"DIST={dist}", f"PYTHON={sys.executable}"],
        cwd=REPO, check=True, capture_output=True, text=True, timeout=120,
    )
    return dist / "sparkdbn.zip"
