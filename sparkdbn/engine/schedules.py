"""ParDBN's layer-parallel schedules: upper layers train on rough representations.

`pipelined`: layer l publishes rough versions of its representation while it trains, plus a
final one (when, and how they are written: `engine.publishing`). Layer l+1 starts on the first
version, moves to the newest one at each epoch boundary, and keeps its last `final_epochs`
epochs for the final version of its input (it waits for it if it gets there first). Upper
layers check each version they load in their first epoch on it instead of in a pass of its
own, and keep it in Spark's cache only where reading it again costs more than the cache
(`cache_versions`).

`tied`: layer 0 trains `start_after` epochs; then every upper layer starts at once, its weights
tied to the layer below (W or Wᵀ, see `config.tie_plan`), and each publishes a version made
with those tied weights right away, so the first inputs come through the tied stack.
Afterwards as `pipelined`.

A schedule is three pieces: its tie policy (`Untied`, `Tied`: where a layer starts), each
layer's `Publisher` (what it publishes) and `run_layer`, which holds only when a layer trains
and on which input.

Each layer runs in its own driver thread with its own FAIR scheduler pool, so the layers'
Spark stages share the cluster. What each layer trains on depends on timing, so only layer 0
is bit-reproducible under these schedules; every epoch's input version is logged instead.
A resumed run restarts each layer from its own last checkpointed state and epoch, on the
newest version the store (kept when a checkpointed run fails) holds: layer 0 is still
bit-identical to an uninterrupted run, the upper layers are as timing-dependent as ever.

With the overfitting monitors on, each version's validation rows go with it
(`monitors.PublishedValidation`), and an upper layer's monitor measures each epoch on those of
the version it trained on. It waits for them if it gets there before its publisher has mapped
them; a version from before a restart has none, and its epochs are recorded unmeasured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import SparkSession

from sparkdbn.config import TrainConfig, tie_plan
from sparkdbn.data import PackedData
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.filesystem import check_shared
from sparkdbn.engine.monitors import LayerMonitor, Monitoring
from sparkdbn.engine.pretrain import initial_params, layer_trainer, pretrain_sequential
from sparkdbn.engine.publishing import NoPublisher, Publisher, PublishPolicy
from sparkdbn.engine.rbm_trainer import LayerTrainer
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


class Untied:
    """The tie policy of `sequential` and `pipelined`: each layer starts from its own seeded
    weights."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def start(self, layer: int, resumed: bool) -> RBMParams:
        return initial_params(self.cfg, layer)

    def offer(self, trainer: LayerTrainer) -> None:
        """Nothing waits for a layer's weights."""

    def publishes_first(self, layer: int, resumed: bool) -> bool:
        return False


class Tied(Untied):
    """The tie policy of `tied`: layer 0 offers its weights once it has trained `start_after`
    epochs (or has finished); each upper layer that starts afresh waits for them, ties them up
    through the layers between (W or Wᵀ, `config.tie_plan`), and publishes a version made with
    its tied weights before it trains, so the first inputs come through the tied stack."""

    def __init__(self, cfg: TrainConfig, shared: Shared) -> None:
        super().__init__(cfg)
        self.shared = shared

    def start(self, layer: int, resumed: bool) -> RBMParams:
        if layer == 0 or resumed:  # a resumed layer's state comes from its checkpoint
            return super().start(layer, resumed)
        while not self.shared.tie_ready.wait(WAIT_POLL_SECONDS):
            if self.shared.stop.is_set():
                raise _Stopped
        params = self.shared.tie_params
        for how in tie_plan(self.cfg.layers)[:layer]:
            params = tie(params, how)
        return params

    def offer(self, trainer: LayerTrainer) -> None:
        ready = trainer.epoch >= self.cfg.start_after or trainer.done
        if trainer.layer == 0 and ready and not self.shared.tie_ready.is_set():
            self.shared.tie_params = trainer.params
            self.shared.tie_ready.set()

    def publishes_first(self, layer: int, resumed: bool) -> bool:
        return layer > 0 and not resumed


