"""ParDBN schedules on real Spark and real Parquet: who overlaps whom, on which input versions,
what is deterministic, and whether rough inputs cost accuracy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from sparkdbn.config import TrainConfig
from sparkdbn.data import prepare
from sparkdbn.engine.schedules import pretrain
from sparkdbn.metrics import RunLog
from sparkdbn.model import DBNModel

BASE = dict(
    epochs=5, start_after=1, publish_every=1, final_epochs=2, learning_rate=0.05, seed=3,
    averaging="plain",
)


@pytest.fixture(scope="module")
def train_data(spark, fashion_parquet: Path):
    data = prepare(spark, str(fashion_parquet / "train"), partitions=2)
    yield data
    data.unpersist()


def run_schedule(spark, data, tmp_path: Path, **settings) -> tuple[DBNModel, RunLog]:
    cfg = TrainConfig(**{**BASE, **settings}).validate()
    run = RunLog(cfg.schedule, out=io.StringIO())
    model = pretrain(spark, data, cfg, run, str(tmp_path / f"store-{cfg.schedule}"))
    return model, run


@pytest.fixture(scope="module")
def runs(spark, train_data, tmp_path_factory) -> dict[str, tuple[DBNModel, RunLog]]:
    tmp = tmp_path_factory.mktemp("schedules")
    layers = [784, 64, 32]
    return {
        "sequential": run_schedule(spark, train_data, tmp, layers=layers),
        "sequential-again": run_schedule(spark, train_data, tmp, layers=layers),
        "pipelined": run_schedule(spark, train_data, tmp, layers=layers, schedule="pipelined"),
        "pipelined-after": run_schedule(
            spark, train_data, tmp, layers=layers, schedule="pipelined",
            rough_versions="after_epoch",
        ),
        # 8 epochs: layer 0 must still be training when the tied layers have published and
        # loaded their first inputs, even when a fixture epoch takes only 0.3 s.
        "tied": run_schedule(
            spark, train_data, tmp, layers=[784, 64, 784, 64], schedule="tied", epochs=8,
            final_epochs=1,
        ),
    }


def versions(run: RunLog, layer: int) -> list[int | None]:
    return [e.input_version for e in run.layers_by_index()[layer].epochs]


def span(run: RunLog, layer: int) -> tuple[float, float]:
    log = run.layers_by_index()[layer]
    return log.started_at, log.finished_at


@pytest.mark.parametrize("schedule", ["pipelined", "tied"])
def test_concurrent_schedules_overlap_layers_on_several_versions(runs, schedule: str) -> None:
    """Layer 1 starts before layer 0 finishes and sees at least two input versions."""
    _, run = runs[schedule]
    start_1, _ = span(run, 1)
    _, end_0 = span(run, 0)
    assert start_1 < end_0
    seen = versions(run, 1)
    assert None not in seen and len(set(seen)) >= 2
    assert seen == sorted(seen)  # always the newest version, never back to an older one


@pytest.mark.parametrize("schedule", ["pipelined", "tied"])
def test_last_epochs_train_on_the_final_version(runs, schedule: str) -> None:
    _, run = runs[schedule]
    cfg_final = 1 if schedule == "tied" else BASE["final_epochs"]
    seen = versions(run, 1)
    assert seen[-cfg_final:] == [max(seen)] * cfg_final


def test_hand_offs_are_logged_and_rough_versions_made_in_their_epoch(runs) -> None:
    """metrics.json's publishes: layer 0's rough versions came out of the epochs they follow
    (in_epoch), the final one from a pass with the final weights; layer 1 loaded every
    version it trained on, each once. With rough_versions = after_epoch, none is in_epoch."""
    _, run = runs["pipelined"]
    log0, log1 = run.layers_by_index()[0], run.layers_by_index()[1]
    publishes = [(p.version, p.after_epoch, p.in_epoch) for p in log0.publishes]
    epochs = BASE["epochs"]
    assert publishes == [(e, e, e < epochs) for e in range(1, epochs + 1)]
    assert all(p.seconds > 0 and p.started_at >= 0 for p in log0.publishes)
    assert [load.version for load in log1.loads] == sorted(set(versions(run, 1)))
    assert log1.publishes == [] and log0.loads == []
    _, after = runs["pipelined-after"]
    assert [p.in_epoch for p in after.layers_by_index()[0].publishes] == [False] * epochs
    assert run.to_dict()["layers"][0]["publishes"][0]["in_epoch"] is True


def test_tied_upper_layers_start_together(runs) -> None:
    """Under tied, layer 2 starts while layer 1 is still training, both before layer 0 ends."""
    _, run = runs["tied"]
    (s1, e1), (s2, _), (_, e0) = span(run, 1), span(run, 2), span(run, 0)
    assert s1 < e0 and s2 < e0 and s2 < e1


def test_sequential_never_overlaps(runs) -> None:
    _, run = runs["sequential"]
    for layer in (1,):
        assert span(run, layer)[0] >= span(run, layer - 1)[1]
        assert versions(run, layer) == [None] * BASE["epochs"]


def test_sequential_is_bit_reproducible(runs) -> None:
    a, _ = runs["sequential"]
    b, _ = runs["sequential-again"]
    for p, q in zip(a.layers, b.layers, strict=True):
        assert np.array_equal(p.W, q.W) and np.array_equal(p.hbias, q.hbias)


def test_layer_zero_does_not_depend_on_the_schedule(runs) -> None:
    """Layer 0 never reads rough data, so it is the same under every schedule and seed, and
    however its rough versions are made."""
    seq, _ = runs["sequential"]
    pipe, _ = runs["pipelined"]
    after, _ = runs["pipelined-after"]
    assert np.array_equal(seq.layers[0].W, pipe.layers[0].W)
    assert np.array_equal(seq.layers[0].W, after.layers[0].W)
    assert not np.array_equal(seq.layers[1].W, pipe.layers[1].W)  # rough inputs do matter


def test_pipelined_features_are_as_good_as_sequential(spark, runs, fashion_parquet) -> None:
    """A logistic regression (pyspark.ml) on the top-layer features of the real Fashion-MNIST
    sample: pipelined pretraining stays within 0.05 accuracy of sequential."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.linalg import Vectors

    from sparkdbn.datasets import load_mnist_dir
    from tests.conftest import FIXTURE_DIR

    splits = {name: load_mnist_dir(FIXTURE_DIR, name) for name in ("train", "t10k")}

    def accuracy(model: DBNModel) -> float:
        frames = {
            name: spark.createDataFrame(
                [(Vectors.dense(f), float(y)) for f, y in zip(model.transform(X), y, strict=True)],
                ["features", "label"],
            )
            for name, (X, y) in splits.items()
        }
        fitted = LogisticRegression(maxIter=100, regParam=1e-3).fit(frames["train"])
        pred = fitted.transform(frames["t10k"])
        return pred.filter("prediction = label").count() / pred.count()

    seq, pipe = accuracy(runs["sequential"][0]), accuracy(runs["pipelined"][0])
    print(f"logistic regression accuracy: sequential {seq:.3f}, pipelined {pipe:.3f}")
    assert seq > 0.5  # the features are informative at all (10 classes, chance 0.1)
    assert pipe >= seq - 0.05, (seq, pipe)
