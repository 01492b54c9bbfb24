"""Train one RBM layer, epoch by epoch of averaging rounds, on whatever input the schedule gives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from sparkdbn.columns import pack_rows, unpack_rows
from sparkdbn.data import PACKED_X, PackedData
from sparkdbn.engine.averaging import (
    EmittingRound,
    EmittingStep,
    Local,
    PartitionStep,
    Round,
    RoundResult,
    StepResult,
    can_emit,
    exact_limbs,
    from_limbs,
)
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.faults import failing_first_attempt
from sparkdbn.engine.jobinfo import spark_context
from sparkdbn.engine.rounds import EpochResult
from sparkdbn.engine.store import Batches, checksum_of, checksum_terms
from sparkdbn.engine.trainer import AveragingTrainer, EpochPlan
from sparkdbn.kernels.averaging import AUTO, PRETRAINING, AveragingSettings
from sparkdbn.kernels.rates import learning_rate_at
from sparkdbn.kernels.rbm import (
    DTYPE,
    CDConfig,
    RBMParams,
    cd_epoch,
    hidden_probs,
    initial_chains,
    sample_bernoulli,
)
from sparkdbn.metrics import EpochRecord, LayerLog, RunLog


def _epoch(
    table: pa.Table, state: np.ndarray, rng: np.random.Generator, rows: np.ndarray,
    local: Local, n_visible: int, n_hidden: int, cfg: CDConfig, checksum: bool,
    hidden_out: np.ndarray | None = None, sample: bool = False,
) -> StepResult:
    """CD-k over the partition's `rows` from `state` ([parameters, momentum buffers]); the sums
    are the squared reconstruction error and, with `checksum`, those rows' checksum terms.

    PCD's chains are the partition's `local` array: they stay with the partition, never
    averaged, since each chain is a sample of its own and a mean of samples is none. The
    first round starts them at the partition's first rows (`initial_chains`), `pcd_chains`
    of them."""
    size = n_visible * n_hidden + n_visible + n_hidden
    X = unpack_rows(table.column(PACKED_X), n_visible)
    new_state = np.array(state, DTYPE)  # trained in place through the views below
    params = RBMParams.from_flat(new_state[:size], n_visible, n_hidden, copy=False)
    velocity = RBMParams.from_flat(new_state[size:], n_visible, n_hidden, copy=False)
    chains = None
    if cfg.cd == "pcd":
        carried = local.array
        start = initial_chains(X, cfg.pcd_chains) if carried is None else carried
        chains = np.array(start, DTYPE)  # a copy: a retried task starts from the same chains
    stats = cd_epoch(
        params, velocity, X, cfg, rng, hidden_out=hidden_out, hidden_sample=sample, rows=rows,
        chains=chains,
    )
    if chains is not None:
        local.array = chains
    terms = exact_limbs(checksum_terms(X[rows])) if checksum else []
    return new_state, stats.n_rows, np.array([stats.recon_sq_error, *terms])


def rbm_step(n_visible: int, n_hidden: int, cfg: CDConfig, checksum: bool = False) -> PartitionStep:
    """The per-partition work of one round: CD-k over the partition's rows of the round.

    The state is [parameters, momentum buffers], so momentum is averaged like the weights;
    PCD's chains are the partition's own (`Local`).
    With `checksum`, the rows' checksum terms ride along as two more sums (exact limbs).
    """

    def step(
        table: pa.Table, state: np.ndarray, rng: np.random.Generator, rows: np.ndarray,
        local: Local,
    ) -> StepResult:
        return _epoch(table, state, rng, rows, local, n_visible, n_hidden, cfg, checksum)

    return step


def rbm_emitting_step(
    n_visible: int, n_hidden: int, cfg: CDConfig, sample: bool, checksum: bool = False
) -> EmittingStep:
    """`rbm_step` that also emits every row of the partition (id, x, label) with x replaced by
    its positive phase: hidden probabilities, or sampled states with `sample`. The round's rows
    get it from their own mini-batch; the partition's other rows (an epoch of several rounds
    emits in its last) from the weights the round starts with."""

    def step(
        table: pa.Table, state: np.ndarray, rng: np.random.Generator, rows: np.ndarray,
        local: Local,
    ) -> tuple[StepResult, Iterator[pa.RecordBatch]]:
        H = np.empty((table.num_rows, n_hidden), DTYPE)
        others = np.ones(table.num_rows, bool)
        others[rows] = False
        if others.any():
            size = n_visible * n_hidden + n_visible + n_hidden
            start = RBMParams.from_flat(state[:size], n_visible, n_hidden)
            H[others] = hidden_probs(start, unpack_rows(table.column(PACKED_X), n_visible)[others])
        result = _epoch(
            table, state, rng, rows, local, n_visible, n_hidden, cfg, checksum, H, sample
        )
        if sample and others.any():  # drawn after the round's own draws, which stay as they were
            H[others] = sample_bernoulli(H[others], rng, out=np.empty_like(H[others]))
        return result, _with_hidden(table, H)

    return step


def _with_hidden(table: pa.Table, H: np.ndarray) -> Iterator[pa.RecordBatch]:
    """The table's batches with x replaced by the matching rows of H."""
    start = 0
    for batch in table.to_batches():
        columns = {name: batch.column(name) for name in batch.schema.names}
        columns[PACKED_X] = pack_rows(H[start : start + batch.num_rows])
        start += batch.num_rows
        yield pa.RecordBatch.from_pydict(columns)


