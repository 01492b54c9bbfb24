"""The publish policy: which of a layer's epochs end in a version of its representation, and
how each version is written into the store above the layer.

A layer publishes rough versions after `start_after` of its epochs and then every
`publish_every`, and the final version after its last epoch. A rough version is written by
the epoch's own stage where that can run and `rough_versions = "in_epoch"` asks for it (the
positive phase the epoch computes anyway); otherwise, and for the final version, it is a pass
of its own with the epoch's averaged weights. The schedules decide when a layer trains and on
which input; what it publishes is decided here, in one place for all of them. With the
overfitting monitors on, each version also gets its validation rows (`Monitoring.publish`),
and loses them when the store collects it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import SparkSession

from sparkdbn.config import TrainConfig
from sparkdbn.data import PACKED_ID, PACKED_LABEL, PACKED_X, PackedData
from sparkdbn.engine.jobinfo import described
from sparkdbn.engine.monitors import Monitoring
from sparkdbn.engine.rbm_trainer import LayerTrainer, RoughPublish
from sparkdbn.engine.representation import hidden_batches
from sparkdbn.engine.store import Batches, RepresentationStore
from sparkdbn.metrics import SpanRecord


@dataclass(frozen=True)
class PublishPolicy:
    """When a layer of `epochs` epochs publishes: a rough version after `start_after` epochs,
    then every `every`; after the last epoch the final version instead. `in_epoch`: rough
    versions come from the epoch's own stage where it can write them."""

    start_after: int
    every: int
    epochs: int
    in_epoch: bool

    @classmethod
    def of(cls, cfg: TrainConfig) -> PublishPolicy:
        return cls(
            cfg.start_after, cfg.publish_every, cfg.epochs, cfg.rough_versions == "in_epoch"
        )

    def rough_after(self, epochs_done: int) -> bool:
        """Whether the layer publishes a rough version once `epochs_done` epochs are done."""
        since = epochs_done - self.start_after
        return epochs_done < self.epochs and since >= 0 and since % self.every == 0


class Publisher:
    """One layer's versions in the store above it, under its `policy`.

    `at_start`: the layer publishes a version made with its starting weights before it trains
    (a tied layer, whose start is the trained layer below). With `monitoring`, `validation`
    gives the validation rows of the input the layer trains on at the time, which each
    version maps with the weights it is made with.
    """

    def __init__(
        self, spark: SparkSession, store: RepresentationStore, trainer: LayerTrainer,
        cfg: TrainConfig, policy: PublishPolicy, at_start: bool = False,
        monitoring: Monitoring | None = None,
        validation: Callable[[], PackedData | None] | None = None,
    ) -> None:
        self.spark = spark
        self.store = store
        self.trainer = trainer
        self.representation = cfg.representation
        self.seed = cfg.seed
        self.policy = policy
        self.at_start = at_start
        self.monitoring, self.validation = monitoring, validation
        self._in_epoch: int | None = None  # the number of the version the running epoch wrote

    def in_epoch(self, data: PackedData) -> RoughPublish | None:
        """The rough version the coming epoch over `data` writes itself, if it writes one."""
        trainer = self.trainer
        if not (
            self.policy.in_epoch
            and self.policy.rough_after(trainer.epoch + 1)
            and trainer.can_publish_rough(data)
        ):
            return None
        epoch = trainer.epoch + 1

        def write(batches: Batches, before_commit: Callable[[], None]) -> None:
            self._commit(data, epoch, batches, in_epoch=True, before_commit=before_commit)

        return RoughPublish(self.representation == "sample", write)

    def after_epoch(self, data: PackedData, published: bool) -> None:
        """After an epoch over `data` (which `published` a version itself or not): the final
        version after the last epoch, a rough version where the policy wants one."""
        if self._in_epoch is not None:  # its rows came from the epoch; its weights are now known
            self._follow(self._in_epoch)
            self._in_epoch = None
        if self.trainer.done:
            self.publish(data, final=True)
        elif self.policy.rough_after(self.trainer.epoch) and not published:
            self.publish(data)

    def lacks_final(self) -> bool:
        """The layer is done but the store has no final version (killed between the two)."""
        return self.store.final() is None

    def publish(self, data: PackedData, final: bool = False) -> None:
        """Write the representation of `data` under the trainer's current weights as a
        version; the transform runs inside the write."""
        trainer = self.trainer
        seed_key = (self.seed, trainer.layer, trainer.epoch)
        text = f"layer {trainer.layer} · publish after epoch {trainer.epoch}"
        batches = hidden_batches(trainer.params, self.representation, seed_key)
        with described(self.spark, text, trainer.pool):
            number = self._commit(data, trainer.epoch, batches, final=final)
        self._follow(number)

    def _follow(self, number: int) -> None:
        """Version `number`'s validation rows, through the weights the trainer has now."""
        if self.monitoring is not None:
            trainer = self.trainer
            self.monitoring.publish(
                trainer.layer, number, self.validation(), trainer.params, trainer.epoch,
                trainer.pool,
            )

    def _commit(
        self, data: PackedData, epoch: int, batches: Batches, final: bool = False,
        in_epoch: bool = False, before_commit: Callable[[], None] | None = None,
    ) -> int:
        """Publish `data` through `batches` (rows to the layer's representation) as a version
        made after `epoch`, collect old versions, log the span, and return its number.

        Probabilities are stored uncompressed, because float noise does not compress and the
        codec only costs time, while 0/1 samples compress well.
        """
        trainer, store = self.trainer, self.store
        started_at, start = trainer.run.now(), time.perf_counter()
        columns = [PACKED_ID, PACKED_X] + ([PACKED_LABEL] if data.has_label else [])
        version = store.publish(
            data.rows(*columns),
            trainer.n_hidden,
            {"epoch": epoch, "final": final, **({"in_epoch": True} if in_epoch else {})},
            batches=batches,
            compression="none" if self.representation == "probabilities" else "snappy",
            before_commit=before_commit,
        )
        if final:
            store.mark_final(version)
        collected = store.collect_garbage()
        if self.monitoring is not None:
            self.monitoring.published[trainer.layer].drop(collected)
        if in_epoch:
            self._in_epoch = version.number
        seconds = round(time.perf_counter() - start, 3)
        trainer.log.publishes.append(
            SpanRecord(version.number, started_at, seconds, epoch, in_epoch)
        )
        return version.number


class NoPublisher:
    """The top layer's: nothing above it reads a representation."""

    at_start = False

    def in_epoch(self, data: PackedData) -> None:
        return None

    def after_epoch(self, data: PackedData, published: bool) -> None:
        pass

    def lacks_final(self) -> bool:
        return False
