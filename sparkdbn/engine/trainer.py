"""The averaging trainer's loop, the one RBM pretraining and fine-tuning both run.

Each epoch: the averaging rounds (`rounds.AveragingLoop`), each round through the divergence
guard; the epoch's record, measured by the monitor if there is one; its progress event; one
warning when the replicas diverge; the checkpoint. Before the first epoch the trainer
continues from its checkpoint, if that holds it. The trainers differ only in their steps,
their record and event, and the words of their guard, so these are what a subclass gives
(`LayerTrainer`, `FinetuneTrainer`), and the loop's order, its checkpoint format and its
messages stay the same for both.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from sparkdbn.engine.averaging import PartitionStep, RoundResult, epoch_rounds
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.divergence import divergence
from sparkdbn.engine.jobinfo import described
from sparkdbn.engine.rounds import AveragingLoop, EpochResult, LastRound, divergence_warning
from sparkdbn.errors import DivergenceError
from sparkdbn.kernels.averaging import Averaging
from sparkdbn.logs import Reporter
from sparkdbn.staging import StagedRows

R = TypeVar("R")  # an epoch's record: a dataclass, saved in the checkpoint with asdict


@dataclass
class EpochPlan:
    """What one epoch runs: its Spark description, the rows, a step per round, the seeds, and
    the resolved averaging; `last_round` and `accept` as in `AveragingLoop.epoch`."""

    text: str
    rows: DataFrame | StagedRows
    steps: list[PartitionStep]
    seed_key: tuple[int, ...]
    partitions: int
    averaging: Averaging
    batch_size: int
    last_round: LastRound | None = None
    accept: Callable[[EpochResult], None] | None = None


class AveragingTrainer(ABC, Generic[R]):
    """One trainer's state, epochs and records under averaging rounds.

    `title` names the trainer in its messages ("layer 0", "fine-tune"), `where` in its events'
    fields ({"layer": 0}, {"stage": "fine-tune"}), `name` in the checkpoint. `records` is the
    list the epochs' records go to; a resume fills it in place with the saved ones.
    `monitor`, when a schedule sets it, measures the epoch's parameters and returns its record
    with the figures; it only reads, so training goes on exactly as without it.
    """

    error_name: str  # what the guard watches, in its message: "reconstruction error", "loss"

    def __init__(
        self, spark: SparkSession, name: str, title: str, where: dict[str, Any],
        state: np.ndarray, param_size: int, epochs: int, records: list[R],
        reporter: Reporter, checkpoint: Checkpoint | None, pool: str | None = None,
    ) -> None:
        self.spark = spark
        self.name, self.title, self.where = name, title, where
        self.loop = AveragingLoop(state, param_size)
        self.param_size = param_size
        self.epochs = epochs
        self.records = records
        self.reporter = reporter
        self.checkpoint = checkpoint
        self.pool = pool
        self.epoch = 0
        self.monitor: Callable[[R, np.ndarray], R] | None = None
        self._warned = False
        saved = None if checkpoint is None else checkpoint.restore(name, self.loop.saved_size)
        if saved is not None:
            self.loop.restore(saved.state, saved.local)
            self.epoch = saved.epoch
            self.records[:] = [self.record_from(record) for record in saved.records]
            reporter.event("resumed", **where, after_epoch=self.epoch, epochs=epochs)

    @property
    def state(self) -> np.ndarray:
        """[parameters, momentum buffers] of the global model."""
        return self.loop.state

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    @abstractmethod
    def record_from(self, saved: dict[str, Any]) -> R:
        """A record as the checkpoint saved it."""

    @abstractmethod
    def error_of(self, record: R) -> float:
        """The guarded error of an epoch's record."""

    @abstractmethod
    def remedy(self) -> str:
        """What the divergence message advises."""

    @abstractmethod
    def report(self, record: R) -> None:
        """Keep the epoch's record in `records` and report its progress event."""

    def run_epoch(self, plan: EpochPlan, record: Callable[[EpochResult, float], R]) -> R:
        """One epoch: rounds, guard, its record (`record` of the result and the seconds),
        report, divergence warning, checkpoint."""
        start = time.perf_counter()
        with (
            described(self.spark, plan.text, self.pool),
            epoch_rounds(
                plan.rows, plan.steps, plan.seed_key, plan.partitions, self.param_size
            ) as rounds,
        ):
            result = self.loop.epoch(
                plan.averaging, plan.batch_size, rounds.run, self._guard, plan.last_round,
                plan.accept,
            )
        kept = record(result, time.perf_counter() - start)
        if self.monitor is not None:  # after the clock: an epoch's seconds are training's
            kept = self.monitor(kept, self.state[: self.param_size])
        self.report(kept)
        self._warn(result.max_divergence, plan.partitions)
        self.epoch += 1
        if self.checkpoint is not None:
            records = [asdict(r) for r in self.records]
            self.checkpoint.save(
                self.name, self.loop.saved_state(), self.epoch, records, last=self.done,
                local=self.loop.local,
            )
        return kept

    def _guard(self, state: np.ndarray, result: RoundResult) -> None:
        """Raise unless the round is fit to keep."""
        error = float(result.sums[0] / result.n_rows)
        first = self.error_of(self.records[0]) if self.records else None
        why = divergence(state, error, first, self.error_name)
        if why is not None:
            raise DivergenceError(
                f"training diverged at {self.title}, epoch {self.epoch + 1}/{self.epochs}: "
                f"{why}; {self.remedy()}"
            )

    def _warn(self, figure: float, partitions: int) -> None:
        """Warn once per trainer when the partitions' models cancel out in the average."""
        message = divergence_warning(figure, partitions)
        if message is not None and not self._warned:
            self._warned = True
            self.reporter.event(
                "warning", level="warning", **self.where, message=f"{self.title}: {message}"
            )
