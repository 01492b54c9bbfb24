"""Checkpoints on the paths beside train_dbn: the one-layer job and the pyspark.ml estimators.

- `jobs/pretrain_layer.py`, SIGKILLed after two checkpointed epochs and resumed with
  `--if-exists resume`, writes the bit-identical layer of an uninterrupted run.
- An estimator with `checkpointDir` continues from a checkpoint that the real trainer left
  after two of three epochs, to the bit-identical model of a fit without checkpoints, and
  removes the checkpoint when it succeeds; with PCD too, whose chains the checkpoint keeps.
"""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from sparkdbn.data import prepare
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.pretrain import initial_params, layer_trainer
from sparkdbn.metrics import RunLog
from sparkdbn.ml import RBM, _config
from tests.conftest import run_job, start_job
from tests.reliability.test_recovery import epoch, kill_when

LAYER_ARGS = (
    "--layer", "0", "--layers", "784,32", "--epochs", "5", "--partitions", "2", "--seed", "6",
    "--averaging", "plain", "--checkpoint-every", "1",
)  # fmt: skip


def load_layer(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "layer.npz", allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_pretrain_layer_resumes_bit_identically(fashion_parquet: Path, tmp_path: Path) -> None:
    train = str(fashion_parquet / "train")

    def args(name: str) -> tuple[str, ...]:
        return ("--train", train, "--store", str(tmp_path / f"store-{name}"),
                "--output", str(tmp_path / name / "out"), *LAYER_ARGS)  # fmt: skip

    (tmp_path / "killed").mkdir()
    (tmp_path / "whole").mkdir()
    out = tmp_path / "killed" / "out"
    # The uninterrupted reference runs meanwhile: Spark's start-up dominates every run.
    whole = start_job("pretrain_layer", *args("whole"))
    try:
        proc = start_job("pretrain_layer", *args("killed"))
        left, _ = kill_when(proc, out, lambda m: epoch(m, "layer_0") >= 2)
        assert 2 <= epoch(left, "layer_0") < 5 and not out.exists()
        resumed = run_job("pretrain_layer", *args("killed"), "--if-exists", "resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _, whole_err = whole.communicate(timeout=600)
    finally:
        if whole.poll() is None:
            os.killpg(whole.pid, signal.SIGKILL)
            whole.communicate()
    assert whole.returncode == 0, whole_err[-3000:]
    ours, theirs = load_layer(out), load_layer(tmp_path / "whole" / "out")
    for key in ("W", "vbias", "hbias"):
        assert np.array_equal(ours[key], theirs[key]), key
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_after_epochs"] == {"layer_0": epoch(left, "layer_0")}
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["out"]  # no checkpoint


@pytest.mark.parametrize("cd", ["cd", "pcd"])
def test_estimator_continues_from_its_checkpoint(
    spark, fashion_parquet: Path, tmp_path, cd: str
) -> None:
    df = spark.read.parquet(str(fashion_parquet / "train"))
    params = dict(numHidden=8, maxIter=3, numPartitions=2, seed=4, averaging="plain", cd=cd)
    reference = RBM(**params).fit(df)

    directory = tmp_path / "checkpoint"
    rbm = RBM(checkpointDir=str(directory), **params)
    cfg = _config(rbm, 784, [8])
    checkpoint = Checkpoint(directory / "state", cfg.to_dict(), cfg.checkpoint_every)
    checkpoint.prepare("error")
    data = prepare(spark, df.select("features", "id"), partitions=2)
    try:
        checkpoint.check_data(data.shape)
        trainer = layer_trainer(
            spark, cfg, 0, initial_params(cfg, 0), RunLog("sequential", io.StringIO()),
            checkpoint=checkpoint,
        )
        trainer.train_epoch(data)
        trainer.train_epoch(data)  # then the fit "dies": its checkpoint holds 2 of 3 epochs
        assert sorted(trainer.loop.local) == ([0, 1] if cd == "pcd" else [])
    finally:
        data.unpersist()

    resumed = rbm.fit(df)
    assert resumed.trainingMetrics["resumed_after_epochs"] == {"layer_0": 2}
    for key in ("W", "vbias", "hbias"):
        ours = getattr(resumed.stack.layers[0], key)
        assert np.array_equal(ours, getattr(reference.stack.layers[0], key)), key
    assert not directory.exists()
