"""Greedy layer-wise pretraining of a DBN: the sequential schedule."""

from __future__ import annotations

import numpy as np
from pyspark.sql import SparkSession

from sparkdbn.config import TrainConfig
from sparkdbn.data import PackedData
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.monitors import Monitoring
from sparkdbn.engine.rbm_trainer import LayerTrainer
from sparkdbn.engine.representation import transform_cached
from sparkdbn.kernels.rbm import CDConfig, RBMParams
from sparkdbn.metrics import RunLog
from sparkdbn.model import DBNModel


def cd_config(cfg: TrainConfig, layer: int) -> CDConfig:
    """Layer 0 sees the data's unit type; upper layers see Bernoulli hidden units below."""
    return CDConfig(
        k=cfg.k,
        learning_rate=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        visible=cfg.visible if layer == 0 else "bernoulli",
        sample_visible=cfg.sample_visible,
        cd=cfg.cd,
        pcd_chains=cfg.pcd_chains,
    )


def layer_trainer(
    spark: SparkSession,
    cfg: TrainConfig,
    layer: int,
    params: RBMParams,
    run: RunLog,
    pool: str | None = None,
    checkpoint: Checkpoint | None = None,
) -> LayerTrainer:
    """A trainer for `layer` with the run's CD settings, momentum and rate schedules,
    checkpoint (which may hold where it left off) and fault injection."""
    return LayerTrainer(
        spark, layer, params, cd_config(cfg, layer), cfg.seed, cfg.epochs, run, pool,
        cfg.final_momentum, cfg.momentum_epochs, checkpoint, cfg.fail_partitions,
        cfg.averaging_settings, cfg.lr_schedule, cfg.lr_decay,
    )


def initial_params(cfg: TrainConfig, layer: int) -> RBMParams:
    rng = np.random.default_rng([cfg.seed, layer])
    return RBMParams.init(cfg.layers[layer], cfg.layers[layer + 1], rng)


def pretrain_sequential(
    spark: SparkSession,
    data: PackedData,
    cfg: TrainConfig,
    run: RunLog,
    checkpoint: Checkpoint | None = None,
    monitoring: Monitoring | None = None,
) -> DBNModel:
    """Train layer 0 to the end, hand its representation to layer 1, and so on.

    A layer the checkpoint holds as finished is not trained again; its representation is
    recomputed from its parameters (seeded by seed and layer) only if a layer above still
    needs it, exactly as the uninterrupted run computed it. With `monitoring`, the validation
    rows go up with the training rows and each layer's epochs are measured.
    """
    layers: list[RBMParams] = []
    current, level = data, 0  # `current` is the input of layer `level`
    for layer in range(len(cfg.layers) - 1):
        params = initial_params(cfg, layer)
        trainer = layer_trainer(spark, cfg, layer, params, run, checkpoint=checkpoint)
        if not trainer.done:
            while level < layer:
                seed_key = (cfg.seed, level)
                upper = transform_cached(current, layers[level], cfg.representation, seed_key)
                if current is not data:
                    current.unpersist()
                if monitoring is not None:
                    monitoring.advance(layers[level], level)
                current, level = upper, level + 1
            if monitoring is not None:
                visible = cd_config(cfg, layer).visible
                trainer.monitor = monitoring.layer_monitor(layer, current, visible)
            while not trainer.done:
                trainer.train_epoch(current)
        layers.append(trainer.params)
    if current is not data:
        current.unpersist()
    return DBNModel(layers, cfg.visible, cfg.to_dict())
