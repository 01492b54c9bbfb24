"""Overfitting monitors on Spark: after each epoch, the free energies and pseudo-log-likelihoods
of the validation rows and of as many training rows (`kernels.monitors`).

Hinton's practical guide (section 6): the mean free energy of training rows against held-out
rows is a cheap view of overfitting, the log Z they share cancelling out of the gap; the gap
growing means the model prefers the rows it has seen. Training rows are a fixed subset of the
validation set's size: the rows whose hash of (seed, id) is among the smallest, the same at
every epoch and, since ids travel up the stack, at every layer. For an upper layer both sets
pass through the layers below as its training rows did.

Under `sequential` that is once per layer (`representation.transform_cached`). Under the
concurrent schedules an upper layer trains on versions of its input published while the layer
below trains, so the validation rows follow each version: when a layer publishes one, it maps
the validation rows of its own input's version through its weights at that point and hands them
over under the version's number (`PublishedValidation`); the layer above measures each epoch on
those of the epoch's `input_version` and on the subset of that version's rows, the ones it
trained on. Both sides of every figure thus went through the same weights of the layers below.
A rough version written by its epoch's own stage (`rough_versions` in_epoch) holds positive
phases of weights that change during the epoch, which no single set of weights reproduces; its
validation rows go through the weights the epoch ends with, the ones the layer's own monitor
measures at that epoch.

An epoch's measure is a Spark job per set, after the epoch's clock stops: it reads the
parameters and draws its random bits from generators of its own, seeded by (seed, layer,
epoch, set, partition) with one more key than the training's, so training is bit for bit
the same. Publishing the validation rows reads the weights and the rows only, likewise.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterator

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


# An epoch's two sets of rows, (training subset, validation), or None when the validation rows
# of its input are unknown (a version published before a restart).
Sides = Callable[[], tuple[DataFrame, DataFrame] | None]


class LayerMonitor:
    """One layer's monitor: the trainer loop's `monitor`, measuring an epoch's parameters on
    the rows `sides` gives for that epoch."""

    def __init__(
        self, spark: SparkSession, layer: int, n_visible: int, n_hidden: int, visible: Visible,
        sides: Sides, bits: int, seed: int, pool: str | None = None,
    ) -> None:
        self.spark, self.layer, self.pool = spark, layer, pool
        self.n_visible, self.n_hidden, self.visible = n_visible, n_hidden, visible
        self.sides = sides
        self.bits, self.seed = bits, seed

    def __call__(self, record: EpochRecord, state: np.ndarray) -> EpochRecord:
        sides = self.sides()
        if sides is None:
            return record
        params = RBMParams.from_flat(state, self.n_visible, self.n_hidden)
        seed_key = (self.seed, self.layer, record.epoch)
        found = []
        text = f"layer {self.layer} · epoch {record.epoch + 1} · monitors"
        with described(self.spark, text, self.pool):
            # Two jobs, not a union: a staged frame reads the part its task's partition id names.
            for side, rows in zip((TRAIN, VALIDATION), sides, strict=True):
                run = _batches(params, self.visible, self.bits, seed_key, side)
                found += rows.select(PACKED_X).mapInArrow(run, _SCHEMA).collect()
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


class PublishedValidation:
    """The validation rows as each version of one store maps them, handed from the thread of
    the layer that publishes the versions to the thread of the layer above, which trains on
    them. An entry goes when the store collects its version (`drop`), so there are as many as
    the store keeps: its newest, the leased (the one the layer above trains on) and the final.
    """

    def __init__(self) -> None:
        self._rows: dict[int, PackedData | None] = {}
        self._changed = threading.Condition()

    def put(self, number: int, rows: PackedData | None) -> None:
        """Version `number`'s validation rows; None when they are unknown."""
        with self._changed:
            self._rows[number] = rows
            self._changed.notify_all()

    def wait(self, number: int, timeout: float) -> bool:
        """Block until version `number`'s entry is there, or `timeout` passes; True if it is."""
        with self._changed:
            return self._changed.wait_for(lambda: number in self._rows, timeout)

    def get(self, number: int) -> PackedData | None:
        with self._changed:
            return self._rows[number]

    def drop(self, numbers: list[int]) -> None:
        """Release the entries of versions the store has deleted."""
        with self._changed:
            gone = [self._rows.pop(n, None) for n in numbers]
        for rows in gone:
            if rows is not None:
                rows.unpersist()

    def close(self) -> None:
        with self._changed:
            numbers = list(self._rows)
        self.drop(numbers)


