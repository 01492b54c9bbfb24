"""Train one RBM layer, one averaging round per epoch, on whatever input the schedule gives."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from sparkdbn.columns import unpack_rows
from sparkdbn.data import PACKED_X, PackedData
from sparkdbn.engine.averaging import PartitionStep, StepResult, average_round
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.divergence import divergence
from sparkdbn.engine.faults import failing_first_attempt
from sparkdbn.engine.jobinfo import described
from sparkdbn.errors import DivergenceError
from sparkdbn.kernels.rbm import CDConfig, RBMParams, cd_epoch
from sparkdbn.metrics import EpochRecord, LayerLog, RunLog


def rbm_step(n_visible: int, n_hidden: int, cfg: CDConfig) -> PartitionStep:
    """The per-partition work of one epoch: CD-k over all the partition's rows.

    The state is [parameters, momentum buffers], so momentum is averaged like the weights.
    """
    size = n_visible * n_hidden + n_visible + n_hidden

    def step(table: pa.Table, state: np.ndarray, rng: np.random.Generator) -> StepResult:
        X = unpack_rows(table.column(PACKED_X), n_visible)
        params = RBMParams.from_flat(state[:size], n_visible, n_hidden)
        velocity = RBMParams.from_flat(state[size:], n_visible, n_hidden)
        stats = cd_epoch(params, velocity, X, cfg, rng)
        new_state = np.concatenate([params.to_flat(), velocity.to_flat()])
        return new_state, stats.n_rows, np.array([stats.recon_sq_error])

    return step


def initial_state(params: RBMParams) -> np.ndarray:
    """A layer's training state: its parameters, then zero momentum buffers of the same shape."""
    return np.concatenate([params.to_flat(), params.zeros_like().to_flat()])


class LayerTrainer:
    """State and epoch loop of one layer; the schedule decides which data each epoch sees.

    With a checkpoint, the trainer starts from its saved state and epoch (if any) and saves
    after its epochs; every epoch's result passes the divergence guard before it is kept.
    """

    def __init__(
        self,
        spark: SparkSession,
        layer: int,
        params: RBMParams,
        cfg: CDConfig,
        seed: int,
        epochs: int,
        run: RunLog,
        pool: str | None = None,
        final_momentum: float | None = None,
        momentum_epochs: int = 0,
        checkpoint: Checkpoint | None = None,
        fail_partitions: frozenset[int] = frozenset(),
    ) -> None:
        self.spark = spark
        self.layer = layer
        self.cfg = cfg
        self.seed = seed
        self.epochs = epochs
        self.run = run
        self.pool = pool
        self.n_visible, self.n_hidden = params.n_visible, params.n_hidden
        self.state = initial_state(params)
        self.epoch = 0
        self.log: LayerLog = run.layer(layer, self.n_visible, self.n_hidden)
        self.final_momentum = final_momentum
        self.momentum_epochs = momentum_epochs
        self.fail_partitions = fail_partitions
        self.checkpoint = checkpoint
        saved = None if checkpoint is None else checkpoint.restore(self.name, self.state.size)
        if saved is not None:
            self.state, self.epoch = saved.state, saved.epoch
            self.log.epochs = [EpochRecord(**record) for record in saved.records]
            run.reporter.event("resumed", layer=layer, after_epoch=self.epoch, epochs=epochs)

    @property
    def name(self) -> str:
        """The trainer's name in the checkpoint."""
        return f"layer_{self.layer}"

    @property
    def params(self) -> RBMParams:
        size = self.n_visible * self.n_hidden + self.n_visible + self.n_hidden
        return RBMParams.from_flat(self.state[:size], self.n_visible, self.n_hidden)

    def epoch_config(self) -> CDConfig:
        """Hinton's schedule: the initial momentum first, then `final_momentum` if set."""
        if self.final_momentum is None or self.epoch < self.momentum_epochs:
            return self.cfg
        return dataclasses.replace(self.cfg, momentum=self.final_momentum)

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    def train_epoch(self, data: PackedData, version: int | None = None) -> EpochRecord:
        """One epoch over `data` (seeded by seed, layer, epoch and partition)."""
        if data.width != self.n_visible:
            raise ValueError(
                f"layer {self.layer} expects {self.n_visible} inputs, got {data.width}"
            )
        if self.log.started_at is None:
            self.log.started_at = self.run.now()
        start = time.perf_counter()
        text = f"layer {self.layer} · epoch {self.epoch + 1}"
        with described(self.spark, text, self.pool):
            result = average_round(
                data.df.select(PACKED_X),
                self.state,
                failing_first_attempt(
                    rbm_step(self.n_visible, self.n_hidden, self.epoch_config()),
                    self.fail_partitions,
                ),
                (self.seed, self.layer, self.epoch),
                data.partitions,
            )
        seconds = time.perf_counter() - start
        recon = float(result.sums[0] / result.n_rows)
        first = self.log.epochs[0].recon_error if self.log.epochs else None
        why = divergence(result.state, recon, first, "reconstruction error")
        if why is not None:
            gaussian = self.cfg.visible == "gaussian"
            hint = " (Gaussian visible units also need standardized data)" if gaussian else ""
            raise DivergenceError(
                f"training diverged at layer {self.layer}, epoch {self.epoch + 1}/{self.epochs}: "
                f"{why}; lower learning_rate{hint}"
            )
        self.state = result.state
        record = EpochRecord(
            epoch=self.epoch,
            recon_error=recon,
            seconds=round(seconds, 4),
            rows_per_second=round(result.n_rows / seconds, 1),
            input_version=version,
        )
        self.run.record_epoch(self.log, record, self.epochs)
        self.epoch += 1
        if self.done:
            self.log.finished_at = self.run.now()
        if self.checkpoint is not None:
            records = [asdict(r) for r in self.log.epochs]
            self.checkpoint.save(self.name, self.state, self.epoch, records, last=self.done)
        return record
