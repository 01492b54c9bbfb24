"""A whole training run as a library call: pretrain, fine-tune, evaluate (`outputs` writes it)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from sparkdbn.config import FINETUNE_EPOCHS, TrainConfig, check_test_use
from sparkdbn.data import PackedData, held_out, prepare
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.finetune import FinetuneEpoch, finetune
from sparkdbn.engine.likelihood import AISSettings, model_likelihood
from sparkdbn.engine.monitors import Monitoring
from sparkdbn.engine.predict import Evaluation, evaluate, predict_packed
from sparkdbn.engine.schedules import pretrain
from sparkdbn.errors import DivergenceError, InputError
from sparkdbn.kernels.mlp import SGDConfig, from_pretrained, init_mlp
from sparkdbn.logs import Reporter
from sparkdbn.metrics import RunLog
from sparkdbn.model import DBNModel


@dataclass
class TrainingResult:
    model: DBNModel
    run: RunLog
    finetune_history: list[FinetuneEpoch] = field(default_factory=list)
    evaluation: Evaluation | None = None
    baseline_history: list[FinetuneEpoch] = field(default_factory=list)
    baseline_evaluation: Evaluation | None = None
    log_likelihood: dict | None = None


def _sgd_config(cfg: TrainConfig) -> SGDConfig:
    return SGDConfig(
        cfg.finetune_learning_rate,
        cfg.finetune_momentum,
        cfg.finetune_weight_decay,
        cfg.finetune_batch_size,
        cfg.finetune_dropout,
    )


def _n_classes(cfg: TrainConfig, train: PackedData, test: PackedData | None) -> int:
    n = cfg.n_classes if cfg.n_classes is not None else max(2, (train.max_label or 0) + 1)
    for name, packed in (("training", train), ("test", test)):
        if packed is not None and packed.max_label is not None and packed.max_label >= n:
            raise InputError(
                f"column {cfg.label_col!r} of the {name} data has label {packed.max_label}, "
                f"beyond the {n} classes of the output layer (n_classes)"
            )
    return n


def prepare_training_data(
    spark: SparkSession, cfg: TrainConfig, source: str | DataFrame, require_label: bool = False
) -> PackedData:
    """The validated, cached training set, whose width must be the first layer's size; less
    the held-out rows when `validation_fraction` is set."""
    rows = held_out(cfg.validation_fraction, cfg.seed, False) if cfg.validation_fraction else None
    packed = prepare(
        spark, source, cfg.features_col, cfg.label_col, cfg.visible, cfg.partitions,
        require_label=require_label, rows=rows,
    )
    if packed.width != cfg.layers[0]:
        packed.unpersist()
        raise InputError(
            f"config layers starts with {cfg.layers[0]} visible units but column "
            f"{cfg.features_col!r} has {packed.width} values per row"
        )
    return packed


def prepare_validation_data(
    spark: SparkSession, cfg: TrainConfig, source: str | DataFrame, width: int
) -> PackedData | None:
    """The monitors' validation rows: `validation` as given, or the rows of the training data
    that `validation_fraction` holds out; None without either. Checked like training data,
    before any training, and every problem named as the validation data's."""
    if cfg.validation is None and not cfg.validation_fraction:
        return None
    held = cfg.validation is None
    where = "the held-out validation rows" if held else f"validation data {cfg.validation!r}"
    try:
        packed = prepare(
            spark, source if held else cfg.validation, cfg.features_col, cfg.label_col,
            cfg.visible, rows=held_out(cfg.validation_fraction, cfg.seed, True) if held else None,
        )
    except InputError as err:
        raise InputError(f"{where}: {err}") from err
    if packed.width != width:
        packed.unpersist()
        raise InputError(
            f"{where}: column {cfg.features_col!r} has {packed.width} values per row, the "
            f"training data {width}"
        )
    return packed


def resolve_finetune_epochs(cfg: TrainConfig, has_label: bool) -> TrainConfig:
    """Unset finetune_epochs: FINETUNE_EPOCHS when the training data has labels, else 0."""
    if cfg.finetune_epochs is not None:
        return cfg
    return dataclasses.replace(cfg, finetune_epochs=FINETUNE_EPOCHS if has_label else 0)


