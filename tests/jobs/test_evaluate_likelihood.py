"""jobs/evaluate.py --log-likelihood through its CLI: each layer's AIS log-likelihood of
the Fashion-MNIST sample within 0.1 nats of the exact value, at the default settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sparkdbn.datasets import load_mnist_dir, to_arrow_table
from sparkdbn.kernels import likelihood as lk
from sparkdbn.kernels.rbm import CDConfig, RBMParams, cd_epoch
from sparkdbn.model import DBNModel
from tests.conftest import FIXTURE_DIR, run_job


def trained(X: np.ndarray, n_hidden: int, seed: int) -> RBMParams:
    rng = np.random.default_rng(seed)
    params = RBMParams.init(X.shape[1], n_hidden, rng)
    velocity = params.zeros_like()
    for _ in range(5):
        cd_epoch(params, velocity, X, CDConfig(batch_size=20), rng)
    return params


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, DBNModel]:
    """A 784-16-8 DBN without a classifier, trained by the kernel, and the test images."""
    root = tmp_path_factory.mktemp("likelihood")
    train, _ = load_mnist_dir(FIXTURE_DIR, "train")
    first = trained(train, 16, seed=0)
    model = DBNModel([first, trained(DBNModel([first]).transform(train), 8, seed=1)])
    model.save(root / "model")
    images, labels = load_mnist_dir(FIXTURE_DIR, "t10k")
    (root / "test").mkdir()
    pq.write_table(to_arrow_table(images, labels), root / "test" / "part-00000.parquet")
    return root / "model", root / "test", model


@pytest.mark.slow
def test_the_job_estimates_every_layer_within_a_tenth_of_a_nat(saved, tmp_path: Path) -> None:
    model_dir, data, model = saved
    out = tmp_path / "eval.json"
    result = run_job("evaluate", "--model", str(model_dir), "--data", str(data),
                     "--log-likelihood", "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert "accuracy" not in figures  # no classifier
    assert figures["ais"] == {"chains": lk.DEFAULT_CHAINS, "betas": lk.DEFAULT_BETAS,
                              "groups": lk.DEFAULT_GROUPS, "schedule": lk.DEFAULT_SCHEDULE,
                              "seed": 0}
    X = load_mnist_dir(FIXTURE_DIR, "t10k")[0]
    layers = figures["layers_log_likelihood"]
    assert [layer["layer"] for layer in layers] == [0, 1]
    for i, params in enumerate(model.layers):
        exact_log_z = lk.exact_log_z(params)
        exact = lk.mean_log_likelihood(params, model.transform(X, upto=i), exact_log_z)
        got = layers[i]
        assert abs(got["log_likelihood"] - exact) < 0.1, (i, got, exact)
        assert got["log_z_lower"] <= exact_log_z <= got["log_z_upper"], (i, got, exact_log_z)
        assert got["log_likelihood_lower"] <= exact <= got["log_likelihood_upper"]
        assert got["n_rows"] == len(X)
    assert figures["log_likelihood"] == layers[0]["log_likelihood"]
    assert "log-likelihood" in result.stdout and "layer 1:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--ais-chains", "1"], "at least 2 chains"), (["--ais-betas", "0"], "at least one")],
)
def test_bad_settings_exit_2_before_spark(saved, tmp_path: Path, args, message) -> None:
    model_dir, data, _ = saved
    out = tmp_path / "eval.json"
    result = run_job("evaluate", "--model", str(model_dir), "--data", str(data),
                     "--log-likelihood", *args, "--output", str(out))
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "SparkContext" not in result.stderr and not out.exists()


def test_gaussian_models_are_refused(tmp_path: Path) -> None:
    model = DBNModel([RBMParams.init(4, 3, np.random.default_rng(0))], visible="gaussian")
    model.save(tmp_path / "model")
    result = run_job("evaluate", "--model", str(tmp_path / "model"), "--data",
                     str(tmp_path / "never-read"), "--log-likelihood")
    assert result.returncode == 2
    assert "needs Bernoulli visible units" in result.stderr, result.stderr[-2000:]
