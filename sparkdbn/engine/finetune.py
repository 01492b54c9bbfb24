"""Fine-tuning: the unrolled DBN trained by backprop with the same averaging rounds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from sparkdbn.columns import unpack_rows
from sparkdbn.data import PACKED_LABEL, PACKED_X, PackedData
from sparkdbn.engine.averaging import Local, PartitionStep, StepResult
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.faults import failing_first_attempt
from sparkdbn.engine.rounds import EpochResult
from sparkdbn.engine.trainer import AveragingTrainer, EpochPlan
from sparkdbn.kernels.averaging import AUTO, FINETUNING, AveragingSettings
from sparkdbn.kernels.mlp import MLPParams, SGDConfig, sgd_epoch
from sparkdbn.kernels.rates import learning_rate_at
from sparkdbn.logs import Reporter, as_reporter


@dataclass
class FinetuneEpoch:
    epoch: int
    loss: float
    train_accuracy: float
    seconds: float
    learning_rate: float
    rounds: int = 1
    replica_divergence: list[float] = field(default_factory=list)


def mlp_step(sizes: list[int], cfg: SGDConfig) -> PartitionStep:
    """Per partition: SGD over its rows of the round; the state is [parameters, velocity]."""
    size = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def step(
        table: pa.Table, state: np.ndarray, rng: np.random.Generator, rows: np.ndarray,
        local: Local,
    ) -> StepResult:
        X = unpack_rows(table.column(PACKED_X), sizes[0])
        y = table.column(PACKED_LABEL).to_numpy().astype(np.int64, copy=False)
        new_state = np.array(state, np.float32)  # trained in place through the views below
        params = MLPParams.from_flat(new_state[:size], sizes, copy=False)
        velocity = MLPParams.from_flat(new_state[size:], sizes, copy=False)
        stats = sgd_epoch(params, velocity, X, y, cfg, rng, rows=rows)
        return new_state, stats.n_rows, np.array([stats.loss_sum, stats.correct])

    return step


class FinetuneTrainer(AveragingTrainer[FinetuneEpoch]):
    """The unrolled DBN under the trainer loop, as `name` ("fine-tune" or "baseline")."""

    error_name = "loss"

    def __init__(
        self, spark: SparkSession, params: MLPParams, cfg: SGDConfig, epochs: int,
        name: str, reporter: Reporter, checkpoint: Checkpoint | None,
    ) -> None:
        self.sizes = params.sizes
        self.cfg = cfg
        self.history: list[FinetuneEpoch] = []
        state = np.concatenate([params.to_flat(), params.zeros_like().to_flat()])
        super().__init__(
            spark, name, name, {"stage": name}, state, params.to_flat().size, epochs,
            self.history, reporter, checkpoint,
        )

    @property
    def params(self) -> MLPParams:
        return MLPParams.from_flat(self.state[: self.param_size], self.sizes)

    def record_from(self, saved: dict[str, Any]) -> FinetuneEpoch:
        return FinetuneEpoch(**saved)

    def error_of(self, record: FinetuneEpoch) -> float:
        return record.loss

    def remedy(self) -> str:
        return "lower finetune_learning_rate"

    def report(self, record: FinetuneEpoch) -> None:
        self.history.append(record)
        self.reporter.event(  # as text: "fine-tune · epoch 3/10 · loss … · train acc … · 1.23 s"
            "finetune_epoch", stage=self.name, epoch=record.epoch + 1, epochs=self.epochs,
            loss=record.loss, train_accuracy=record.train_accuracy, seconds=record.seconds,
            learning_rate=record.learning_rate, rounds=record.rounds,
            replica_divergence=record.replica_divergence,
        )


def finetune(
    spark: SparkSession,
    data: PackedData,
    params: MLPParams,
    cfg: SGDConfig,
    epochs: int,
    seed_key: tuple[int, ...],
    lr_decay: float = 1.0,
    lr_schedule: str = "exponential",
    name: str = "fine-tune",
    report: Reporter | Callable[[str], Any] = print,
    checkpoint: Checkpoint | None = None,
    fail_partitions: frozenset[int] = frozenset(),
    averaging: AveragingSettings = AUTO,
) -> tuple[MLPParams, list[FinetuneEpoch]]:
    """`epochs` epochs of SGD, each `averaging`'s rounds (see `engine.rounds`); the learning
    rate follows `lr_schedule` (exponential: shrinks by `lr_decay` per epoch; cosine: anneals
    to 0, see learning_rate_at).

    With a checkpoint, training continues from the state and epoch saved under `name` (if
    any) and is saved as it goes; a round whose loss or state diverged raises DivergenceError
    before it is kept. Progress goes to `report`: a sparkdbn.logs.Reporter (finetune_epoch,
    warning and resumed events) or any callable taking a text line.
    """
    trainer = FinetuneTrainer(spark, params, cfg, epochs, name, as_reporter(report), checkpoint)
    resolved = averaging.resolve(data.partitions, data.n_rows, cfg.batch_size, epochs, FINETUNING)
    batch = resolved.batch_size or cfg.batch_size
    while not trainer.done:
        epoch = trainer.epoch
        lr = learning_rate_at(cfg.learning_rate, epoch, epochs, lr_schedule, lr_decay)

        def step(index: int, epoch: int = epoch, lr: float = lr) -> PartitionStep:
            factor = resolved.lr_factor(epoch, index)
            return failing_first_attempt(
                mlp_step(
                    trainer.sizes,
                    dataclasses.replace(cfg, learning_rate=lr * factor, batch_size=batch),
                ),
                fail_partitions,
            )

        def record(result: EpochResult, seconds: float, lr: float = lr) -> FinetuneEpoch:
            return FinetuneEpoch(
                epoch=trainer.epoch,
                loss=float(result.sums[0] / result.n_rows),
                train_accuracy=float(result.sums[1] / result.n_rows),
                seconds=round(seconds, 4),
                learning_rate=lr,
                rounds=resolved.rounds,
                replica_divergence=[round(d, 4) for d in result.divergence],
            )

        plan = EpochPlan(
            f"{name} · epoch {epoch + 1}", data.rows(PACKED_X, PACKED_LABEL),
            [step(i) for i in range(resolved.rounds)], (*seed_key, epoch), data.partitions,
            resolved, batch,
        )
        trainer.run_epoch(plan, record)
    return trainer.params, trainer.history