def train(
    spark: SparkSession,
    cfg: TrainConfig,
    store: str,
    train_data: str | DataFrame | None = None,
    test_data: str | DataFrame | None = None,
    out: TextIO | None = None,
    checkpoint: Checkpoint | None = None,
    reporter: Reporter | None = None,
) -> TrainingResult:
    """Validate the data, pretrain the stack, fine-tune and evaluate as configured.

    Progress goes to `reporter` (text or JSON lines); without one, as text lines to `out`
    (default: stdout).

    Both data sets are validated before any training, so bad input fails fast. Only the
    concurrent schedules write, and only rough representations into `store`; and the
    trainers into `checkpoint`, if given, from which a resumed run continues.
    """
    source = train_data if train_data is not None else cfg.train
    test_source = test_data if test_data is not None else cfg.test
    if source is None:
        raise InputError("no training data: give --train PATH")
    if test_source is not None:
        check_test_use(cfg)
    if cfg.log_likelihood and test_source is None:
        raise InputError("config log_likelihood measures the test rows: give test data")
    scores_test = test_source is not None and not cfg.log_likelihood  # a classifier only
    packed = prepare_training_data(
        spark, cfg, source, require_label=bool(cfg.finetune_epochs) or scores_test
    )
    cfg = resolve_finetune_epochs(cfg, packed.has_label)
    supervised = cfg.finetune_epochs > 0
    test = validation = monitoring = None
    try:
        if test_source is not None and (supervised or cfg.log_likelihood):
            test = prepare(
                spark, test_source, cfg.features_col, cfg.label_col, cfg.visible,
                require_label=supervised,
            )
            if test.width != packed.width:
                raise InputError(
                    f"test data has {test.width} features per row, training data {packed.width}"
                )
        validation = prepare_validation_data(spark, cfg, source, packed.width)
        n_classes = _n_classes(cfg, packed, test) if supervised else 0
        if checkpoint is not None:
            checkpoint.check_data(packed.shape)
        run = RunLog(cfg.schedule, out=out, reporter=reporter)
        run.extra["partitions"] = packed.partitions
        if validation is not None:
            monitoring = Monitoring(spark, cfg, packed, validation)
        model = pretrain(spark, packed, cfg, run, store, checkpoint, monitoring)
        result = TrainingResult(model, run)
        if supervised:
            _finetune_and_evaluate(spark, cfg, packed, test, n_classes, result, checkpoint)
        if cfg.log_likelihood:
            _log_likelihood(spark, cfg, test, model, result)
        if checkpoint is not None and checkpoint.resumed:
            run.extra["resumed_after_epochs"] = dict(checkpoint.resumed)
    except DivergenceError as err:
        if checkpoint is None or not checkpoint.exists():
            raise
        raise DivergenceError(
            f"{err}; the checkpoint of the last good epoch is kept in {checkpoint.directory}"
        ) from err
    finally:
        packed.unpersist()
        if monitoring is not None:
            monitoring.close()
        for held in (test, validation):
            if held is not None:
                held.unpersist()
    return result


def _log_likelihood(
    spark: SparkSession, cfg: TrainConfig, test: PackedData, pretrained: DBNModel,
    result: TrainingResult,
) -> None:
    """The end-of-training measure of the pretrained stack, the DBN's generative model (the
    fine-tuned weights are a classifier's): each RBM's log-likelihood of the test rows by AIS,
    and the DBN's lower bound."""
    settings = AISSettings(cfg.ais_chains, cfg.ais_betas, seed=cfg.seed)
    measured = model_likelihood(spark, test, pretrained, settings)
    result.log_likelihood = measured.to_dict()
    result.run.reporter.event("log_likelihood", text=measured.table(), **result.log_likelihood)


def _finetune_and_evaluate(
    spark: SparkSession,
    cfg: TrainConfig,
    packed: PackedData,
    test: PackedData | None,
    n_classes: int,
    result: TrainingResult,
    checkpoint: Checkpoint | None = None,
) -> None:
    report = result.run.reporter
    n_layers = len(cfg.layers) - 1
    stack = [(p.W, p.hbias) for p in result.model.layers]
    start = from_pretrained(stack, n_classes, np.random.default_rng([cfg.seed, n_layers]))
    tuned, result.finetune_history = finetune(
        spark, packed, start, _sgd_config(cfg), cfg.finetune_epochs, (cfg.seed, n_layers),
        cfg.finetune_lr_decay, cfg.finetune_lr_schedule, name="fine-tune", report=report,
        checkpoint=checkpoint, fail_partitions=cfg.fail_partitions,
        averaging=cfg.averaging_settings,
    )
    result.model = result.model.with_mlp(tuned)
    if test is not None:
        result.evaluation = evaluate(predict_packed(test, tuned), n_classes)
        # as text: "test accuracy (pretrained + fine-tuned): 0.8123"
        report.event("evaluation", stage="fine-tune", **result.evaluation.to_dict())
    if cfg.baseline:
        random_start = init_mlp(start.sizes, np.random.default_rng([cfg.seed, n_layers + 1]))
        base_cfg = _sgd_config(cfg)
        if cfg.baseline_learning_rate is not None:
            base_cfg = dataclasses.replace(base_cfg, learning_rate=cfg.baseline_learning_rate)
        base, result.baseline_history = finetune(
            spark, packed, random_start, base_cfg, cfg.finetune_epochs,
            (cfg.seed, n_layers + 1), cfg.finetune_lr_decay, cfg.finetune_lr_schedule,
            name="baseline", report=report,
            checkpoint=checkpoint, fail_partitions=cfg.fail_partitions,
            averaging=cfg.averaging_settings,
        )
        if test is not None:
            result.baseline_evaluation = evaluate(predict_packed(test, base), n_classes)
            report.event("evaluation", stage="baseline", **result.baseline_evaluation.to_dict())


def default_store(output: str | Path) -> Path:
    """Where rough representations go when --store is not given: beside the output, hidden."""
    target = Path(output).resolve()
    return target.with_name(f".{target.name}.store")


@contextmanager
def training_store(cfg: TrainConfig, checkpoint: Checkpoint) -> Iterator[str]:
    """The store a run trains with: --store as given, or its own `default_store`.

    Its own store starts empty unless a checkpoint resumes from its versions, is kept when a
    failed run leaves a checkpoint to resume from, and is removed otherwise.
    """
    if cfg.store:
        yield cfg.store
        return
    store = default_store(cfg.output)
    if not checkpoint.exists():
        shutil.rmtree(store, ignore_errors=True)  # a killed run's versions: not for a fresh run
    try:
        yield str(store)
    except BaseException:
        if not checkpoint.exists():  # else kept: a resumed run reads its versions
            shutil.rmtree(store, ignore_errors=True)
        raise
    shutil.rmtree(store, ignore_errors=True)
