"""Typed training configuration: defaults, then a TOML file, then command-line flags.

TOML keys are the flags' names in snake_case (`--learning-rate` is `learning_rate`). Every value
is checked here, once, so a bad setting is an `InputError` naming the key before any Spark work.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
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
from sparkdbn.kernels.mlp import LR_SCHEDULES

SCHEDULES = ("sequential", "pipelined", "tied")
REPRESENTATIONS = ("probabilities", "sample")
ROUGH_VERSIONS = ("in_epoch", "after_epoch")
CACHE_VERSIONS = ("auto", "always", "never")
VISIBLE = ("bernoulli", "gaussian")
CHOICES_OF_AVERAGING = CHOICES
# Fine-tuning epochs when finetune_epochs is not set and the training data has labels.
FINETUNE_EPOCHS = 20


@dataclass
class TrainConfig:
    """All settings of a training run; field docs double as the --help texts."""

    train: str | None = field(default=None, metadata={"help": "training data (Parquet path)"})
    test: str | None = field(default=None, metadata={"help": "held-out data (Parquet path)"})
    output: str | None = field(default=None, metadata={"help": "output directory"})
    layers: list[int] = field(
        default_factory=lambda: [784, 500],
        metadata={"help": "layer sizes, visible first, e.g. 784,500,500,2000"},
    )
    visible: str = field(default="bernoulli", metadata={"help": "bernoulli|gaussian"})
    epochs: int = field(default=10, metadata={"help": "pretraining epochs per layer"})
    k: int = field(default=1, metadata={"help": "Gibbs steps of CD-k"})
    learning_rate: float = field(default=0.1, metadata={"help": "CD learning rate"})
    momentum: float = field(default=0.5, metadata={"help": "CD momentum (first epochs)"})
    final_momentum: float | None = field(
        default=None, metadata={"help": "CD momentum after momentum_epochs (Hinton: 0.9)"}
    )
    momentum_epochs: int = field(
        default=5, metadata={"help": "epochs at the initial momentum before final_momentum"}
    )
    weight_decay: float = field(default=0.0002, metadata={"help": "L2 weight decay (CD)"})
    batch_size: int = field(default=100, metadata={"help": "mini-batch rows"})
    sample_visible: bool = field(
        default=False, metadata={"help": "sample visible states in the Gibbs chain"}
    )
    averaging: str = field(
        default=DEFAULT_STRATEGY,
        metadata={"help": "how the partitions' models are combined: auto (derived from the "
                  "partitions and their rows) | plain (the paper's average, once per epoch) | "
                  "block | nesterov (block momentum, Chen & Huo)"},
    )
    rounds_per_epoch: int | None = field(
        default=None,
        metadata={"help": "averaging rounds per epoch (default: derived; plain: 1)"},
    )
    block_momentum: float | None = field(
        default=None, metadata={"help": "block momentum in [0, 1) (default: derived)"}
    )
    block_learning_rate: float | None = field(
        default=None, metadata={"help": "block learning rate, > 0 (default: 1)"}
    )
    local_momentum: str | None = field(
        default=None,
        metadata={"help": "the partitions' momentum at each round: averaged | reset "
                  "(default: derived)"},
    )
    local_lr_scale: float | None = field(
        default=None,
        metadata={"help": "factor on the partitions' learning rates, > 0 (default: derived; "
                  "plain: 1)"},
    )
    local_batch_size: int | None = field(
        default=None,
        metadata={"help": "the partitions' mini-batch rows in pretraining and fine-tuning "
                  "(default: derived; auto makes it smaller where partitions are small)"},
    )
    lr_warmup_epochs: float | None = field(
        default=None,
        metadata={"help": "epochs over which local_lr_scale is reached from 1, >= 0 "
                  "(default: derived)"},
    )
    representation: str = field(
        default="probabilities",
        metadata={"help": "what upper layers train on: probabilities|sample"},
    )
    schedule: str = field(
        default="sequential", metadata={"help": "layer schedule: sequential|pipelined|tied"}
    )
    start_after: int = field(
        default=1, metadata={"help": "epochs before a layer publishes its first rough version"}
    )
    publish_every: int = field(
        default=1, metadata={"help": "epochs between a layer's rough versions"}
    )
    final_epochs: int = field(
        default=2, metadata={"help": "epochs an upper layer trains on the final input (at least)"}
    )
    rough_versions: str = field(
        default="in_epoch",
        metadata={"help": "how rough versions are made: in_epoch (the epoch's own positive "
                  "phase, no extra pass) | after_epoch (a pass with the averaged weights)"},
    )
    cache_versions: str = field(
        default="auto",
        metadata={"help": "keep loaded versions in Spark's cache: auto (unless the store is on "
                  "the local disk of a classic application, where rereading is as fast) | "
                  "always | never"},
    )
    store: str | None = field(
        default=None,
        metadata={"help": "representation store path (any Hadoop FS); default: inside OUTPUT"},
    )
    keep_versions: int = field(default=3, metadata={"help": "versions a store keeps per layer"})
    finetune_epochs: int | None = field(
        default=None,
        metadata={"help": f"backprop fine-tuning epochs (0: pretraining only; default: "
                  f"{FINETUNE_EPOCHS} when the training data has the label column, else 0)"},
    )
    finetune_learning_rate: float = field(default=0.2, metadata={"help": "fine-tuning SGD rate"})
    finetune_momentum: float = field(default=0.9, metadata={"help": "fine-tuning momentum"})
    finetune_weight_decay: float = field(
        default=1e-5, metadata={"help": "fine-tuning L2 weight decay"}
    )
    finetune_batch_size: int = field(default=100, metadata={"help": "fine-tuning mini-batch"})
    finetune_dropout: float = field(
        default=0.0, metadata={"help": "probability of dropping a hidden unit in fine-tuning"}
    )
    finetune_lr_decay: float = field(
        default=1.0,
        metadata={"help": "fine-tuning learning rate factor per epoch (exponential schedule)"},
    )
    finetune_lr_schedule: str = field(
        default="cosine",
        metadata={"help": "fine-tuning learning rate schedule: exponential|cosine (to 0)"},
    )
    n_classes: int | None = field(
        default=None, metadata={"help": "output classes (default: largest label + 1)"}
    )
    baseline: bool = field(
        default=False,
        metadata={"help": "also fine-tune the same net from random weights, for comparison"},
    )
    baseline_learning_rate: float | None = field(
        default=None,
        metadata={"help": "the baseline's SGD rate (default: finetune_learning_rate); a deep "
                  "sigmoid net from random weights needs a smaller one"},
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    partitions: int | None = field(
        default=None, metadata={"help": "repartition the training data into N partitions"}
    )
    features_col: str = field(default="features", metadata={"help": "features column"})
    label_col: str = field(default="label", metadata={"help": "label column"})
    if_exists: str = field(
        default="error",
        metadata={"help": "existing output or checkpoint: error|overwrite|resume"},
    )
    checkpoint_every: int = field(
        default=1,
        metadata={"help": "epochs between checkpoints beside OUTPUT, for resume (0: none)"},
    )
    fault_injection: str | None = field(
        default=None,
        metadata={
            "help": "testing: 'partition:P[,P...]' makes those partitions' training tasks fail "
            "their first attempt (Spark retries need spark.task.maxFailures > 1)"
        },
    )

    def validate(self) -> TrainConfig:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"config {f.name} must be a finite number, got {value!r}")
        positive = (
            "epochs", "k", "learning_rate", "batch_size", "start_after", "publish_every",
            "final_epochs", "keep_versions", "finetune_learning_rate", "finetune_batch_size",
            "finetune_lr_decay",
        )
        if self.baseline_learning_rate is not None and self.baseline_learning_rate <= 0:
            raise InputError(
                f"config baseline_learning_rate must be > 0, got {self.baseline_learning_rate!r}"
            )
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"config {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("rounds_per_epoch", "local_batch_size", "block_learning_rate",
                     "local_lr_scale"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise InputError(f"config {name} must be > 0, got {getattr(self, name)!r}")
        if self.lr_warmup_epochs is not None and self.lr_warmup_epochs < 0:
            raise InputError(
                f"config lr_warmup_epochs must be >= 0, got {self.lr_warmup_epochs!r}"
            )
        for name in ("momentum", "final_momentum", "finetune_momentum", "block_momentum"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 1:
                raise InputError(f"config {name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("weight_decay", "finetune_weight_decay", "finetune_epochs", "momentum_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise InputError(f"config {name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.finetune_dropout < 1:
            raise InputError(
                f"config finetune_dropout must be in [0, 1), got {self.finetune_dropout!r}"
            )
        if self.n_classes is not None and self.n_classes < 2:
            raise InputError(f"config n_classes must be >= 2, got {self.n_classes!r}")
        if self.seed < 0:
            raise InputError(f"config seed must be >= 0, got {self.seed!r}")
        if self.checkpoint_every < 0:
            raise InputError(f"config checkpoint_every must be >= 0, got {self.checkpoint_every!r}")
        parse_fault_injection(self.fault_injection)
        if self.partitions is not None and self.partitions <= 0:
            raise InputError(f"config partitions must be > 0, got {self.partitions!r}")
        if len(self.layers) < 2 or any(n <= 0 for n in self.layers):
            raise InputError(
                f"config layers must list at least two positive sizes, got {self.layers!r}"
            )
        choices = (
            ("visible", VISIBLE),
            ("averaging", CHOICES),
            ("representation", REPRESENTATIONS),
            ("schedule", SCHEDULES),
            ("rough_versions", ROUGH_VERSIONS),
            ("cache_versions", CACHE_VERSIONS),
            ("finetune_lr_schedule", LR_SCHEDULES),
            ("if_exists", RESUMABLE_IF_EXISTS),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"config {name} must be one of {'|'.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.schedule != "sequential" and self.final_epochs > self.epochs:
            raise InputError(
                f"config final_epochs ({self.final_epochs}) must not exceed epochs ({self.epochs})"
            )
        if self.finetune_lr_schedule != "exponential" and self.finetune_lr_decay != 1.0:
            raise InputError(
                f"config finetune_lr_decay ({self.finetune_lr_decay!r}) applies to the exponential "
                f"schedule only; finetune_lr_schedule is {self.finetune_lr_schedule!r}"
            )
        if self.local_momentum is not None and self.local_momentum not in LOCAL_MOMENTUM:
            raise InputError(
                f"config local_momentum must be one of {'|'.join(LOCAL_MOMENTUM)}, "
                f"got {self.local_momentum!r}"
            )
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


def _base_type(annotation: Any) -> type:
    """`int | None` → int, `list[int]` → list; the annotations here are strings (PEP 563)."""
    hint = typing.get_type_hints(TrainConfig)[annotation]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def coerce(key: str, value: Any) -> Any:
    """Check (and for ints in float fields, widen) one value against the field's type."""
    names = {f.name for f in fields(TrainConfig)}
    if key not in names:
        raise InputError(f"unknown config key {key!r}; known keys are {sorted(names)}")
    base = _base_type(key)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is list:
        if isinstance(value, str):
            value = parse_sizes(key, value)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise InputError(f"config {key} must be a list of integers, got {value!r}")
        return value
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise InputError(f"config {key} must be {base.__name__}, got {value!r}")
    return value


