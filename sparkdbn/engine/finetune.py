"""Fine-tuning: the unrolled DBN trained by backprop with the same averaging rounds."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from sparkdbn.columns import unpack_rows
from sparkdbn.data import PACKED_LABEL, PACKED_X, PackedData
from sparkdbn.engine.averaging import (
    PartitionStep,
    RoundResult,
    StepResult,
    epoch_rounds,
)
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.divergence import divergence
from sparkdbn.engine.faults import failing_first_attempt
from sparkdbn.engine.jobinfo import described
from sparkdbn.engine.rounds import AveragingLoop, divergence_warning
from sparkdbn.errors import DivergenceError
from sparkdbn.kernels.averaging import AUTO, FINETUNING, AveragingSettings
from sparkdbn.kernels.mlp import MLPParams, SGDConfig, learning_rate_at, sgd_epoch
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
        table: pa.Table, state: np.ndarray, rng: np.random.Generator, rows: np.ndarray
    ) -> StepResult:
        X = unpack_rows(table.column(PACKED_X), sizes[0])
        y = table.column(PACKED_LABEL).to_numpy().astype(np.int64, copy=False)
        new_state = np.array(state, np.float32)  # trained in place through the views below
        params = MLPParams.from_flat(new_state[:size], sizes, copy=False)
        velocity = MLPParams.from_flat(new_state[size:], sizes, copy=False)
        stats = sgd_epoch(params, velocity, X, y, cfg, rng, rows=rows)
        return new_state, stats.n_rows, np.array([stats.loss_sum, stats.correct])

    return step


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
    report = as_reporter(report)
    sizes = params.sizes
    size = params.to_flat().size
    loop = AveragingLoop(np.concatenate([params.to_flat(), params.zeros_like().to_flat()]), size)
    history: list[FinetuneEpoch] = []
    done = 0
    saved = None if checkpoint is None else checkpoint.restore(name, loop.saved_size)
    if saved is not None:
        loop.restore(saved.state)
        done = saved.epoch
        history = [FinetuneEpoch(**record) for record in saved.records]
        report.event("resumed", stage=name, after_epoch=done, epochs=epochs)
    resolved = averaging.resolve(data.partitions, data.n_rows, cfg.batch_size, epochs, FINETUNING)
    batch = resolved.batch_size or cfg.batch_size
    warned = False
    for epoch in range(done, epochs):
        lr = learning_rate_at(cfg.learning_rate, epoch, epochs, lr_schedule, lr_decay)

        def step(index: int, epoch: int = epoch, lr: float = lr) -> PartitionStep:
            factor = resolved.lr_factor(epoch, index)
            return failing_first_attempt(
                mlp_step(
                    sizes, dataclasses.replace(cfg, learning_rate=lr * factor, batch_size=batch)
                ),
                fail_partitions,
            )

        def guard(state: np.ndarray, result: RoundResult, epoch: int = epoch) -> None:
            loss = float(result.sums[0] / result.n_rows)
            why = divergence(state, loss, history[0].loss if history else None, "loss")
            if why is not None:
                raise DivergenceError(
                    f"training diverged at {name}, epoch {epoch + 1}/{epochs}: {why}; "
                    "lower finetune_learning_rate"
                )

        start = time.perf_counter()
        steps = [step(i) for i in range(resolved.rounds)]
        with (
            described(spark, f"{name} · epoch {epoch + 1}"),
            epoch_rounds(
                data.rows(PACKED_X, PACKED_LABEL), steps, (*seed_key, epoch), data.partitions, size
            ) as rounds,
        ):
            result = loop.epoch(resolved, batch, rounds.run, guard)
        record = FinetuneEpoch(
            epoch=epoch,
            loss=float(result.sums[0] / result.n_rows),
            train_accuracy=float(result.sums[1] / result.n_rows),
            seconds=round(time.perf_counter() - start, 4),
            learning_rate=lr,
            rounds=resolved.rounds,
            replica_divergence=[round(d, 4) for d in result.divergence],
        )
        history.append(record)
        report.event(  # as text: "fine-tune · epoch 3/10 · loss … · train acc … · 1.23 s"
            "finetune_epoch", stage=name, epoch=epoch + 1, epochs=epochs, loss=record.loss,
            train_accuracy=record.train_accuracy, seconds=record.seconds, learning_rate=lr,
            rounds=record.rounds, replica_divergence=record.replica_divergence,
        )
        message = divergence_warning(result.max_divergence, data.partitions)
        if message is not None and not warned:
            warned = True
            report.event("warning", level="warning", stage=name, message=f"{name}: {message}")
        if checkpoint is not None:
            records = [asdict(h) for h in history]
            checkpoint.save(name, loop.saved_state(), epoch + 1, records, last=epoch + 1 == epochs)
    return MLPParams.from_flat(loop.state[:size], sizes), history
