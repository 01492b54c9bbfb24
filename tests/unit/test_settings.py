"""The settings schema and everything made from it agree: the flags, the TOML keys,
conf/default.toml, docs/jobs.md and the pyspark.ml params (names, converters, defaults, getters,
setters and keywords), and both surfaces check a value with the same rule and message. Each
test fails when one of them drifts from the schema (`sparkdbn.config.SETTINGS`).

No Spark application starts here: a stage's params are checked without fitting it.
"""

from __future__ import annotations

import argparse
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sparkdbn.config import BY_KEY, SETTINGS, add_arguments, load_config
from sparkdbn.errors import InputError
from sparkdbn.ml import (
    CONVERTERS,
    DBN,
    PARAM_SETTINGS,
    RBM,
    DBNClassificationModel,
    DBNClassifier,
    DBNModel,
    RBMModel,
    _check_params,
)
from sparkdbn.settings import CLASSIFIER, PRETRAIN, STACK, Rule, Setting

ROOT = Path(__file__).resolve().parents[2]

# The public names: renaming one breaks users' config files, scripts and notebooks.
KEYS = [
    "train", "test", "validation", "validation_fraction", "pseudo_likelihood_bits",
    "log_likelihood", "ais_chains", "ais_betas", "output", "layers", "visible", "epochs", "k",
    "cd", "pcd_chains", "learning_rate", "lr_schedule", "lr_decay", "momentum",
    "final_momentum", "momentum_epochs", "weight_decay", "batch_size", "sample_visible",
    "averaging", "rounds_per_epoch", "block_momentum", "block_learning_rate", "local_momentum",
    "local_lr_scale", "local_batch_size", "lr_warmup_epochs", "representation", "schedule",
    "start_after", "publish_every", "final_epochs", "rough_versions", "cache_versions",
    "store", "keep_versions", "finetune_epochs", "finetune_learning_rate", "finetune_momentum",
    "finetune_weight_decay", "finetune_batch_size", "finetune_dropout", "finetune_lr_decay",
    "finetune_lr_schedule", "n_classes", "baseline", "baseline_learning_rate", "seed",
    "partitions", "features_col", "label_col", "if_exists", "checkpoint_every",
    "fault_injection", "mlflow", "mlflow_tracking_uri", "mlflow_experiment",
]
PRETRAIN_PARAMS = [
    "averaging", "batchSize", "blockLearningRate", "blockMomentum", "cd", "checkpointDir",
    "checkpointInterval", "featuresCol", "k", "learningRate", "localBatchSize", "localLrScale",
    "localMomentum", "lrDecay", "lrSchedule", "lrWarmupEpochs", "maxIter", "momentum",
    "numPartitions", "pcdChains",
    "pseudoLikelihoodBits", "roundsPerEpoch", "seed", "validationFraction", "visible",
    "weightDecay",
]
STACK_PARAMS = [
    "cacheVersions", "finalEpochs", "keepVersions", "layers", "publishEvery", "representation",
    "roughVersions", "schedule", "startAfter", "storePath",
]
CLASSIFIER_PARAMS = [
    "finetuneBatchSize", "finetuneEpochs", "finetuneLearningRate", "finetuneLrDecay",
    "finetuneLrSchedule", "finetuneMomentum", "finetuneWeightDecay", "labelCol",
]
# Each stage: its settings' groups, and the output columns pyspark gives it.
STAGES = {
    RBM: ({PRETRAIN, "rbm"}, {"outputCol"}),
    DBN: ({PRETRAIN, STACK}, {"outputCol"}),
    DBNClassifier: (
        {PRETRAIN, STACK, CLASSIFIER}, {"predictionCol", "probabilityCol", "rawPredictionCol"}
    ),
}
MODELS = {RBMModel: RBM, DBNModel: DBN, DBNClassificationModel: DBNClassifier}


def test_keys_and_params_are_the_public_ones() -> None:
    assert [s.key for s in SETTINGS] == KEYS
    names = {cls: {p.name for p in cls().params} for cls in STAGES}
    assert names[RBM] == {*PRETRAIN_PARAMS, "numHidden", "outputCol"}
    assert names[DBN] == {*PRETRAIN_PARAMS, *STACK_PARAMS, "outputCol"}
    assert names[DBNClassifier] == {
        *PRETRAIN_PARAMS, *STACK_PARAMS, *CLASSIFIER_PARAMS,
        "predictionCol", "probabilityCol", "rawPredictionCol",
    }


