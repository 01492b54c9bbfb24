"""ParDBN's layer-parallel schedules: upper layers train on rough representations.

`pipelined`: layer l publishes a rough version of its representation after `start_after` of its
epochs and then every `publish_every`, plus a final one. Layer l+1 starts on the first version,
moves to the newest one at each epoch boundary, and keeps its last `final_epochs` epochs for the
final version of its input (it waits for it if it gets there first). A rough version is, by
default (`rough_versions = "in_epoch"`), the positive phase of the epoch it follows, written by
that epoch's own stage: each row's P(h | v) under the weights its mini-batch met, at no extra
pass over the data. Where that cannot run (Spark Connect, very many partitions) or with
"after_epoch", it is a pass of its own with the epoch's averaged weights. The final version is
always such a pass, with the final weights. Upper layers check each version they load in their
first epoch on it instead of in a pass of its own, and keep it in Spark's cache only where
reading it again costs more than the cache (`cache_versions`).

`tied`: layer 0 trains `start_after` epochs; then every upper layer starts at once, its weights
tied to the layer below (W or Wᵀ, see `config.tie_plan`), and each publishes a version made
with those tied weights right away, so the first inputs come through the tied stack.
Afterwards as `pipelined`.

Each layer runs in its own driver thread with its own FAIR scheduler pool, so the layers'
Spark stages share the cluster. What each layer trains on depends on timing, so only layer 0
is bit-reproducible under these schedules; every epoch's input version is logged instead.
A resumed run restarts each layer from its own last checkpointed state and epoch, on the
newest version the store (kept when a checkpointed run fails) holds: layer 0 is still
bit-identical to an uninterrupted run, the upper layers are as timing-dependent as ever.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import SparkSession

from sparkdbn.config import TrainConfig, tie_plan
from sparkdbn.data import PACKED_ID, PACKED_LABEL, PACKED_X, PackedData
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.filesystem import check_shared
from sparkdbn.engine.jobinfo import described
from sparkdbn.engine.pretrain import initial_params, layer_trainer, pretrain_sequential
from sparkdbn.engine.rbm_trainer import LayerTrainer, RoughPublish
from sparkdbn.engine.representation import hidden_batches
from sparkdbn.engine.store import RepresentationStore, Version
from sparkdbn.kernels.rbm import RBMParams
from sparkdbn.metrics import LayerLog, RunLog, SpanRecord
from sparkdbn.model import DBNModel

WAIT_POLL_SECONDS = 0.5
LOCAL_POLL_SECONDS = 0.1


def tie(below: RBMParams, how: str) -> RBMParams:
    """A copy of the layer below as the next layer's start: W itself, or Wᵀ with swapped biases."""
    if how == "W":
        return below.copy()
    return RBMParams(
        np.ascontiguousarray(below.W.T), below.hbias.copy(), below.vbias.copy()
    )


def publishes_after(epoch_done: int, cfg: TrainConfig) -> bool:
    """Rough versions after start_after epochs, then every publish_every epochs."""
    since = epoch_done - cfg.start_after
    return since >= 0 and since % cfg.publish_every == 0


@dataclass
class Shared:
    """What the layer threads share: the stores, the tie point and the first failure."""

    stores: list[RepresentationStore]
    stop: threading.Event = field(default_factory=threading.Event)
    tie_ready: threading.Event = field(default_factory=threading.Event)
    tie_params: RBMParams | None = None
    errors: list[BaseException] = field(default_factory=list)
    results: dict[int, RBMParams] = field(default_factory=dict)
    wait_timeout: float | None = None  # seconds a layer may wait for input; None: forever


def caches_versions(cfg: TrainConfig, store: RepresentationStore) -> bool:
    """Whether a layer keeps the versions it loads from `store` in Spark's cache."""
    if cfg.cache_versions == "auto":
        return not store.on_local_disk
    return cfg.cache_versions == "always"


