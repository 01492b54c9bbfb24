"""Spark-side measurements for `sparkdbn.bench`: epochs through the engine and schedules.

They measure the engine against the machine, so an epoch here is the paper's: one averaging
round over all rows (`plain`), the same work as the numpy reference epoch. What the default's
rounds cost per epoch is the scaling study's figure (`sparkdbn.scaling`).
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkdbn.config import TrainConfig
from sparkdbn.data import PackedData, prepare
from sparkdbn.engine.rbm_trainer import LayerTrainer
from sparkdbn.engine.schedules import pretrain
from sparkdbn.kernels.averaging import AveragingSettings
from sparkdbn.kernels.rbm import CDConfig, RBMParams
from sparkdbn.metrics import RunLog

PLAIN = AveragingSettings("plain")


def replicated(spark: SparkSession, path: str, times: int):
    """The data set `times` over, with fresh ids: the scaling experiment's input."""
    df = spark.read.parquet(path)
    if times == 1:
        return df
    copies = [df.withColumn("id", F.col("id") * times + i) for i in range(times)]
    out = copies[0]
    for other in copies[1:]:
        out = out.unionByName(other)
    return out


def spark_epoch_seconds(
    spark: SparkSession, data: PackedData, n_hidden: int, cfg: CDConfig, repeats: int
) -> float:
    """Median seconds of one engine epoch on prepared data (cached, or staged under a local
    master), after one warm-up epoch."""
    params = RBMParams.init(data.width, n_hidden, np.random.default_rng(0))
    trainer = LayerTrainer(
        spark, 0, params, cfg, 0, repeats + 1, RunLog("bench", io.StringIO()), averaging=PLAIN
    )
    trainer.train_epoch(data)
    return statistics.median(trainer.train_epoch(data).seconds for _ in range(repeats))


def epoch_at_scale(
    spark: SparkSession, path: str, times: int, n_hidden: int, cfg: CDConfig,
    partitions: int, repeats: int,
) -> float:
    data = prepare(spark, replicated(spark, path, times), partitions=partitions * times)
    try:
        return spark_epoch_seconds(spark, data, n_hidden, cfg, repeats)
    finally:
        data.unpersist()


def makespan(
    spark: SparkSession, path: str, layers: list[int], schedule: str, epochs: int,
    partitions: int, store: Path, **settings,
) -> float:
    """Pretraining makespan of one schedule (data prepared before the clock starts)."""
    cfg = TrainConfig(
        layers=layers, schedule=schedule, epochs=epochs, partitions=partitions,
        averaging="plain", **settings,
    ).validate()
    data = prepare(spark, path, partitions=partitions)
    try:
        run = RunLog(schedule, io.StringIO())
        start = time.perf_counter()
        pretrain(spark, data, cfg, run, str(store / schedule))
        return time.perf_counter() - start
    finally:
        data.unpersist()