def test_flags_are_the_settings() -> None:
    """One flag per setting, named after its key, of its type, without a default of its own
    (so that a TOML file can set it)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    assert list(actions) == KEYS
    for s in SETTINGS:
        action = actions[s.key]
        assert action.option_strings[0] == "--" + s.key.replace("_", "-")
        assert action.default is None
        if s.kind is bool:
            assert isinstance(action, argparse.BooleanOptionalAction)
        else:
            assert action.type is (str if s.kind is list else s.kind), s.key


def test_default_toml_lists_every_setting() -> None:
    """conf/default.toml sets every setting that has a default to it, and shows each one that
    is unset by default as a comment."""
    text = (ROOT / "conf" / "default.toml").read_text(encoding="utf-8")
    active = tomllib.loads(text)
    commented = re.findall(r"^#\s*([a-z_]+)\s*=", text, flags=re.MULTILINE)
    assert sorted([*active, *commented]) == sorted(KEYS)
    assert {key: BY_KEY[key].default for key in active} == active
    assert all(BY_KEY[key].default is None for key in commented)


def test_jobs_doc_names_only_settings() -> None:
    text = (ROOT / "docs" / "jobs.md").read_text(encoding="utf-8")
    table = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| ([^|]+) \|", table, flags=re.MULTILINE)) - {"setting", "---"}
    keys = {key for cell in named for key in re.findall(r"`([a-z_]+)`", cell)}
    assert keys and keys <= set(KEYS)


def test_every_param_setting_belongs_to_a_stage() -> None:
    groups = {group for stage_groups, _ in STAGES.values() for group in stage_groups}
    assert all(s.group in groups for s in PARAM_SETTINGS)
    assert all(s.group is None for s in SETTINGS if s.param is None)
    # Only fine-tuning's epochs differ: a classifier always fine-tunes.
    assert [s.key for s in SETTINGS if s.ml_default != s.default] == ["finetune_epochs"]


@pytest.mark.parametrize("cls", list(STAGES), ids=lambda c: c.__name__)
def test_stage_params_come_from_the_schema(cls: type) -> None:
    """Each of the stage's settings is a Param with its kind's converter, its default, a
    getter, a setter, and a keyword of __init__ and setParams at that default; the stage has
    no other params than those and pyspark's output columns."""
    groups, columns = STAGES[cls]
    stage, settings = cls(), [s for s in PARAM_SETTINGS if s.group in groups]
    assert {p.name for p in stage.params} == {s.param for s in settings} | columns
    for method in (cls.__init__, cls.setParams):
        keywords = inspect.signature(method).parameters
        assert set(keywords) - {"self"} == {p.name for p in stage.params}
        for name, keyword in keywords.items():
            if name != "self":
                assert keyword.default == _default(stage, name), (method, name)
    for s in settings:
        param = stage.getParam(s.param)
        assert param.typeConverter is CONVERTERS[s.kind], s.param
        assert _default(stage, s.param) == s.ml_default, s.param
        assert getattr(stage, f"get{s.title}")() == s.ml_default, s.param
        assert callable(getattr(cls, f"set{s.title}")), s.param
    model = next(m for m, estimator in MODELS.items() if estimator is cls)()
    assert {p.name for p in model.params} >= {s.param for s in settings}
    # A model scores any features column, and its training settings stay as trained.
    kept = [s for s in settings if s.key is not None and s.param != "featuresCol"]
    assert not any(hasattr(model, f"set{s.title}") for s in kept)


def _default(stage: Any, name: str) -> Any:
    return stage.getOrDefault(name) if stage.hasDefault(name) else None


def _bad(s: Setting, rule: Rule) -> Any:
    """A value of the setting's type that breaks the rule."""
    candidates = {int: [0, -1, 1], float: [0.0, -1.0, 1.0], str: ["bogus"]}[s.kind]
    return next(v for v in candidates if not rule.ok(v))


RULED = [s for s in PARAM_SETTINGS if s.ml_rule is not None and s.kind is not list]


@pytest.mark.parametrize("s", RULED, ids=lambda s: str(s.param))
def test_one_check_and_message_for_flags_files_and_params(s: Setting) -> None:
    """The same rule, in the same words, whether the value comes from a config or a param:
    "<config key | Stage param name> must <rule>, got <value>"."""
    cls = next(c for c, (groups, _) in STAGES.items() if s.group in groups)
    bad = _bad(s, s.ml_rule)
    stage = cls()._set(**{s.param: bad})
    message = rf"^{cls.__name__} param {s.param} must {re.escape(s.ml_rule.requirement)}, got "
    with pytest.raises(InputError, match=message):
        _check_params(stage)
    if s.key is not None and s.rule is not None:
        bad = _bad(s, s.rule)
        message = rf"^config {s.key} must {re.escape(s.rule.requirement)}, got "
        with pytest.raises(InputError, match=message):
            load_config(None, {s.key: bad})


def test_setters_and_copy_with_extra_params():
    clf = DBNClassifier().setLayers([32]).setSchedule("tied").setFinetuneEpochs(3)
    assert (clf.getLayers(), clf.getSchedule(), clf.getFinetuneEpochs()) == ([32], "tied", 3)
    copy = clf.copy({clf.layers: [8], clf.finetuneLearningRate: 0.5})
    assert (copy.getLayers(), copy.getFinetuneLearningRate()) == ([8], 0.5)
    assert (clf.getLayers(), clf.getFinetuneLearningRate()) == ([32], 0.2)
    assert copy.uid == clf.uid
