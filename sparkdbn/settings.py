"""The settings schema: what a setting is, the rules it obeys and the one check of a value.

A setting is declared once, as a `TrainConfig` field made by `setting()` (sparkdbn/config.py):
its name is the TOML key and, with dashes, the command-line flag; its annotation is its type;
`setting()` adds the default, the help text, the rule and the pyspark.ml stages that have it as
a param (named in camelCase unless it says otherwise). Everything else is derived from those
declarations: the flags (`add_flags`), the TOML keys' types (`coerce`), the ml Params with their
getters and setters (sparkdbn/ml.py), and the check with its one message format,
"<source> <name> must <rule>, got <value>" (`check`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sparkdbn.errors import InputError

# The pyspark.ml stages a setting is a param of: every estimator, the stacks (DBN and
# DBNClassifier), the classifier only.
PRETRAIN, STACK, CLASSIFIER = "pretrain", "stack", "classifier"
_SAME = object()  # param_default: the setting's own default


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy: `requirement` completes "must …" ("be > 0")."""

    requirement: str
    ok: Callable[[Any], bool]


POSITIVE = Rule("be > 0", lambda v: v > 0)
NON_NEGATIVE = Rule("be >= 0", lambda v: v >= 0)
FRACTION = Rule("be in [0, 1)", lambda v: 0 <= v < 1)


def at_least(n: int) -> Rule:
    return Rule(f"be >= {n}", lambda v: v >= n)


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(f"be one of {'|'.join(choices)}", lambda v: v in choices)


@dataclass(frozen=True)
class Setting:
    """One setting, as every surface sees it.

    `key` is the TOML key and TrainConfig field (None for a setting only the ml stages have);
    `param` the pyspark.ml param of the stages in `group` (None: no ml param). The ml side may
    differ in its default (`param_default`) and be stricter (`param_rule`) where a fit has
    no use for a value the jobs accept, e.g. a classifier that does not fine-tune.
    """

    key: str | None
    kind: type
    default: Any
    help: str
    rule: Rule | None = None
    param: str | None = None
    group: str | None = None
    param_default: Any = _SAME
    param_rule: Rule | None = None

    @property
    def optional(self) -> bool:
        """Unset (None) is a value of its own: derived, or not used."""
        return self.default is None

    @property
    def flag(self) -> str:
        return "--" + str(self.key).replace("_", "-")

    @property
    def ml_default(self) -> Any:
        return self.default if self.param_default is _SAME else self.param_default

    @property
    def ml_rule(self) -> Rule | None:
        return self.param_rule or self.rule

    def describe(self, rule: Rule | None) -> str:
        """The help text with the rule: a flag's help, a param's doc."""
        return f"{self.help}; must {rule.requirement}" if rule else self.help

    @property
    def title(self) -> str:
        """`learningRate` → `LearningRate`, for the getter's and setter's names."""
        return str(self.param)[0].upper() + str(self.param)[1:]


def setting(
    default: Any,
    text: str,
    rule: Rule | None = None,
    *,
    param: str | None = None,
    group: str | None = None,
    param_default: Any = _SAME,
    param_rule: Rule | None = None,
) -> Any:
    """A TrainConfig field that declares a setting (see `settings_of`)."""
    spec = {"help": text, "rule": rule, "param": param, "group": group,
            "param_default": param_default, "param_rule": param_rule}
    if isinstance(default, list):
        return dataclasses.field(default_factory=default.copy, metadata={"setting": spec})
    return dataclasses.field(default=default, metadata={"setting": spec})


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The schema of a dataclass whose fields are made by `setting()`, in field order."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        spec = dict(f.metadata["setting"])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if spec["group"] is not None and spec["param"] is None:
            spec["param"] = camel_case(f.name)
        found.append(Setting(f.name, _base_type(hints[f.name]), default, **spec))
    return tuple(found)


def camel_case(key: str) -> str:
    """`learning_rate` → `learningRate`: a setting's ml param unless it names another."""
    first, *rest = key.split("_")
    return first + "".join(word.title() for word in rest)


def _base_type(hint: Any) -> type:
    """`int | None` → int, `list[int]` → list."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


@dataclass(frozen=True)
class Source:
    """Who gave the values, so that a message names what the user wrote: a config key
    (`config learning_rate`) or a stage's param (`DBN param learningRate`)."""

    prefix: str
    ml: bool = False

    def name(self, s: Setting) -> str:
        return str(s.param if self.ml and s.param else s.key)

    def where(self, s: Setting) -> str:
        return f"{self.prefix} {self.name(s)}"

    def rule(self, s: Setting) -> Rule | None:
        return s.ml_rule if self.ml else s.rule


CONFIG = Source("config")


def stage_source(stage_name: str) -> Source:
    return Source(f"{stage_name} param", ml=True)


def check(s: Setting, value: Any, source: Source) -> None:
    """One value against its setting: set (unless optional), finite, within its rule."""
    if value is None:
        if s.optional:
            return
        raise InputError(f"{source.where(s)} must be set, got None")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{source.where(s)} must be a finite number, got {value!r}")
    rule = source.rule(s)
    if rule is not None and not rule.ok(value):
        raise InputError(f"{source.where(s)} must {rule.requirement}, got {value!r}")


def coerce(s: Setting, value: Any, source: Source = CONFIG) -> Any:
    """A TOML or flag value checked against the setting's type (ints widen to float; a flag's
    "784,500" is a list of sizes)."""
    if s.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if s.kind is list:
        if isinstance(value, str):
            value = parse_sizes(str(s.key), value)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise InputError(f"{source.where(s)} must be a list of integers, got {value!r}")
        return value
    if not isinstance(value, s.kind) or (s.kind is int and isinstance(value, bool)):
        raise InputError(f"{source.where(s)} must be {s.kind.__name__}, got {value!r}")
    return value


def parse_sizes(key: str, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise InputError(f"{key} must be comma-separated integers, got {text!r}") from err


def add_flags(parser: argparse.ArgumentParser, settings: tuple[Setting, ...]) -> None:
    """One flag per setting; every default is None, so that a TOML file can fill it."""
    for s in settings:
        help_text = s.describe(s.rule)
        if "default:" not in s.help:
            help_text += f" (default: {_show(s.default)})"
        if s.kind is bool:
            parser.add_argument(s.flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            kind = str if s.kind is list else s.kind
            parser.add_argument(s.flag, type=kind, help=help_text, metavar=str(s.key).upper())


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
