"""The training settings: the schema, declared once, and the config of a run.

Every setting is a `TrainConfig` field made by `settings.setting()`: its name is the TOML key
and, with dashes, the flag (`learning_rate`, `--learning-rate`); the field carries its type,
default, help, rule and pyspark.ml param. The flags, the TOML loader, the ml Params and the
checks all come from `SETTINGS`. A config is defaults, then a TOML file, then flags, checked
here once, so that a bad setting is an `InputError` naming the key before any Spark work.
The CD-k and fine-tuning defaults are the kernels' own (`CDConfig`, `SGDConfig`): the kernels
cannot import from here, so the schema reads them from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparkdbn.errors import InputError
from sparkdbn.fsutil import RESUMABLE_IF_EXISTS
from sparkdbn.kernels.averaging import (
    CHOICES,
    DEFAULT_STRATEGY,
    LOCAL_MOMENTUM,
    AveragingSettings,
)
from sparkdbn.kernels.likelihood import DEFAULT_BETAS, DEFAULT_CHAINS
from sparkdbn.kernels.mlp import SGDConfig
from sparkdbn.kernels.rates import LR_SCHEDULES
from sparkdbn.kernels.rbm import CD_VARIANTS, VISIBLE_TYPES, CDConfig
from sparkdbn.settings import (
    CLASSIFIER,
    CONFIG,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PRETRAIN,
    STACK,
    Rule,
    Setting,
    Source,
    add_flags,
    at_least,
    check,
    coerce,
    one_of,
    setting,
    settings_of,
)

SCHEDULES = ("sequential", "pipelined", "tied")
REPRESENTATIONS = ("probabilities", "sample")
ROUGH_VERSIONS = ("in_epoch", "after_epoch")
CACHE_VERSIONS = ("auto", "always", "never")
CHOICES_OF_AVERAGING = CHOICES
# Fine-tuning epochs when finetune_epochs is not set and the training data has labels.
FINETUNE_EPOCHS = 20
SIZES = Rule("list at least two positive sizes", lambda v: len(v) >= 2 and min(v) > 0)


def _fault_partitions(spec: str) -> frozenset[int] | None:
    """'partition:1,3' → {1, 3}; None if `spec` does not look like that."""
    kind, _, numbers = spec.partition(":")
    try:
        parts = frozenset(int(n) for n in numbers.split(","))
    except ValueError:
        return None
    return parts if kind == "partition" and min(parts) >= 0 else None


FAULT_SPEC = Rule(
    "look like 'partition:1' or 'partition:0,2'", lambda v: _fault_partitions(v) is not None
)


_pretrain = functools.partial(setting, group=PRETRAIN)
_stack = functools.partial(setting, group=STACK)
_classifier = functools.partial(setting, group=CLASSIFIER)


@dataclass
class TrainConfig:
    """All settings of a training run: the schema (see the module's docstring). A setting of
    `_pretrain`, `_stack` or `_classifier` is also a param of those ml stages, named in
    camelCase (`learningRate`) unless `param` says otherwise."""

    train: str | None = setting(None, "training data (Parquet path)")
    test: str | None = setting(
        None, "held-out data (Parquet path): the classifier's accuracy and log_likelihood"
    )
    validation: str | None = setting(
        None,
        "validation data (Parquet path) for the overfitting monitors: each epoch, the mean free "
        "energy and pseudo-log-likelihood of these rows and of as many training rows",
    )
    validation_fraction: float = _pretrain(
        0.0,
        "hold out this fraction of the training rows (by id) as the monitors' validation data "
        "instead of --validation (0: none)",
        FRACTION,
    )
    pseudo_likelihood_bits: int = _pretrain(
        1,
        "bits per row the monitors' pseudo-log-likelihood flips, at random (1: scikit-learn's "
        "estimator; 0: every bit, exact, n_visible times the cost)",
        NON_NEGATIVE,
    )
    log_likelihood: bool = setting(
        False,
        "at the end, each RBM's log-likelihood of the test rows by AIS and the DBN's lower "
        "bound, into metrics.json (needs test data and Bernoulli visible units)",
    )
    ais_chains: int = setting(
        DEFAULT_CHAINS, "AIS chains per layer for log_likelihood", at_least(2)
    )
    ais_betas: int = setting(
        DEFAULT_BETAS, "AIS annealing steps per chain for log_likelihood", POSITIVE
    )
    output: str | None = setting(None, "output directory")
    layers: list[int] = setting([784, 500], "layer sizes, visible first, e.g. 784,500,2000", SIZES)
    visible: str = _pretrain(
        CDConfig.visible,
        "visible units: bernoulli for data in [0, 1], gaussian for standardized data",
        one_of(VISIBLE_TYPES),
    )
    epochs: int = _pretrain(10, "pretraining epochs per layer", POSITIVE, param="maxIter")
    k: int = _pretrain(CDConfig.k, "Gibbs steps of CD-k", POSITIVE)
    cd: str = _pretrain(
        CDConfig.cd,
        "where the negative phase starts: cd (CD-k, at the mini-batch's rows) | pcd (persistent "
        "CD, Tieleman 2008: at each partition's chains, kept across mini-batches and epochs)",
        one_of(CD_VARIANTS),
    )
    pcd_chains: int = _pretrain(
        CDConfig.pcd_chains, "persistent chains per partition under cd pcd", POSITIVE
    )
    learning_rate: float = _pretrain(CDConfig.learning_rate, "CD learning rate", POSITIVE)
    lr_schedule: str = _pretrain(
        "exponential",
        "CD learning rate schedule over the epochs: exponential (factor lr_decay per epoch; the "
        "default 1 keeps it constant) | cosine | linear (both anneal it to 0; linear is "
        "Tieleman's for pcd)",
        one_of(LR_SCHEDULES),
    )
    lr_decay: float = _pretrain(
        1.0, "CD learning rate factor per epoch, for the exponential schedule", POSITIVE
    )
    momentum: float = _pretrain(
        CDConfig.momentum, "CD momentum of the first momentum_epochs epochs", FRACTION
    )
    final_momentum: float | None = setting(
        None, "CD momentum after momentum_epochs (Hinton: 0.9; default: keep momentum)", FRACTION
    )
    momentum_epochs: int = setting(
        5, "epochs at the initial momentum before final_momentum", NON_NEGATIVE
    )
    weight_decay: float = _pretrain(CDConfig.weight_decay, "L2 weight decay of CD", NON_NEGATIVE)
    batch_size: int = _pretrain(CDConfig.batch_size, "mini-batch rows", POSITIVE)
    sample_visible: bool = setting(
        CDConfig.sample_visible, "sample visible states in the Gibbs chain (else mean field)"
    )
    averaging: str = _pretrain(
        DEFAULT_STRATEGY,
        "how the partitions' models are combined, in pretraining and fine-tuning: auto "
        "(derived from the partitions and their rows) | plain (the paper's average, once per "
        "epoch) | block | nesterov (block momentum, Chen & Huo)",
        one_of(CHOICES),
    )
    rounds_per_epoch: int | None = _pretrain(
        None, "averaging rounds per epoch (default: derived; plain: 1)", POSITIVE
    )
    block_momentum: float | None = _pretrain(None, "block momentum (default: derived)", FRACTION)
    block_learning_rate: float | None = _pretrain(
        None, "block learning rate (default: 1)", POSITIVE
    )
    local_momentum: str | None = _pretrain(
        None, "the partitions' momentum at each round (default: derived)", one_of(LOCAL_MOMENTUM)
    )
    local_lr_scale: float | None = _pretrain(
        None, "factor on the partitions' learning rates (default: derived; plain: 1)", POSITIVE
    )
    local_batch_size: int | None = _pretrain(
        None,
        "the partitions' mini-batch rows in pretraining and fine-tuning (default: derived; "
        "auto makes it smaller where partitions are small)",
        POSITIVE,
    )
    lr_warmup_epochs: float | None = _pretrain(
        None,
        "epochs over which the partitions' learning-rate factor is reached from 1 (default: "
        "derived)",
        NON_NEGATIVE,
    )
    representation: str = _stack(
        "probabilities", "what upper layers train on: hidden probabilities or binary samples",
        one_of(REPRESENTATIONS),
    )
    schedule: str = _stack(
        "sequential",
        "layer schedule (tied needs each layer's shape to equal, or be the transpose of, the "
        "one below)",
        one_of(SCHEDULES),
    )
    start_after: int = _stack(
        1, "epochs before a layer publishes its first rough version", POSITIVE
    )
    publish_every: int = _stack(1, "epochs between a layer's rough versions", POSITIVE)
    final_epochs: int = _stack(
        2,
        "epochs an upper layer trains on the final version of its input, at least; at most "
        "the epochs",
        POSITIVE,
    )
    rough_versions: str = _stack(
        "in_epoch",
        "how rough versions are made: in_epoch (the epoch's own positive phase, no extra "
        "pass) | after_epoch (a pass with the averaged weights)",
        one_of(ROUGH_VERSIONS),
    )
    cache_versions: str = _stack(
        "auto",
        "keep loaded versions in Spark's cache: auto (unless the store is on the local disk "
        "of a classic application, where rereading is as fast) | always | never",
        one_of(CACHE_VERSIONS),
    )
    store: str | None = setting(
        None, "representation store path (any Hadoop FS); default: inside OUTPUT"
    )
    keep_versions: int = _stack(
        3, "versions a store keeps per layer, besides leased and final ones", POSITIVE
    )
    finetune_epochs: int | None = _classifier(
        None,
        f"backprop fine-tuning epochs (0: pretraining only; default: {FINETUNE_EPOCHS} when "
        "the training data has the label column, else 0)",
        NON_NEGATIVE, param_default=FINETUNE_EPOCHS, param_rule=POSITIVE,
    )
    finetune_learning_rate: float = _classifier(
        SGDConfig.learning_rate, "fine-tuning SGD rate", POSITIVE
    )
    finetune_momentum: float = _classifier(SGDConfig.momentum, "fine-tuning momentum", FRACTION)
    finetune_weight_decay: float = _classifier(
        SGDConfig.weight_decay, "fine-tuning L2 weight decay", NON_NEGATIVE
    )
    finetune_batch_size: int = _classifier(
        SGDConfig.batch_size, "fine-tuning mini-batch rows", POSITIVE
    )
    finetune_dropout: float = setting(
        SGDConfig.dropout, "probability of dropping a hidden unit in fine-tuning", FRACTION
    )
    finetune_lr_decay: float = _classifier(
        1.0, "fine-tuning learning rate factor per epoch, for the exponential schedule", POSITIVE
    )
    finetune_lr_schedule: str = _classifier(
        "cosine", "fine-tuning learning rate schedule: exponential (factor finetune_lr_decay "
        "per epoch) | cosine | linear (both anneal it to 0)",
        one_of(LR_SCHEDULES),
    )
    n_classes: int | None = setting(
        None, "output classes (default: largest label + 1)", at_least(2)
    )
    baseline: bool = setting(
        False, "also fine-tune the same net from random weights, for comparison"
    )
    baseline_learning_rate: float | None = setting(
        None,
        "the baseline's SGD rate (default: finetune_learning_rate); a deep sigmoid net from "
        "random weights needs a smaller one",
        POSITIVE,
    )
    seed: int = _pretrain(0, "random seed", NON_NEGATIVE)
    partitions: int | None = _pretrain(
        None,
        "repartition the training data into this many partitions, by id (default: as given)",
        POSITIVE, param="numPartitions",
    )
    features_col: str = _pretrain("features", "features column")
    label_col: str = _classifier("label", "label column")
    if_exists: str = setting(
        "error", "what to do with an existing output or checkpoint",
        one_of(RESUMABLE_IF_EXISTS),
    )
    checkpoint_every: int = _pretrain(
        1, "epochs between checkpoints beside OUTPUT, for resume (0: none)", NON_NEGATIVE,
        param="checkpointInterval", param_rule=POSITIVE,
    )
    fault_injection: str | None = setting(
        None,
        "testing: 'partition:P[,P...]' makes those partitions' training tasks fail their "
        "first attempt (Spark retries need spark.task.maxFailures > 1)",
        FAULT_SPEC,
    )
    mlflow: bool | None = setting(
        None,
        "log the run to MLflow: settings, per-epoch metrics, outputs and a servable model "
        "(needs sparkdbn[mlflow]; default: on when mlflow_tracking_uri, mlflow_experiment or "
        "MLFLOW_TRACKING_URI is set, or an MLflow run is active)",
    )
    mlflow_tracking_uri: str | None = setting(
        None, "MLflow tracking URI, e.g. sqlite:///mlflow.db (default: MLflow's own, "
        "MLFLOW_TRACKING_URI if set)",
    )
    mlflow_experiment: str | None = setting(
        None, "MLflow experiment, created if missing (default: MLflow's own, "
        "MLFLOW_EXPERIMENT_NAME if set, or the active run's)",
    )

    def validate(self, source: Source = CONFIG) -> TrainConfig:
        """Every setting against its rule, then the rules between settings."""
        for s in SETTINGS:
            check(s, getattr(self, str(s.key)), source)
        check_relations(dataclasses.asdict(self), source)
        if self.schedule == "tied":
            tie_plan(self.layers)
        if self.test is not None:
            check_test_use(self)
        return self

    @property
    def averaging_settings(self) -> AveragingSettings:
        """How pretraining and fine-tuning combine the partitions' models."""
        return AveragingSettings(
            self.averaging, self.rounds_per_epoch, self.block_momentum,
            self.block_learning_rate, self.local_momentum, self.local_lr_scale,
            self.lr_warmup_epochs, self.local_batch_size,
        )

    @property
    def fail_partitions(self) -> frozenset[int]:
        """Partitions whose training tasks fail their first attempt (fault injection)."""
        return parse_fault_injection(self.fault_injection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SETTINGS: tuple[Setting, ...] = settings_of(TrainConfig)
BY_KEY: dict[str, Setting] = {str(s.key): s for s in SETTINGS}


def check_relations(values: Mapping[str, Any], source: Source = CONFIG) -> None:
    """The rules between settings whose values each passed their own."""
    final, epochs, schedule = (BY_KEY[k] for k in ("final_epochs", "epochs", "schedule"))
    if values["schedule"] != "sequential" and values["final_epochs"] > values["epochs"]:
        raise InputError(
            f"{source.where(final)} must not exceed {source.name(epochs)} ({values['epochs']}) "
            f"under {source.name(schedule)} {values['schedule']}, got {values['final_epochs']}"
        )
    _check_monitors(values, source)
    for prefix in ("", "finetune_"):
        decay, lr_schedule = BY_KEY[f"{prefix}lr_decay"], BY_KEY[f"{prefix}lr_schedule"]
        if values[lr_schedule.key] != "exponential" and values[decay.key] != 1.0:
            raise InputError(
                f"{source.where(decay)} applies to the exponential schedule only "
                f"({source.name(lr_schedule)} is {values[lr_schedule.key]!r}), "
                f"got {values[decay.key]!r}"
            )


def _check_monitors(values: Mapping[str, Any], source: Source) -> None:
    """One source of validation data, and the log-likelihood's formulas are for Bernoulli
    units."""
    validation, fraction = BY_KEY["validation"], BY_KEY["validation_fraction"]
    if values["validation"] is not None and values["validation_fraction"] > 0:
        raise InputError(
            f"{source.where(validation)} and {source.name(fraction)} both give validation "
            "data: set one of them"
        )
    if values["log_likelihood"] and values["visible"] != "bernoulli":
        raise InputError(
            f"{source.where(BY_KEY['log_likelihood'])} needs Bernoulli visible units, got "
            f"visible {values['visible']!r}"
        )


def check_test_use(cfg: TrainConfig) -> None:
    """Test data is scored by the fine-tuned classifier and by log_likelihood: without either
    it would be ignored."""
    if cfg.finetune_epochs == 0 and not cfg.log_likelihood:
        raise InputError(
            "config test gives data to measure the classifier's accuracy on, but "
            "finetune_epochs is 0 (pretraining only): set finetune_epochs or log_likelihood, "
            "or leave test out"
        )


def parse_fault_injection(spec: str | None) -> frozenset[int]:
    """'partition:1,3' → {1, 3}; None → no faults."""
    if spec is None:
        return frozenset()
    check(BY_KEY["fault_injection"], spec, CONFIG)
    return _fault_partitions(spec) or frozenset()


def read_toml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"config file {str(file)!r} does not exist")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"config file {str(file)!r} is not valid TOML: {err}") from err


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults ← TOML file ← overrides (flags that were given; None means not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update({k: _coerce(k, v) for k, v in read_toml(path).items()})
    values.update({k: _coerce(k, v) for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()


def _coerce(key: str, value: Any) -> Any:
    if key not in BY_KEY:
        raise InputError(f"unknown config key {key!r}; known keys are {sorted(BY_KEY)}")
    return coerce(BY_KEY[key], value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and one flag per setting."""
    parser.add_argument("--config", help="TOML file whose keys are these flags in snake_case")
    add_flags(parser, SETTINGS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return load_config(args.config, {key: getattr(args, key) for key in BY_KEY})


def tie_plan(layers: list[int]) -> list[str]:
    """How each upper layer's weights start under the tied schedule: "W" or "WT" of the layer
    below (ParDBN's note W² = W³ = W¹). A layer whose shape fits neither is a config error."""
    plan = []
    for i in range(1, len(layers) - 1):
        below, shape = (layers[i - 1], layers[i]), (layers[i], layers[i + 1])
        if shape == below:
            plan.append("W")
        elif shape == below[::-1]:
            plan.append("WT")
        else:
            raise InputError(
                f"schedule tied: layer {i} is {shape[0]}x{shape[1]} but layer {i - 1} is "
                f"{below[0]}x{below[1]}; tying needs the same shape (W) or its transpose (W^T), "
                "e.g. layers 784,500,500,500 does not tie but 784,500,784 or 500,500,500 does"
            )
    return plan
