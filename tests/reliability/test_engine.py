"""Divergence guard and resume inside the engine, on the test session (no extra JVM).

- The training job stopped by divergence (run in-process): exit 2, one line naming layer,
  epoch and what diverged, the checkpoint of the last good epoch kept; reruns that would
  ignore it or resume it with other settings are refused (real processes, before Spark).
- NaN in the very first round, and a fine-tuning loss that explodes, are caught the same way.
- The `tied` schedule resumed from a checkpoint taken mid-layer 0 (past the tie point): layer 0
  is bit-identical to an uninterrupted run, and the layer above trains to the end.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sparkdbn.config import TrainConfig
from sparkdbn.data import prepare
from sparkdbn.engine.checkpoint import MANIFEST, Checkpoint, checkpoint_dir
from sparkdbn.engine.pretrain import initial_params, layer_trainer
from sparkdbn.engine.schedules import pretrain
from sparkdbn.engine.training import train
from sparkdbn.errors import DivergenceError
from sparkdbn.metrics import RunLog
from tests.conftest import run_job
from tests.reliability.conftest import run_in_process

# A 784→8 Gaussian RBM; with --learning-rate 4 the first epoch ends finite, the second explodes.
DIVERGE_ARGS = (
    "--layers", "784,8", "--visible", "gaussian", "--epochs", "4", "--partitions", "2",
    "--finetune-epochs", "0", "--averaging", "plain",
)  # fmt: skip


def manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def train_path(fashion_parquet: Path) -> str:
    return str(fashion_parquet / "train")


def test_diverging_job_stops_and_keeps_the_last_good_checkpoint(spark, train_path, tmp_path):
    """Learning rate 4 on Gaussian units: epoch 2 explodes. Exit 2, one `error:` line; no
    output; the checkpoint holds epoch 1, finite. A rerun without --if-exists resume is refused
    while it exists, and so is resuming it with another learning rate (naming the key)."""
    out = tmp_path / "out"
    args = ("--train", train_path, "--output", str(out), *DIVERGE_ARGS, "--learning-rate", "4")
    result = run_in_process("train_dbn", *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: training diverged at layer 0, epoch 2/4: reconstruction error ")
    assert "exceeds 1000 × the first epoch's" in line and "lower learning_rate" in line
    assert line.endswith(f"the checkpoint of the last good epoch is kept in {checkpoint_dir(out)}")
    assert not out.exists()
    kept = manifest(checkpoint_dir(out))
    assert kept["trainers"]["layer_0"]["epoch"] == 1
    with np.load(checkpoint_dir(out) / kept["trainers"]["layer_0"]["file"]) as npz:
        assert npz["state"].dtype == np.float32 and np.isfinite(npz["state"]).all()

    again = run_job("train_dbn", *args)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: checkpoint '{checkpoint_dir(out)}' of an unfinished run exists; use "
        "--if-exists resume to continue it or --if-exists overwrite to start again"
    ]
    resumed = run_job("train_dbn", *args, "--learning-rate", "0.01", "--if-exists", "resume")
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines() == [
        f"error: cannot resume from '{checkpoint_dir(out)}': the config differs in "
        "learning_rate (4.0 → 0.01); use the same settings, or --if-exists overwrite"
    ]
    assert manifest(checkpoint_dir(out)) == kept  # refused runs leave it alone


def test_nan_in_the_first_round_is_caught(spark, train_path, tmp_path) -> None:
    """Learning rate 1e6 turns the very first round into NaN: DivergenceError for layer 0,
    epoch 1, and no checkpoint, since no epoch was good."""
    cfg = TrainConfig(layers=[784, 8], visible="gaussian", learning_rate=1e6, epochs=2,
                      partitions=2, averaging="plain").validate()
    checkpoint = Checkpoint(tmp_path / "ck", cfg.to_dict(), 1)
    with pytest.raises(DivergenceError) as caught:
        train(spark, cfg, str(tmp_path / "store"), train_path, out=io.StringIO(),
              checkpoint=checkpoint)
    message = str(caught.value)
    assert message.startswith("training diverged at layer 0, epoch 1/2: ")
    assert re.search(r"reconstruction error is nan|values are not finite", message)
    assert "kept in" not in message
    assert not checkpoint.directory.exists()


def test_exploding_finetuning_loss_is_caught(spark, train_path, tmp_path) -> None:
    """Fine-tuning at rate 1e6: the second epoch's loss exceeds 1000 × the first's. The
    checkpoint keeps the finished layer and fine-tuning's first epoch."""
    cfg = TrainConfig(layers=[784, 8], epochs=1, finetune_epochs=3, finetune_learning_rate=1e6,
                      partitions=2, averaging="plain").validate()
    checkpoint = Checkpoint(tmp_path / "ck", cfg.to_dict(), 1)
    with pytest.raises(DivergenceError) as caught:
        train(spark, cfg, str(tmp_path / "store"), train_path, out=io.StringIO(),
              checkpoint=checkpoint)
    message = str(caught.value)
    assert message.startswith("training diverged at fine-tune, epoch 2/3: loss ")
    assert "exceeds 1000 × the first epoch's" in message and "finetune_learning_rate" in message
    trainers = manifest(checkpoint.directory)["trainers"]
    assert {name: entry["epoch"] for name, entry in trainers.items()} == {
        "layer_0": 1, "fine-tune": 1,
    }


def test_tied_schedule_resumes_past_the_tie_point(spark, train_path, tmp_path) -> None:
    """A checkpoint with layer 0 after 2 of 3 epochs (made by the real trainer): the resumed
    tied run skips those epochs, ties layer 1 to layer 0 at once, and ends with layer 0
    bit-identical to an uninterrupted run (layer 1 depends on timing, as always)."""
    cfg = TrainConfig(layers=[784, 16, 784], epochs=3, schedule="tied", start_after=1,
                      final_epochs=1, partitions=2, seed=5, averaging="plain").validate()
    data = prepare(spark, train_path, partitions=2)
    try:
        full_run = RunLog("tied", io.StringIO())
        full = pretrain(spark, data, cfg, full_run, str(tmp_path / "a"))
        before = Checkpoint(tmp_path / "ck", cfg.to_dict(), 1)
        trainer = layer_trainer(
            spark, cfg, 0, initial_params(cfg, 0), RunLog("tied", io.StringIO()),
            checkpoint=before,
        )
        trainer.train_epoch(data)
        trainer.train_epoch(data)
        checkpoint = Checkpoint(tmp_path / "ck", cfg.to_dict(), 1)
        checkpoint.prepare("resume")
        run = RunLog("tied", io.StringIO())
        model = pretrain(spark, data, cfg, run, str(tmp_path / "b"), checkpoint)
    finally:
        data.unpersist()
    assert checkpoint.resumed == {"layer_0": 2}
    assert "layer 0 · resumed after epoch 2/3 (checkpoint)" in run.out.getvalue()
    for key in ("W", "vbias", "hbias"):
        assert np.array_equal(getattr(model.layers[0], key), getattr(full.layers[0], key)), key
    recon = [[e.recon_error for e in r.layers_by_index()[0].epochs] for r in (run, full_run)]
    assert recon[0] == recon[1] and len(recon[0]) == 3
    assert len(run.layers_by_index()[1].epochs) == 3
    assert model.layers[1].W.shape == (16, 784) and np.isfinite(model.layers[1].W).all()
    saved = manifest(checkpoint.directory)["trainers"]
    assert {name: entry["epoch"] for name, entry in saved.items()} == {"layer_0": 3, "layer_1": 3}