class _Input:
    """A layer's view of the store below: the newest version, with a reader lease, kept in
    Spark's cache when `cache`."""

    def __init__(
        self,
        store: RepresentationStore,
        reader: str,
        shared: Shared,
        run: RunLog,
        log: LayerLog,
        cache: bool = True,
    ) -> None:
        self.store = store
        self.reader = reader
        self.shared = shared
        self.run, self.log = run, log
        self.cache = cache
        self.version: Version | None = None
        self.data: PackedData | None = None
        # A writer in this application wakes the reader at its commit; one elsewhere is seen
        # at the next poll, which costs next to nothing on a local disk.
        self.poll = LOCAL_POLL_SECONDS if store.on_local_disk else WAIT_POLL_SECONDS

    def refresh(self, wait_for_final: bool = False) -> PackedData:
        """The newest committed version (or, when asked, the final one), loaded and cached.

        Keeps the current version when nothing newer exists; blocks only when there is
        nothing to train on yet or the final version is required, until the writer's commit
        wakes it (same application) or its next poll sees one.
        """
        started = time.monotonic()
        while True:
            if self.shared.stop.is_set():
                raise _Stopped
            seen = self.store.commits
            timeout = self.shared.wait_timeout
            if timeout is not None and time.monotonic() - started > timeout:
                what = "the final version" if wait_for_final else "a version"
                raise TimeoutError(
                    f"{self.reader} waited {timeout:.0f} s for {what} in {self.store}"
                )
            target = self.store.final() if wait_for_final else self.store.latest()
            have = self.version.number if self.version is not None else 0
            if target is not None and target.number > have:
                self._switch(target)
                return self.data
            if self.data is not None and (not wait_for_final or target is not None):
                return self.data
            self.store.wait_for_commit(seen, self.poll)

    def _switch(self, version: Version) -> None:
        started_at, start = self.run.now(), time.perf_counter()
        self.store.acquire(version, self.reader)
        try:
            loaded = self.store.load(version, deferred=True, cache=self.cache)
        except BaseException:
            self.store.release(version, self.reader)
            raise
        seconds = round(time.perf_counter() - start, 3)
        self.log.loads.append(SpanRecord(version.number, started_at, seconds))
        if self.data is not None:
            self.data.unpersist()
            self.store.release(self.version, self.reader)
        self.version, self.data = version, loaded

    def close(self) -> None:
        if self.data is not None:
            self.data.unpersist()
            self.store.release(self.version, self.reader)


class _Stopped(Exception):
    """Another layer failed; this one stops at its next epoch boundary."""


def _commit_version(
    store: RepresentationStore,
    trainer: LayerTrainer,
    data: PackedData,
    cfg: TrainConfig,
    epoch: int,
    batches,
    final: bool = False,
    in_epoch: bool = False,
    before_commit=None,
) -> None:
    """Publish `data` through `batches` (rows to the layer's representation) as a version made
    after `epoch`, collect old versions, and log the span.

    Probabilities are stored uncompressed, because float noise does not compress and the codec
    only costs time, while 0/1 samples compress well.
    """
    started_at, start = trainer.run.now(), time.perf_counter()
    columns = [PACKED_ID, PACKED_X] + ([PACKED_LABEL] if data.has_label else [])
    version = store.publish(
        data.rows(*columns),
        trainer.n_hidden,
        {"epoch": epoch, "final": final, **({"in_epoch": True} if in_epoch else {})},
        batches=batches,
        compression="none" if cfg.representation == "probabilities" else "snappy",
        before_commit=before_commit,
    )
    if final:
        store.mark_final(version)
    store.collect_garbage()
    seconds = round(time.perf_counter() - start, 3)
    trainer.log.publishes.append(SpanRecord(version.number, started_at, seconds, epoch, in_epoch))


def _publish(
    spark: SparkSession,
    store: RepresentationStore,
    trainer: LayerTrainer,
    data: PackedData,
    cfg: TrainConfig,
    final: bool = False,
) -> None:
    """Write the representation of `data` under the trainer's current weights as a version;
    the transform runs inside the write."""
    seed_key = (cfg.seed, trainer.layer, trainer.epoch)
    text = f"layer {trainer.layer} · publish after epoch {trainer.epoch}"
    batches = hidden_batches(trainer.params, cfg.representation, seed_key)
    with described(spark, text, trainer.pool):
        _commit_version(store, trainer, data, cfg, trainer.epoch, batches, final=final)


def _rough_publish(
    store: RepresentationStore, trainer: LayerTrainer, data: PackedData, cfg: TrainConfig
) -> RoughPublish:
    """Publish the coming epoch's positive phase over `data` as a rough version."""
    epoch = trainer.epoch + 1

    def write(batches, before_commit) -> None:
        _commit_version(
            store, trainer, data, cfg, epoch, batches, in_epoch=True, before_commit=before_commit
        )

    return RoughPublish(cfg.representation == "sample", write)


def make_shared(spark: SparkSession, cfg: TrainConfig, store_base: str) -> Shared:
    """One store per layer that has a layer above it: BASE/layer_0, BASE/layer_1, …"""
    n_layers = len(cfg.layers) - 1
    if n_layers > 1:
        check_shared(spark, store_base)
    return Shared(
        [
            RepresentationStore(spark, f"{store_base.rstrip('/')}/layer_{i}", cfg.keep_versions)
            for i in range(n_layers - 1)
        ]
    )


