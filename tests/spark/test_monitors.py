"""The overfitting monitors on Spark (engine/monitors.py): their figures against numpy's of the
same rows and weights, and a monitored run's weights against an unmonitored one's, under the
sequential schedule and under the concurrent ones, whose upper layers train on rough versions;
and the fitted model's log-likelihood with the DBN's lower bound against enumeration."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkdbn import ml
from sparkdbn.config import TrainConfig
from sparkdbn.engine.rbm_trainer import LayerTrainer
from sparkdbn.engine.training import train
from sparkdbn.kernels import likelihood as lk
from sparkdbn.kernels.monitors import BOUND_SAMPLES, pseudo_log_likelihood
from sparkdbn.kernels.rbm import RBMParams, free_energy, hidden_probs
from tests import exact

WIDTH, TRAIN_ROWS, VALIDATION_ROWS = 16, 300, 400


def binary_rows(n: int, seed: int) -> np.ndarray:
    """Rows of two noisy prototypes, so the RBM has something to learn."""
    r = np.random.default_rng(seed)
    prototypes = r.random((2, WIDTH)) < 0.5
    rows = prototypes[r.integers(0, 2, n)] ^ (r.random((n, WIDTH)) < 0.1)
    return rows.astype(np.float32)


def write(path: Path, X: np.ndarray, first_id: int) -> str:
    path.mkdir()
    table = pa.table({
        "id": pa.array(np.arange(first_id, first_id + len(X)), pa.int64()),
        "features": pa.array([list(map(float, row)) for row in X], pa.list_(pa.float32())),
    })
    pq.write_table(table, path / "part-0.parquet")
    return str(path)


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory: pytest.TempPathFactory):
    """The same two-layer run with and without a validation set (more rows than the
    training set, so that the training subset is every training row)."""
    base = tmp_path_factory.mktemp("monitors")
    X, V = binary_rows(TRAIN_ROWS, 0), binary_rows(VALIDATION_ROWS, 1)
    train_path, validation = write(base / "train", X, 0), write(base / "validation", V, 10**6)
    common = dict(layers=[WIDTH, 6, 4], epochs=2, finetune_epochs=0, partitions=2, seed=5,
                  averaging="plain", checkpoint_every=0)
    results = {}
    for name, extra in (("off", {}), ("on", {"validation": validation,
                                               "pseudo_likelihood_bits": 0})):
        cfg = TrainConfig(**common, **extra).validate()
        results[name] = train(spark, cfg, str(base / f"store-{name}"), train_data=train_path,
                              out=io.StringIO())
    return results, X, V


def test_monitoring_changes_no_bit_of_the_model(runs) -> None:
    results, _, _ = runs
    off, on = results["off"].model, results["on"].model
    for a, b in zip(off.layers, on.layers, strict=True):
        for name in ("W", "vbias", "hbias"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
    assert all(e.monitors is None for log in results["off"].run.layers for e in log.epochs)


def test_last_epoch_figures_are_numpys(runs) -> None:
    """After the last epoch the weights are the model's: each layer's figures are numpy's
    free energies and exact pseudo-log-likelihoods of the rows as they reach that layer."""
    results, X, V = runs
    model = results["on"].model
    for log in results["on"].run.layers:
        assert [e.epoch for e in log.epochs] == [0, 1]
        assert all(e.monitors is not None for e in log.epochs)
        m = log.epochs[-1].monitors
        params = model.layers[log.layer]
        train_rows, validation_rows = model.transform(X, log.layer), model.transform(V, log.layer)
        assert (m["train_rows"], m["rows"]) == (TRAIN_ROWS, VALIDATION_ROWS)
        train_f = free_energy(params, train_rows, "bernoulli").mean()
        validation_f = free_energy(params, validation_rows, "bernoulli").mean()
        assert m["train_free_energy"] == pytest.approx(train_f, rel=1e-9)
        assert m["validation_free_energy"] == pytest.approx(validation_f, rel=1e-9)
        assert m["free_energy_gap"] == pytest.approx(validation_f - train_f, rel=1e-6, abs=1e-9)
        pll = pseudo_log_likelihood(params, validation_rows).mean()
        assert m["validation_pseudo_log_likelihood"] == pytest.approx(pll, rel=1e-9)


def test_log_likelihood_of_the_fitted_model(spark, runs) -> None:
    """`logLikelihood` of the ml model: each layer's figure near its exact value (6 and 4
    hidden units: log Z by enumeration), and the DBN's bound below the exact mean log p(v)."""
    results, _, V = runs
    stack = results["on"].model
    rows = [(i, [float(x) for x in row]) for i, row in enumerate(V)]
    df = spark.createDataFrame(rows, "id long, features array<float>")
    got = ml.DBNModel(stack).logLikelihood(df, aisChains=8, aisBetas=300, seed=1)
    assert got["n_rows"] == VALIDATION_ROWS and got["ais"]["chains"] == 8
    for i, layer in enumerate(got["layers"]):
        params = stack.layers[i]
        exact_ll = lk.mean_log_likelihood(params, stack.transform(V, i), lk.exact_log_z(params))
        assert layer["log_likelihood"] == pytest.approx(exact_ll, abs=0.1)
    log_p, bound = exact.dbn_log_prob_and_bound(stack.layers, V.astype(np.float64))
    figure = got["dbn_lower_bound"]
    assert figure["log_likelihood_lower_bound"] == pytest.approx(bound.mean(), abs=0.1)
    assert figure["log_likelihood_lower_bound"] < log_p.mean()
    assert figure["samples"] == BOUND_SAMPLES and figure["lower"] <= figure["upper"]


