"""SparkSession for the jobs: reuse spark-submit's or Connect's session, else start local[*]."""

from __future__ import annotations

import os
from pathlib import Path

from pyspark.sql import SparkSession

from sparkdbn.staging import is_local

# Absolute even where the package was imported from a relative path (an executor's
# `./sparkdbn.zip`), since a file URI cannot be relative.
RESOURCES = Path(__file__).resolve().with_name("resources")
LOG4J = RESOURCES / "log4j2.properties"
LOCAL_DEFAULTS = {
    "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J.as_uri()}",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.scheduler.mode": "FAIR",
    "spark.sql.shuffle.partitions": "8",
    # Cached training sets and representation versions live in the driver JVM in local mode;
    # Spark's 1g default runs out with a 60,000 × 784 set plus a layer's version in flight.
    "spark.driver.memory": os.environ.get("SPARKDBN_DRIVER_MEMORY", "6g"),
}


def local_worker_settings() -> dict[str, str]:
    """Settings for a local master's Python workers.

    They fork from `sparkdbn_daemon`, which imports pyspark with its bytecode instead of
    compiling it from Spark's zip in every worker (about 1 s less for an application's first
    Python job); cluster executors may not have this file. (Unix domain sockets to the JVM,
    `spark.python.unix.domain.socket.enabled`, would save about 25 ms per stage, but pyspark's
    daemon then prints a BrokenPipeError traceback when the JVM drops an idle worker, which
    breaks the jobs' one-line errors on stderr.)
    """
    return {
        "spark.python.daemon.module": "sparkdbn_daemon",
        "spark.executorEnv.PYTHONPATH": str(RESOURCES),
    }


def get_session(app_name: str, master: str | None = None) -> SparkSession:
    """The session a job should use.

    Under spark-submit the launcher sets PYSPARK_GATEWAY_PORT and the master comes from its
    flags; with SPARK_REMOTE set the builder connects to Spark Connect. Only a plain
    `python jobs/x.py` starts its own session: SPARKDBN_MASTER or local[*], with quiet console
    defaults and SPARKDBN_DRIVER_MEMORY (default 6g) for the driver, and for a local master
    `local_worker_settings`.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    launched = "PYSPARK_GATEWAY_PORT" in os.environ or "SPARK_REMOTE" in os.environ
    master = master or os.environ.get("SPARKDBN_MASTER")
    if master is not None or not launched:
        master = master or "local[*]"
        settings = dict(LOCAL_DEFAULTS)
        if is_local(master):
            settings.update(local_worker_settings())
        builder = builder.master(master)
        for key, value in settings.items():
            builder = builder.config(key, value)
    return builder.getOrCreate()