def check_test_use(cfg: TrainConfig) -> None:
    """Test data is scored by the fine-tuned classifier: without one it would be ignored."""
    if cfg.finetune_epochs == 0:
        raise InputError(
            "config test gives data to measure the classifier's accuracy on, but "
            "finetune_epochs is 0 (pretraining only): set finetune_epochs, or leave test out"
        )


def parse_fault_injection(spec: str | None) -> frozenset[int]:
    """'partition:1,3' → {1, 3}; None → no faults."""
    if spec is None:
        return frozenset()
    kind, _, numbers = spec.partition(":")
    try:
        parts = frozenset(int(n) for n in numbers.split(","))
    except ValueError:
        parts = frozenset({-1})
    if kind != "partition" or min(parts) < 0:
        raise InputError(
            f"config fault_injection must look like 'partition:1' or 'partition:0,2', got {spec!r}"
        )
    return parts


def parse_sizes(key: str, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise InputError(f"{key} must be comma-separated integers, got {text!r}") from err


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
        values.update({k: coerce(k, v) for k, v in read_toml(path).items()})
    values.update({k: coerce(k, v) for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field; every default is None so the TOML file can fill it."""
    parser.add_argument("--config", help="TOML file whose keys are these flags in snake_case")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        base = _base_type(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if "default:" not in help_text:
            help_text += f" (default: {_show(default)})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            kind = str if base is list else base
            parser.add_argument(flag, type=kind, help=help_text, metavar=f.name.upper())


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    return load_config(args.config, overrides)


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
