"""Overfitting monitors on Spark: after each epoch, the free energies and pseudo-log-likelihoods
of the validation rows and of as many training rows (`kernels.monitors`).

Hinton's practical guide (section 6): the mean free energy of training rows against held-out
rows is a cheap view of overfitting, the log Z they share cancelling out of the gap; the gap
growing means the model prefers the rows it has seen. Training rows are a fixed subset of the
validation set's size: the rows whose hash of (seed, id) is among the smallest, the same at
every epoch and, since ids travel up the stack, at every layer. For an upper layer both sets
pass through the layers below as its training rows did (`representation.transform_cached`).

An epoch's measure is a Spark job per set, after the epoch's clock stops: it reads the
parameters and draws its random bits from generators of its own, seeded by (seed, layer,
epoch, set, partition) with one more key than the training's, so training is bit for bit
the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkdbn.columns import unpack_rows
from sparkdbn.config import TrainConfig
from sparkdbn.data import PACKED_ID, PACKED_X, PackedData
from sparkdbn.engine.jobinfo import described
from sparkdbn.engine.representation import transform_cached
from sparkdbn.engine.threads import task_blas_threads
from sparkdbn.kernels.monitors import pseudo_log_likelihood
from sparkdbn.kernels.rbm import RBMParams, Visible, free_energy
from sparkdbn.metrics import EpochRecord

_SCHEMA = "side long, n long, free_energy double, pll double"
TRAIN, VALIDATION = 0, 1


def _row_hash(seed: int) -> Column:
    return F.xxhash64(F.lit(seed), F.col(PACKED_ID))


def _batches(
    params: RBMParams, visible: Visible, bits: int, seed_key: tuple[int, ...], side: int
):
    """Per batch of one side's rows: their number, sum of free energies and sum of
    pseudo-log-likelihoods (0 for Gaussian visible units, which have none)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        rng = np.random.default_rng([*seed_key, side, TaskContext.get().partitionId()])
        for batch in batches:
            V = unpack_rows(batch.column(PACKED_X), params.n_visible)
            with task_blas_threads():
                pll = (
                    float(pseudo_log_likelihood(params, V, bits, rng).sum())
                    if visible == "bernoulli" else 0.0
                )
                energy = float(free_energy(params, V, visible).sum())
            yield pa.RecordBatch.from_pylist(
                [{"side": side, "n": len(V), "free_energy": energy, "pll": pll}]
            )

    return run


class LayerMonitor:
    """One layer's monitor: the trainer loop's `monitor`, measuring an epoch's parameters."""

    def __init__(
        self, spark: SparkSession, layer: int, n_visible: int, n_hidden: int, visible: Visible,
        train_rows: DataFrame, validation: DataFrame, bits: int, seed: int,
    ) -> None:
        self.spark, self.layer = spark, layer
        self.n_visible, self.n_hidden, self.visible = n_visible, n_hidden, visible
        # Two jobs, not a union: a staged frame reads the part its task's partition id names.
        self.sides = {TRAIN: train_rows.select(PACKED_X), VALIDATION: validation.select(PACKED_X)}
        self.bits, self.seed = bits, seed

    def __call__(self, record: EpochRecord, state: np.ndarray) -> EpochRecord:
        params = RBMParams.from_flat(state, self.n_visible, self.n_hidden)
        seed_key = (self.seed, self.layer, record.epoch)
        found = []
        with described(self.spark, f"layer {self.layer} · epoch {record.epoch + 1} · monitors"):
            for side, rows in self.sides.items():
                run = _batches(params, self.visible, self.bits, seed_key, side)
                found += rows.mapInArrow(run, _SCHEMA).collect()
        return dataclasses.replace(record, monitors=self.figures(found))

    def figures(self, found: list) -> dict[str, float | int | None]:
        """Means per side from the batches' sums (exact sums: independent of their order)."""
        n = {side: sum(r["n"] for r in found if r["side"] == side) for side in (TRAIN, VALIDATION)}

        def mean(side: int, key: str) -> float:
            return math.fsum(r[key] for r in found if r["side"] == side) / n[side]

        pll = self.visible == "bernoulli"
        train_f, validation_f = mean(TRAIN, "free_energy"), mean(VALIDATION, "free_energy")
        return {
            "rows": n[VALIDATION],
            "train_rows": n[TRAIN],
            "train_free_energy": train_f,
            "validation_free_energy": validation_f,
            "free_energy_gap": validation_f - train_f,
            "train_pseudo_log_likelihood": mean(TRAIN, "pll") if pll else None,
            "validation_pseudo_log_likelihood": mean(VALIDATION, "pll") if pll else None,
        }


class Monitoring:
    """A run's validation rows and its fixed subset of training rows, followed up the stack.

    `advance` passes the validation rows through a finished layer, as the schedule passes the
    training rows; `layer_monitor` makes the monitor of the layer that trains on `data`.
    `close` releases what they cached (the caller keeps the validation data it gave).
    """

    def __init__(
        self, spark: SparkSession, cfg: TrainConfig, train: PackedData, validation: PackedData
    ) -> None:
        self.spark, self.cfg = spark, cfg
        self.validation = self.given = validation
        self.threshold = (
            train.df.select(_row_hash(cfg.seed).alias("h")).orderBy("h")
            .limit(validation.n_rows).agg(F.max("h")).first()[0]
        )
        self.cached: list[DataFrame] = []

    def advance(self, params: RBMParams, level: int) -> None:
        upper = transform_cached(
            self.validation, params, self.cfg.representation, (self.cfg.seed, level)
        )
        if self.validation is not self.given:
            self.validation.unpersist()
        self.validation = upper

    def layer_monitor(self, layer: int, data: PackedData, visible: Visible) -> LayerMonitor:
        subset = data.df.where(_row_hash(self.cfg.seed) <= self.threshold).select(PACKED_X)
        subset = subset.persist(StorageLevel.MEMORY_AND_DISK)
        self.cached.append(subset)
        return LayerMonitor(
            self.spark, layer, data.width, self.cfg.layers[layer + 1], visible, subset,
            self.validation.df, self.cfg.pseudo_likelihood_bits, self.cfg.seed,
        )

    def close(self) -> None:
        for frame in self.cached:
            frame.unpersist()
        if self.validation is not self.given:
            self.validation.unpersist()
