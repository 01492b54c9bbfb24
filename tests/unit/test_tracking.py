"""When MLflow tracking is on (sparkdbn.tracking's rule), decided without importing MLflow, and
a missing mlflow as a bad-input error. No Spark application starts here."""

from __future__ import annotations

import importlib.util

import pytest

from sparkdbn.config import TrainConfig
from sparkdbn.errors import InputError
from sparkdbn.tracking import Tracking, tracking_for, tracking_on


@pytest.mark.parametrize(
    ("settings", "env", "on"),
    [
        ({}, None, False),
        ({}, "sqlite:///x.db", True),
        ({"mlflow": False}, "sqlite:///x.db", False),
        ({"mlflow": True}, None, True),
        ({"mlflow_tracking_uri": "sqlite:///x.db"}, None, True),
        ({"mlflow_experiment": "dbn"}, None, True),
    ],
)
def test_the_rule(settings: dict, env: str | None, on: bool, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if env is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    assert tracking_on(TrainConfig(**settings)) is on


def test_off_is_the_plain_interface(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = tracking_for(TrainConfig())
    assert type(tracking) is Tracking


def test_on_without_mlflow_installed_is_bad_input(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(InputError, match=r"not installed: pip install 'sparkdbn\[mlflow\]'"):
        tracking_for(TrainConfig(mlflow=True))