CONCURRENT = dict(
    epochs=5, finetune_epochs=0, partitions=2, seed=5, averaging="plain", checkpoint_every=0,
    start_after=1, publish_every=1, pseudo_likelihood_bits=0,
)


@pytest.fixture(scope="module")
def concurrent(spark, tmp_path_factory: pytest.TempPathFactory):
    """Two-layer runs under the concurrent schedules, each layer's weights recorded after every
    epoch: pipelined with rough versions written in the epoch, without and with validation
    data; tied (16-6-16 ties Wᵀ) with rough versions made by a pass of their own."""
    base = tmp_path_factory.mktemp("concurrent-monitors")
    X, V = binary_rows(TRAIN_ROWS, 0), binary_rows(VALIDATION_ROWS, 1)
    train_path, validation = write(base / "train", X, 0), write(base / "validation", V, 10**6)
    runs = {
        "off": dict(layers=[WIDTH, 6, 4], schedule="pipelined"),
        "on": dict(layers=[WIDTH, 6, 4], schedule="pipelined", validation=validation),
        "tied": dict(layers=[WIDTH, 6, WIDTH], schedule="tied", validation=validation,
                     rough_versions="after_epoch", final_epochs=1),
    }
    weights: dict[tuple[int, int], RBMParams] = {}
    train_epoch = LayerTrainer.train_epoch

    def recording(self: LayerTrainer, *args, **kwargs):
        record = train_epoch(self, *args, **kwargs)
        weights[(self.layer, self.epoch)] = self.params
        return record

    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LayerTrainer, "train_epoch", recording)
        for name, extra in runs.items():
            weights = {}
            cfg = TrainConfig(**CONCURRENT, **extra).validate()
            result = train(spark, cfg, str(base / f"store-{name}"), train_data=train_path,
                           out=io.StringIO())
            results[name] = result, weights
    return results, X, V


def test_concurrent_monitoring_changes_no_bit_of_layer_0(concurrent) -> None:
    results, _, _ = concurrent
    (off, _), (on, _) = results["off"], results["on"]
    for name in ("W", "vbias", "hbias"):
        assert np.array_equal(getattr(off.model.layers[0], name), getattr(on.model.layers[0], name))
    assert all(e.monitors is None for log in off.run.layers for e in log.epochs)


@pytest.mark.parametrize("name", ["on", "tied"])
def test_upper_layer_epochs_measure_the_version_they_name(concurrent, name: str) -> None:
    """Every epoch of both layers has figures; each of layer 1's is numpy's on the validation
    rows through layer 0's weights when it published the epoch's input version. The training
    side is exact where the version is a pass of those weights (tied's, and every final one);
    an in-epoch rough version's rows are positive phases of weights changing mid-epoch."""
    results, X, V = concurrent
    result, weights = results[name]
    logs = result.run.layers_by_index()
    assert all(e.monitors is not None for log in logs.values() for e in log.epochs)
    made_after = {span.version: span for span in logs[0].publishes}
    seen = [e.input_version for e in logs[1].epochs]
    assert len(set(seen)) >= 2 and seen[-1] == logs[0].publishes[-1].version  # rough, then final
    for epoch in logs[1].epochs:
        span = made_after[epoch.input_version]
        lower, upper = weights[(0, span.after_epoch)], weights[(1, epoch.epoch + 1)]
        m = epoch.monitors
        validation_rows = hidden_probs(lower, V)
        validation_f = free_energy(upper, validation_rows, "bernoulli").mean()
        assert m["validation_free_energy"] == pytest.approx(validation_f, rel=1e-6)
        pll = pseudo_log_likelihood(upper, validation_rows).mean()
        assert m["validation_pseudo_log_likelihood"] == pytest.approx(pll, rel=1e-6)
        assert (m["train_rows"], m["rows"]) == (TRAIN_ROWS, VALIDATION_ROWS)
        if not span.in_epoch:
            train_f = free_energy(upper, hidden_probs(lower, X), "bernoulli").mean()
            assert m["train_free_energy"] == pytest.approx(train_f, rel=1e-6)
