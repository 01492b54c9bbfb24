"""One layer of a DBN as its own application: ParDBN's layer-per-machine setting.

Layer 0 trains on the training data; layer L > 0 on the versions layer L-1's application
publishes into the shared store. An upper layer that starts before its first input version
warms its application up meanwhile (`engine.warmup`), so its start-up does not count against
the pipeline.
"""

from __future__ import annotations

from pyspark.sql import SparkSession

from sparkdbn.config import TrainConfig
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.pretrain import cd_config
from sparkdbn.engine.schedules import caches_versions, make_shared, run_layer
from sparkdbn.engine.training import prepare_training_data
from sparkdbn.engine.warmup import warm_up
from sparkdbn.kernels.rbm import RBMParams
from sparkdbn.logs import Reporter
from sparkdbn.metrics import RunLog


def pretrain_one_layer(
    spark: SparkSession,
    cfg: TrainConfig,
    layer: int,
    checkpoint: Checkpoint,
    wait_timeout: float,
    reporter: Reporter,
) -> tuple[RBMParams, RunLog]:
    """Train `layer` to its last epoch, publishing into `cfg.store` unless it is the top one.

    Reports `ready` once its store is open (an orchestrator may start the layer below then)
    and waits up to `wait_timeout` seconds for each version of the layer below.
    """
    data = None
    if layer == 0:
        data = prepare_training_data(spark, cfg, cfg.train)
        checkpoint.check_data(data.shape)
    shared = make_shared(spark, cfg, cfg.store)
    shared.wait_timeout = wait_timeout
    log = RunLog(cfg.schedule, reporter=reporter)
    reporter.event("ready", layer=layer)
    below = shared.stores[layer - 1] if layer > 0 else None
    if below is not None and below.latest() is None:
        seconds = warm_up(
            spark, below, f"layer{layer}", cfg.layers[layer], cfg.layers[layer + 1],
            cd_config(cfg, layer), cfg.partitions, caches_versions(cfg, below),
        )
        reporter.event("warmed_up", layer=layer, seconds=round(seconds, 2),
                       text=f"layer {layer} warmed up in {seconds:.1f} s, waiting for input")
    params = run_layer(spark, layer, data, cfg, log, shared, checkpoint)
    log.extra["layer"] = layer
    if checkpoint.resumed:
        log.extra["resumed_after_epochs"] = dict(checkpoint.resumed)
    return params, log
