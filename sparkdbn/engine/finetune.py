"""Fine-tuning: the unrolled DBN trained by backprop with the same averaging rounds."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from sparkdbn.columns import unpack_rows
from sparkdbn.data import PACKED_LABEL, PACKED_X, PackedData
from sparkdbn.engine.averaging import PartitionStep, StepResult, average_round
from sparkdbn.engine.jobinfo import described
from sparkdbn.kernels.mlp import MLPParams, SGDConfig, sgd_epoch


@dataclass
class FinetuneEpoch:
    epoch: int
    loss: float
    train_accuracy: float
    seconds: float
    learning_rate: float


def mlp_step(sizes: list[int], cfg: SGDConfig) -> PartitionStep:
    """Per partition: one SGD epoch over its rows; the state is [parameters, velocity]."""
    size = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def step(table: pa.Table, state: np.ndarray, rng: np.random.Generator) -> StepResult:
        X = unpack_rows(table.column(PACKED_X), sizes[0])
        y = table.column(PACKED_LABEL).to_numpy().astype(np.int64, copy=False)
        params = MLPParams.from_flat(state[:size], sizes)
        velocity = MLPParams.from_flat(state[size:], sizes)
        stats = sgd_epoch(params, velocity, X, y, cfg, rng)
        new_state = np.concatenate([params.to_flat(), velocity.to_flat()])
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
    name: str = "fine-tune",
    report=print,
) -> tuple[MLPParams, list[FinetuneEpoch]]:
    """`epochs` averaging rounds of SGD; the learning rate shrinks by `lr_decay` per epoch."""
    sizes = params.sizes
    state = np.concatenate([params.to_flat(), params.zeros_like().to_flat()])
    history: list[FinetuneEpoch] = []
    for epoch in range(epochs):
        lr = cfg.learning_rate * lr_decay**epoch
        epoch_cfg = dataclasses.replace(cfg, learning_rate=lr)
        start = time.perf_counter()
        with described(spark, f"{name} · epoch {epoch + 1}"):
            result = average_round(
                data.df.select(PACKED_X, PACKED_LABEL),
                state,
                mlp_step(sizes, epoch_cfg),
                (*seed_key, epoch),
                data.partitions,
            )
        state = result.state
        record = FinetuneEpoch(
            epoch=epoch,
            loss=float(result.sums[0] / result.n_rows),
            train_accuracy=float(result.sums[1] / result.n_rows),
            seconds=round(time.perf_counter() - start, 4),
            learning_rate=lr,
        )
        history.append(record)
        report(
            f"{name} · epoch {epoch + 1}/{epochs} · loss {record.loss:.4f} · "
            f"train acc {record.train_accuracy:.4f} · {record.seconds:.2f} s"
        )
    size = state.size // 2
    return MLPParams.from_flat(state[:size], sizes), history