class _VersionSides:
    """An upper layer's sides under a concurrent schedule: the subset of the rows of the
    version it trains on, cached while it trains on that version, and the version's
    validation rows. `inputs` gives both for the epoch just trained."""

    def __init__(
        self, monitoring: Monitoring, inputs: Callable[[], tuple[PackedData, PackedData | None]]
    ) -> None:
        self.monitoring, self.inputs = monitoring, inputs
        self.data: PackedData | None = None
        self.subset: DataFrame | None = None

    def __call__(self) -> tuple[DataFrame, DataFrame] | None:
        data, validation = self.inputs()
        if validation is None:
            return None
        if data is not self.data:
            self.close()
            self.data, self.subset = data, self.monitoring.subset(data)
        return self.subset, validation.df

    def close(self) -> None:
        if self.subset is not None:
            self.subset.unpersist()
            self.data = self.subset = None


class Monitoring:
    """A run's validation rows and its fixed subset of training rows, followed up the stack.

    `advance` passes the validation rows through a finished layer, as the sequential schedule
    passes the training rows; `layer_monitor` makes the monitor of a layer that trains on
    fixed `data`. Under the concurrent schedules, `publish` keeps a version's validation rows
    in `published[layer]` and `version_monitor` makes an upper layer's monitor over them.
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
        self.published = [PublishedValidation() for _ in range(len(cfg.layers) - 2)]
        self.cached: list[DataFrame] = []
        self.sides: list[_VersionSides] = []
        self._lock = threading.Lock()  # layers register from their own threads

    def advance(self, params: RBMParams, level: int) -> None:
        upper = transform_cached(
            self.validation, params, self.cfg.representation, (self.cfg.seed, level)
        )
        if self.validation is not self.given:
            self.validation.unpersist()
        self.validation = upper

    def subset(self, data: PackedData) -> DataFrame:
        """The fixed training rows among `data`'s, persisted: the caller unpersists them."""
        subset = data.df.where(_row_hash(self.cfg.seed) <= self.threshold).select(PACKED_X)
        return subset.persist(StorageLevel.MEMORY_AND_DISK)

    def layer_monitor(
        self, layer: int, data: PackedData, visible: Visible, pool: str | None = None
    ) -> LayerMonitor:
        subset = self.subset(data)
        with self._lock:
            self.cached.append(subset)
        validation = self.validation.df
        return self._monitor(layer, data.width, visible, lambda: (subset, validation), pool)

    def version_monitor(
        self, layer: int, inputs: Callable[[], tuple[PackedData, PackedData | None]],
        pool: str | None = None,
    ) -> LayerMonitor:
        """The monitor of upper layer `layer`, measuring each epoch on what `inputs` gives
        then: the version it trained on, and that version's validation rows (None: unknown)."""
        sides = _VersionSides(self, inputs)
        with self._lock:
            self.sides.append(sides)
        return self._monitor(layer, self.cfg.layers[layer], "bernoulli", sides, pool)

    def _monitor(
        self, layer: int, width: int, visible: Visible, sides: Sides, pool: str | None
    ) -> LayerMonitor:
        return LayerMonitor(
            self.spark, layer, width, self.cfg.layers[layer + 1], visible, sides,
            self.cfg.pseudo_likelihood_bits, self.cfg.seed, pool,
        )

    def publish(
        self, layer: int, number: int, below: PackedData | None, params: RBMParams,
        epoch: int, pool: str | None = None,
    ) -> None:
        """Keep `below` (the validation rows of the input version layer `layer` trained on,
        None if unknown) mapped through `params`, its weights after `epoch` epochs, as those
        of its version `number`; seeded like the version's own pass."""
        rows = None
        if below is not None:
            text = f"layer {layer} · validation rows of version {number}"
            with described(self.spark, text, pool):
                seed_key = (self.cfg.seed, layer, epoch)
                rows = transform_cached(below, params, self.cfg.representation, seed_key)
        self.published[layer].put(number, rows)

    def close(self) -> None:
        for frame in self.cached:
            frame.unpersist()
        for sides in self.sides:
            sides.close()
        for published in self.published:
            published.close()
        if self.validation is not self.given:
            self.validation.unpersist()
