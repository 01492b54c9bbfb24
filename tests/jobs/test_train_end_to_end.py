"""The main job end to end on the real Fashion-MNIST sample: pretrain, fine-tune, evaluate,
beat the random-initialization baseline, and reload to the very same predictions.

evaluate.py runs in this process, on the test session (its CLI as a process is tested in
test_batch_jobs.py and test_readme.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparkdbn.datasets import load_mnist_dir
from sparkdbn.model import DBNModel
from tests.conftest import FIXTURE_DIR, run_job
from tests.reliability.conftest import run_in_process

ACCURACY_FLOOR = 0.55  # observed 0.616 (baseline 0.47) on the 500 test images; chance is 0.10


@pytest.fixture(scope="module")
def trained(fashion_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    result = run_job(
        "train_dbn", "--train", str(fashion_parquet / "train"), "--test",
        str(fashion_parquet / "test"), "--output", str(out), "--layers", "784,128,64",
        "--epochs", "3", "--partitions", "2", "--learning-rate", "0.05",
        "--finetune-epochs", "15", "--finetune-lr-schedule", "exponential",
        "--finetune-lr-decay", "0.97", "--baseline",
        "--baseline-learning-rate", "0.02", "--checkpoint-every", "0", "--averaging", "plain",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy (pretrained + fine-tuned)" in result.stdout
    return out


def test_accuracy_floor_and_baseline(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= ACCURACY_FLOOR, metrics["test_accuracy"]
    assert metrics["test_accuracy"] >= metrics["baseline_test_accuracy"]
    assert len(metrics["finetune"]) == len(metrics["baseline_finetune"]) == 15
    confusion = np.array(metrics["test_evaluation"]["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 500
    for name in ("learning_curves.png", "gantt.png", "filters.png", "evaluation.txt"):
        assert (trained / name).stat().st_size > 0


def test_reloaded_model_gives_identical_predictions(spark, trained: Path, fashion_parquet: Path,
                                                    tmp_path: Path) -> None:
    """evaluate.py on the saved model reproduces the training run's confusion matrix exactly,
    and numpy predictions of the reloaded model agree with it row by row."""
    out = tmp_path / "eval.json"
    result = run_in_process(
        "evaluate", "--model", str(trained / "model"), "--data", str(fashion_parquet / "test"),
        "--output", str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads(out.read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    assert evaluation["confusion_matrix"] == metrics["test_evaluation"]["confusion_matrix"]
    assert evaluation["accuracy"] == metrics["test_accuracy"]

    model = DBNModel.load(trained / "model")
    images, labels = load_mnist_dir(FIXTURE_DIR, "t10k")
    predicted = model.predict_proba(images).argmax(axis=1)
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels, predicted), 1)
    assert confusion.tolist() == evaluation["confusion_matrix"]
    again = DBNModel.load(trained / "model").predict_proba(images)
    assert np.array_equal(again, model.predict_proba(images))
