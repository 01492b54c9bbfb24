"""SparkSession for the jobs: reuse spark-submit's or Connect's session, else start local[*]."""

from __future__ import annotations

import os
from pathlib import Path

from pyspark.sql import SparkSession

LOG4J = Path(__file__).with_name("resources") / "log4j2.properties"
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


def get_session(app_name: str, master: str | None = None) -> SparkSession:
    """The session a job should use.

    Under spark-submit the launcher sets PYSPARK_GATEWAY_PORT and the master comes from its
    flags; with SPARK_REMOTE set the builder connects to Spark Connect. Only a plain
    `python jobs/x.py` starts its own session: SPARKDBN_MASTER or local[*], with quiet console
    defaults and SPARKDBN_DRIVER_MEMORY (default 6g) for the driver.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    launched = "PYSPARK_GATEWAY_PORT" in os.environ or "SPARK_REMOTE" in os.environ
    master = master or os.environ.get("SPARKDBN_MASTER")
    if master is not None or not launched:
        builder = builder.master(master or "local[*]")
        for key, value in LOCAL_DEFAULTS.items():
            builder = builder.config(key, value)
    return builder.getOrCreate()
