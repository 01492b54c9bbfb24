"""Config: the documented defaults file matches the code, and bad values name their key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sparkdbn.config import TrainConfig, load_config
from sparkdbn.errors import InputError

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_default_toml_documents_the_real_defaults() -> None:
    assert load_config(CONF / "default.toml", {}) == TrainConfig()


def test_shipped_configs_are_valid() -> None:
    for name in ("fashion_mnist.toml", "scaling.toml"):
        cfg = load_config(CONF / name, {})
        assert cfg.layers[0] == 784 and cfg.finetune_epochs > 0


def test_flags_override_the_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("epochs = 3\nlayers = [10, 5]\nlearning_rate = 1\n")
    cfg = load_config(file, {"epochs": 7, "k": None})
    assert (cfg.epochs, cfg.layers, cfg.learning_rate, cfg.k) == (7, [10, 5], 1.0, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1", "unknown config key 'bogus'"),
        ("epochs = 'ten'", "config epochs must be int"),
        ("epochs = 0", "config epochs must be > 0"),
        ("k = -1", "config k must be > 0"),
        ("learning_rate = 0", "config learning_rate must be > 0"),
        ("momentum = 1.0", "config momentum must be in [0, 1)"),
        ("layers = [784]", "config layers must list at least two positive sizes"),
        ("layers = [784, 0]", "config layers must list at least two positive sizes"),
        ("layers = [784, 'a']", "config layers must be a list of integers"),
        ("visible = 'poisson'", "config visible must be one of bernoulli|gaussian"),
        ("schedule = 'eager'", "config schedule must be one of"),
        ("batch_size = 2.5", "config batch_size must be int"),
        ("sample_visible = 1", "config sample_visible must be bool"),
        ("cd = 'fast'", "config cd must be one of cd|pcd"),
        ("finetune_dropout = 1.0", "config finetune_dropout must be in [0, 1)"),
        ("baseline_learning_rate = 0", "config baseline_learning_rate must be > 0"),
        ("finetune_lr_schedule = 'step'", "config finetune_lr_schedule must be one of"),
        ("epochs = 2\nfinal_epochs = 3\nschedule = 'pipelined'", "must not exceed epochs"),
        ("epochs = [", "is not valid TOML"),
        ("averaging = 'mean'", "config averaging must be one of auto|plain|block|nesterov"),
        ("rounds_per_epoch = 0", "config rounds_per_epoch must be > 0"),
        ("block_momentum = 1.0", "config block_momentum must be in [0, 1)"),
        ("block_momentum = nan", "config block_momentum must be a finite number, got nan"),
        ("block_learning_rate = 0", "config block_learning_rate must be > 0, got 0.0"),
        ("block_learning_rate = inf", "config block_learning_rate must be a finite number"),
        ("local_momentum = 'kept'", "config local_momentum must be one of averaged|reset"),
        ("local_lr_scale = -2.0", "config local_lr_scale must be > 0"),
        ("lr_warmup_epochs = nan", "config lr_warmup_epochs must be a finite number"),
        ("lr_warmup_epochs = -1", "config lr_warmup_epochs must be >= 0"),
        # Non-finite values of every float setting, and the settings only fine-tuning uses
        ("learning_rate = nan", "config learning_rate must be a finite number, got nan"),
        ("weight_decay = inf", "config weight_decay must be a finite number, got inf"),
        ("finetune_learning_rate = inf", "config finetune_learning_rate must be a finite"),
        ("finetune_lr_decay = nan", "config finetune_lr_decay must be a finite number"),
        ("finetune_weight_decay = -inf", "config finetune_weight_decay must be a finite"),
        ("baseline_learning_rate = nan", "config baseline_learning_rate must be a finite"),
        ("final_momentum = nan", "config final_momentum must be a finite number"),
        ("seed = -1", "config seed must be >= 0, got -1"),
        ("finetune_lr_decay = 0.9", "applies to the exponential schedule only"),
        ("finetune_epochs = -1", "config finetune_epochs must be >= 0"),
        ("test = 'data/test'\nfinetune_epochs = 0", "finetune_epochs is 0 (pretraining only)"),
        # The monitors and the log-likelihood
        ("validation_fraction = 1.0", "config validation_fraction must be in [0, 1)"),
        ("pseudo_likelihood_bits = -1", "config pseudo_likelihood_bits must be >= 0"),
        ("ais_chains = 1", "config ais_chains must be >= 2, got 1"),
        ("validation = 'v'\nvalidation_fraction = 0.1",
         "config validation and validation_fraction both give validation data"),
        ("log_likelihood = true\nvisible = 'gaussian'",
         "config log_likelihood needs Bernoulli visible units, got visible 'gaussian'"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(text + "\n")
    with pytest.raises(InputError, match=re.escape(message)):
        load_config(file, {})


def test_missing_config_file() -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_config("/nonexistent/c.toml", {})


@pytest.mark.parametrize(
    "schedule, layers", [("pipelined", [4, 3, 2]), ("tied", [4, 3, 4]), ("sequential", [4, 3, 2])]
)
def test_monitors_under_every_schedule(tmp_path: Path, schedule: str, layers: list[int]) -> None:
    """The validation rows follow every version an upper layer trains on, so no schedule
    refuses them."""
    file = tmp_path / "c.toml"
    file.write_text(f"validation_fraction = 0.1\nlayers = {layers}\nschedule = '{schedule}'\n")
    cfg = load_config(file, {})
    assert (cfg.schedule, cfg.layers, cfg.validation_fraction) == (schedule, layers, 0.1)