def tie_policy(cfg: TrainConfig, shared: Shared) -> Untied:
    """The schedule's tie policy."""
    return Tied(cfg, shared) if cfg.schedule == "tied" else Untied(cfg)


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
    monitoring: Monitoring | None = None,
) -> RBMParams:
    """Train one layer under a concurrent schedule; layer 0 trains on `data`, the others on
    the store below. `sequential` here means: wait for the final version of the input.

    The schedule's tie policy gives the layer's start and the publish policy its versions;
    here is only when the layer trains and on which input. A layer the checkpoint holds
    continues from its saved state and epoch on the newest version in the store below (a tied
    layer needs no tie point then); a finished one only publishes its final version again if
    the store lacks it (killed between the two). With `monitoring`, its epochs are measured
    and its versions carry their validation rows.
    """
    resumed = checkpoint is not None and checkpoint.has(f"layer_{layer}")
    tying = tie_policy(cfg, shared)
    params = tying.start(layer, resumed)
    trainer = layer_trainer(spark, cfg, layer, params, run, f"layer{layer}", checkpoint)
    tying.offer(trainer)
    source = None
    if layer > 0:
        below = shared.stores[layer - 1]
        cache = caches_versions(cfg, below)
        source = _Input(below, f"layer{layer}", shared, run, trainer.log, cache)
    validation = None
    if monitoring is not None:
        validation = _validation(monitoring, layer, source, shared)
        trainer.monitor = _monitor(monitoring, trainer, data, source, validation)
    at_start = tying.publishes_first(layer, resumed)
    publisher = _publisher(spark, cfg, shared, trainer, at_start, monitoring, validation)
    rough_limit = 0 if cfg.schedule == "sequential" else cfg.epochs - cfg.final_epochs
    try:
        current = data
        if publisher.at_start:
            current = source.refresh()
            publisher.publish(current)
        while not trainer.done:
            if shared.stop.is_set():
                raise _Stopped
            if source is not None:
                current = source.refresh(wait_for_final=trainer.epoch >= rough_limit)
            version = None if source is None else source.version.number
            rough = publisher.in_epoch(current)
            trainer.train_epoch(current, version, rough)
            tying.offer(trainer)
            publisher.after_epoch(current, rough is not None)
        if publisher.lacks_final():
            if source is not None:
                current = source.refresh(wait_for_final=True)
            publisher.publish(current, final=True)
        tying.offer(trainer)
        shared.results[layer] = trainer.params
        return trainer.params
    finally:
        if source is not None:
            source.close()


def _validation(
    monitoring: Monitoring, layer: int, source: _Input | None, shared: Shared
) -> Callable[[], PackedData | None]:
    """The validation rows of the input the layer trains on now: the run's own for layer 0;
    above, those its publisher below keeps with the current version, once it has mapped them
    (None for a version from before a restart, which no weights here can map)."""
    if source is None:
        return lambda: monitoring.given

    def of_version() -> PackedData | None:
        version, published = source.version, monitoring.published[layer - 1]
        if version.writer != source.store.writer:
            return None
        while not published.wait(version.number, WAIT_POLL_SECONDS):
            if shared.stop.is_set():
                raise _Stopped
        return published.get(version.number)

    return of_version


def _monitor(
    monitoring: Monitoring, trainer: LayerTrainer, data: PackedData | None,
    source: _Input | None, validation: Callable[[], PackedData | None],
) -> LayerMonitor:
    """Layer 0's monitor, over the fixed training rows; an upper layer's, over the version it
    has just trained on (the trainer calls it right after the epoch, before the next refresh)."""
    layer, pool = trainer.layer, trainer.pool
    if source is None:
        visible = trainer.cfg.visible
        return monitoring.layer_monitor(layer, data, visible, pool)
    return monitoring.version_monitor(layer, lambda: (source.data, validation()), pool)


def _publisher(
    spark: SparkSession, cfg: TrainConfig, shared: Shared, trainer: LayerTrainer,
    at_start: bool, monitoring: Monitoring | None,
    validation: Callable[[], PackedData | None] | None,
) -> Publisher | NoPublisher:
    """The layer's publisher into the store above it; the top layer has none."""
    if trainer.layer == len(cfg.layers) - 2:
        return NoPublisher()
    store = shared.stores[trainer.layer]
    return Publisher(
        spark, store, trainer, cfg, PublishPolicy.of(cfg), at_start, monitoring, validation
    )


def pretrain(
    spark: SparkSession,
    data: PackedData,
    cfg: TrainConfig,
    run: RunLog,
    store_base: str,
    checkpoint: Checkpoint | None = None,
    monitoring: Monitoring | None = None,
) -> DBNModel:
    """Pretrain the stack under `cfg.schedule`: `sequential` (or one layer) layer after
    layer (`pretrain.pretrain_sequential`); otherwise all layers in their own threads, handing
    representations (and with `monitoring`, validation rows) over through the stores under
    `store_base`."""
    if cfg.schedule == "sequential" or len(cfg.layers) == 2:
        return pretrain_sequential(spark, data, cfg, run, checkpoint, monitoring)
    n_layers = len(cfg.layers) - 1
    shared = make_shared(spark, cfg, store_base)

    def target(layer: int) -> None:
        try:
            run_layer(spark, layer, data, cfg, run, shared, checkpoint, monitoring)
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