@dataclass(frozen=True)
class RoughPublish:
    """Publish an epoch's positive phase as a rough version, written by the epoch's own stage.

    `write(batches, before_commit)` runs the stage: it publishes the training data's rows
    through `batches` (see `RepresentationStore.publish`), calling `before_commit` before the
    version becomes visible; `sample` says whether rows carry sampled states.
    """

    sample: bool
    write: Callable[[Batches, Callable[[], None]], None]


def initial_state(params: RBMParams) -> np.ndarray:
    """A layer's training state: its parameters, then zero momentum buffers of the same shape."""
    return np.concatenate([params.to_flat(), params.zeros_like().to_flat()])


class LayerTrainer(AveragingTrainer[EpochRecord]):
    """One RBM layer under the trainer loop; the schedule decides which data each epoch sees.

    With a checkpoint, the trainer starts from its saved state and epoch (if any) and saves
    after its epochs; every round's result passes the divergence guard before it is kept.
    """

    error_name = "reconstruction error"

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
        averaging: AveragingSettings = AUTO,
        lr_schedule: str = "exponential",
        lr_decay: float = 1.0,
    ) -> None:
        self.layer = layer
        self.cfg = cfg
        self.seed = seed
        self.run = run
        self.n_visible, self.n_hidden = params.n_visible, params.n_hidden
        self.averaging = averaging
        self.log: LayerLog = run.layer(layer, self.n_visible, self.n_hidden)
        self.final_momentum = final_momentum
        self.momentum_epochs = momentum_epochs
        self.lr_schedule, self.lr_decay = lr_schedule, lr_decay
        self.fail_partitions = fail_partitions
        super().__init__(
            spark, f"layer_{layer}", f"layer {layer}", {"layer": layer}, initial_state(params),
            params.to_flat().size, epochs, self.log.epochs, run.reporter, checkpoint, pool,
        )

    @property
    def params(self) -> RBMParams:
        return RBMParams.from_flat(self.state[: self.param_size], self.n_visible, self.n_hidden)

    def epoch_config(self) -> CDConfig:
        """The epoch's rate on its schedule (`learning_rate_at`), and Hinton's momentum
        schedule: the initial momentum first, then `final_momentum` if set."""
        momentum = self.cfg.momentum
        if self.final_momentum is not None and self.epoch >= self.momentum_epochs:
            momentum = self.final_momentum
        rate = learning_rate_at(
            self.cfg.learning_rate, self.epoch, self.epochs, self.lr_schedule, self.lr_decay
        )
        return dataclasses.replace(self.cfg, learning_rate=rate, momentum=momentum)

    def record_from(self, saved: dict[str, Any]) -> EpochRecord:
        return EpochRecord(**saved)

    def error_of(self, record: EpochRecord) -> float:
        return record.recon_error

    def remedy(self) -> str:
        gaussian = self.cfg.visible == "gaussian"
        hint = " (Gaussian visible units also need standardized data)" if gaussian else ""
        return f"lower learning_rate{hint}"

    def report(self, record: EpochRecord) -> None:
        self.run.record_epoch(self.log, record, self.epochs)
        if record.epoch + 1 >= self.epochs:
            self.log.finished_at = self.run.now()

    @staticmethod
    def _verify(data: PackedData, n_rows: int, sums: np.ndarray) -> None:
        """The data's owed first-pass check, over all the epoch's rows."""
        if data.check is not None:
            data.check.verify(n_rows, checksum_of(from_limbs(sums[1:3])))
            data.check = None

    def can_publish_rough(self, data: PackedData) -> bool:
        """Whether `train_epoch` can publish during the epoch here (see `EmittingRound`)."""
        return can_emit(spark_context(self.spark), self.state.size, data.partitions)

    def train_epoch(
        self, data: PackedData, version: int | None = None, publish: RoughPublish | None = None
    ) -> EpochRecord:
        """One epoch over `data`: its averaging rounds, seeded by seed, layer, epoch and
        partition (see `engine.rounds`).

        With `publish`, the epoch's last stage also writes the rows' positive phase as a rough
        version, which is committed only if the round passes its checks. Data that still owes
        its check (`PackedData.check`) is verified by this epoch's rounds; a mismatch raises
        CorruptVersionError and the epoch is not kept.
        """
        if data.width != self.n_visible:
            raise ValueError(
                f"layer {self.layer} expects {self.n_visible} inputs, got {data.width}"
            )
        if self.log.started_at is None:
            self.log.started_at = self.run.now()
        text = f"layer {self.layer} · epoch {self.epoch + 1}"
        seed_key = (self.seed, self.layer, self.epoch)
        cfg, checksum = self.epoch_config(), data.check is not None
        averaging = self.averaging.resolve(
            data.partitions, data.n_rows, cfg.batch_size, self.epochs, PRETRAINING
        )

        batch = averaging.batch_size or cfg.batch_size

        def round_config(index: int) -> CDConfig:
            factor = averaging.lr_factor(self.epoch, index)
            return dataclasses.replace(
                cfg, learning_rate=cfg.learning_rate * factor, batch_size=batch
            )

        def step(index: int) -> PartitionStep:
            return failing_first_attempt(
                rbm_step(self.n_visible, self.n_hidden, round_config(index), checksum),
                self.fail_partitions,
            )

        last_round = None
        if publish is not None:

            def last_round(
                state: np.ndarray, rnd: Round, settle: Callable[[RoundResult], None]
            ) -> None:
                emitting = failing_first_attempt(
                    rbm_emitting_step(
                        self.n_visible, self.n_hidden, round_config(rnd.index), publish.sample,
                        checksum,
                    ),
                    self.fail_partitions,
                )
                sc = spark_context(self.spark)
                emitter = EmittingRound(sc, state, emitting, seed_key, rnd, self.param_size)
                publish.write(emitter.batches, lambda: settle(emitter.result()))

        # The rounds before an emitting last round train as one stage (`epoch_rounds`).
        steps = [step(i) for i in range(averaging.rounds - (last_round is not None))]
        plan = EpochPlan(
            text + (" + rough version" if publish else ""), data.rows(PACKED_X), steps,
            seed_key, data.partitions, averaging, batch, last_round,
            accept=lambda done: self._verify(data, done.n_rows, done.sums),
        )

        def record(result: EpochResult, seconds: float) -> EpochRecord:
            return EpochRecord(
                epoch=self.epoch,
                recon_error=float(result.sums[0] / result.n_rows),
                seconds=round(seconds, 4),
                rows_per_second=round(result.n_rows / seconds, 1),
                input_version=version,
                rounds=averaging.rounds,
                replica_divergence=[round(d, 4) for d in result.divergence],
            )

        return self.run_epoch(plan, record)