def run_layer(
    spark: SparkSession,
    layer: int,
    data: PackedData | None,
    cfg: TrainConfig,
    run: RunLog,
    shared: Shared,
    checkpoint: Checkpoint | None = None,
) -> RBMParams:
    """Train one layer under a concurrent schedule; layer 0 trains on `data`, the others on
    the store below. `sequential` here means: wait for the final version of the input.

    A layer the checkpoint holds continues from its saved state and epoch on the newest
    version in the store below (a tied layer needs no tie point then); a finished one only
    publishes its final version again if the store lacks it (killed between the two).
    """
    n_layers = len(cfg.layers) - 1
    top = layer == n_layers - 1
    out_store = None if top else shared.stores[layer]
    resumed = checkpoint is not None and checkpoint.has(f"layer_{layer}")
    if layer > 0 and cfg.schedule == "tied" and not resumed:
        while not shared.tie_ready.wait(WAIT_POLL_SECONDS):
            if shared.stop.is_set():
                raise _Stopped
        params = shared.tie_params
        for how in tie_plan(cfg.layers)[:layer]:
            params = tie(params, how)
    else:
        params = initial_params(cfg, layer)
    trainer = layer_trainer(spark, cfg, layer, params, run, f"layer{layer}", checkpoint)
    if layer == 0 and cfg.schedule == "tied" and trainer.epoch >= cfg.start_after:
        shared.tie_params = trainer.params  # resumed past the tie point
        shared.tie_ready.set()
    source = None
    if layer > 0:
        below = shared.stores[layer - 1]
        cache = caches_versions(cfg, below)
        source = _Input(below, f"layer{layer}", shared, run, trainer.log, cache)
    rough_limit = 0 if cfg.schedule == "sequential" else cfg.epochs - cfg.final_epochs
    try:
        current = data
        if out_store is not None and layer > 0 and cfg.schedule == "tied" and not resumed:
            current = source.refresh()
            _publish(spark, out_store, trainer, current, cfg)
        while not trainer.done:
            if shared.stop.is_set():
                raise _Stopped
            if source is not None:
                current = source.refresh(wait_for_final=trainer.epoch >= rough_limit)
            version = None if source is None else source.version.number
            rough = (
                out_store is not None
                and cfg.rough_versions == "in_epoch"
                and trainer.epoch + 1 < trainer.epochs
                and publishes_after(trainer.epoch + 1, cfg)
                and trainer.can_publish_rough(current)
            )
            if rough:
                publish = _rough_publish(out_store, trainer, current, cfg)
                trainer.train_epoch(current, version, publish)
            else:
                trainer.train_epoch(current, version)
            if layer == 0 and cfg.schedule == "tied" and trainer.epoch == cfg.start_after:
                shared.tie_params = trainer.params
                shared.tie_ready.set()
            if out_store is None:
                continue
            if trainer.done:
                _publish(spark, out_store, trainer, current, cfg, final=True)
            elif publishes_after(trainer.epoch, cfg) and not rough:
                _publish(spark, out_store, trainer, current, cfg)
        if out_store is not None and out_store.final() is None:
            if source is not None:
                current = source.refresh(wait_for_final=True)
            _publish(spark, out_store, trainer, current, cfg, final=True)
        if layer == 0 and not shared.tie_ready.is_set():
            shared.tie_params = trainer.params
            shared.tie_ready.set()
        shared.results[layer] = trainer.params
        return trainer.params
    finally:
        if source is not None:
            source.close()


def pretrain_concurrent(
    spark: SparkSession,
    data: PackedData,
    cfg: TrainConfig,
    run: RunLog,
    store_base: str,
    checkpoint: Checkpoint | None = None,
) -> DBNModel:
    """All layers in their own threads, handing representations over through the store."""
    n_layers = len(cfg.layers) - 1
    shared = make_shared(spark, cfg, store_base)

    def target(layer: int) -> None:
        try:
            run_layer(spark, layer, data, cfg, run, shared, checkpoint)
        except _Stopped:
            pass
        except BaseException as err:  # re-raised in the calling thread below
            shared.errors.append(err)
            shared.stop.set()

    threads = [
        threading.Thread(target=target, args=(layer,), name=f"sparkdbn-layer{layer}")
        for layer in range(n_layers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if shared.errors:
        raise shared.errors[0]
    layers = [shared.results[layer] for layer in range(n_layers)]
    return DBNModel(layers, cfg.visible, cfg.to_dict())


def pretrain(
    spark: SparkSession,
    data: PackedData,
    cfg: TrainConfig,
    run: RunLog,
    store_base: str,
    checkpoint: Checkpoint | None = None,
) -> DBNModel:
    if cfg.schedule == "sequential" or len(cfg.layers) == 2:
        return pretrain_sequential(spark, data, cfg, run, checkpoint)
    return pretrain_concurrent(spark, data, cfg, run, store_base, checkpoint)
