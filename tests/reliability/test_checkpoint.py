"""The checkpoint on disk, without Spark: exact round trips, when it saves, what a leftover
checkpoint means for the next run, and every way a checkpoint or resume can be refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sparkdbn.config import TrainConfig
from sparkdbn.engine.checkpoint import MANIFEST, Checkpoint, check_finished, checkpoint_dir
from sparkdbn.errors import InputError

CONFIG = TrainConfig(layers=[6, 4], epochs=3).validate().to_dict()
SIZE = 2 * (6 * 4 + 6 + 4)
RECORD = {"epoch": 0, "recon_error": 0.1, "seconds": 1.0, "rows_per_second": 2.0,
          "input_version": None}


def state(seed: int) -> np.ndarray:
    """Float32 values whose bits a lossy round trip would change."""
    return np.random.default_rng(seed).standard_normal(SIZE).astype(np.float32) / 3


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_checkpoint_lives_beside_the_output(tmp_path: Path) -> None:
    assert checkpoint_dir(tmp_path / "runs" / "out") == tmp_path / "runs" / ".out.checkpoint"


def test_saves_every_n_epochs_and_the_last_and_restores_bit_for_bit(tmp_path: Path) -> None:
    """every=2: epoch 1 is skipped, 2 is saved, 3 (the last) too; the manifest names only the
    newest state file and the older one is gone; a resumed checkpoint returns the exact bits,
    the epoch and the records."""
    directory = tmp_path / "ck"
    checkpoint = Checkpoint(directory, CONFIG, every=2)
    checkpoint.save("layer_0", state(1), 1, [RECORD])
    assert not directory.exists()
    checkpoint.save("layer_0", state(2), 2, [RECORD] * 2)
    assert files(directory) == [MANIFEST, "layer_0-e000002.npz"]
    checkpoint.save("layer_0", state(3), 3, [RECORD] * 3, last=True)
    checkpoint.save("fine-tune", state(4), 2, [])
    assert files(directory) == [MANIFEST, "fine-tune-e000002.npz", "layer_0-e000003.npz"]

    resumed = Checkpoint(directory, CONFIG, every=2)
    resumed.prepare("resume")
    saved = resumed.restore("layer_0", SIZE)
    assert saved.epoch == 3 and saved.records == [RECORD] * 3
    assert saved.state.dtype == np.float32 and saved.state.tobytes() == state(3).tobytes()
    assert resumed.restore("layer_1", SIZE) is None
    assert resumed.resumed == {"layer_0": 3}


def test_partitions_local_arrays_round_trip(tmp_path: Path) -> None:
    """PCD's chains, one array per partition, come back with their partitions and bits; a
    trainer saved without any comes back with none."""
    chains = {0: state(5)[:12].reshape(2, 6), 3: state(6)[:18].reshape(3, 6)}
    checkpoint = Checkpoint(tmp_path / "ck", CONFIG, every=1)
    checkpoint.save("layer_0", state(1), 1, [RECORD], local=chains)
    checkpoint.save("layer_1", state(2), 1, [RECORD])
    resumed = Checkpoint(tmp_path / "ck", CONFIG, every=1)
    resumed.prepare("resume")
    local = resumed.restore("layer_0", SIZE).local
    assert sorted(local) == [0, 3]
    assert all(local[p].dtype == np.float32 and local[p].tobytes() == chains[p].tobytes()
               for p in chains)
    assert resumed.restore("layer_1", SIZE).local == {}


def test_every_zero_never_writes(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "ck", CONFIG, every=0)
    checkpoint.save("layer_0", state(1), 3, [], last=True)
    assert not (tmp_path / "ck").exists()


def saved_checkpoint(directory: Path) -> Checkpoint:
    checkpoint = Checkpoint(directory, CONFIG, every=1)
    checkpoint.check_data({"n_rows": 10, "width": 6, "partitions": 2})
    checkpoint.save("layer_0", state(1), 1, [RECORD])
    return checkpoint


def test_a_leftover_checkpoint_is_refused_or_cleared(tmp_path: Path) -> None:
    """--if-exists error refuses to start over an unfinished run's checkpoint; overwrite
    deletes it; a directory without a manifest (killed before the first save) is cleared."""
    directory = tmp_path / "ck"
    saved_checkpoint(directory)
    with pytest.raises(InputError, match=re.escape(
        f"checkpoint '{directory}' of an unfinished run exists; use --if-exists resume"
    )):
        Checkpoint(directory, CONFIG, 1).prepare("error")
    assert files(directory) == [MANIFEST, "layer_0-e000001.npz"]
    Checkpoint(directory, CONFIG, 1).prepare("overwrite")
    assert not directory.exists()
    directory.mkdir()
    (directory / ".layer_0-e000001.npz.tmp-1234").write_bytes(b"half")
    Checkpoint(directory, CONFIG, 1).prepare("error")
    assert not directory.exists()


def test_resume_needs_the_same_config_except_run_control(tmp_path: Path) -> None:
    """Differing settings are named with both values; if_exists, checkpoint_every,
    fault_injection and the MLflow tracking settings may change."""
    directory = tmp_path / "ck"
    saved_checkpoint(directory)
    other = {**CONFIG, "epochs": 5, "seed": 1}
    with pytest.raises(InputError, match=re.escape(
        f"cannot resume from '{directory}': the config differs in epochs (3 → 5), seed (0 → 1)"
    )):
        Checkpoint(directory, other, 1).prepare("resume")
    control = {**CONFIG, "if_exists": "resume", "checkpoint_every": 3,
               "fault_injection": "partition:1", "mlflow": True, "mlflow_experiment": "dbn"}
    resumed = Checkpoint(directory, control, 3)
    resumed.prepare("resume")
    assert resumed.restore("layer_0", SIZE).epoch == 1


def test_resume_needs_the_same_training_data(tmp_path: Path) -> None:
    directory = tmp_path / "ck"
    saved_checkpoint(directory)
    resumed = Checkpoint(directory, CONFIG, 1)
    resumed.prepare("resume")
    with pytest.raises(InputError, match=re.escape(
        "the training data has {'n_rows': 11, 'width': 6, 'partitions': 2}, the checkpoint was "
        "made with {'n_rows': 10, 'width': 6, 'partitions': 2}"
    )):
        resumed.check_data({"n_rows": 11, "width": 6, "partitions": 2})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated_manifest", "checkpoint '{dir}/checkpoint.json' is unreadable"),
        ("foreign_manifest", "checkpoint '{dir}/checkpoint.json' is unreadable (format 'x')"),
        ("missing_state", "checkpoint file '{dir}/layer_0-e000001.npz' is unreadable"),
        ("garbage_state", "checkpoint file '{dir}/layer_0-e000001.npz' is unreadable"),
        ("wrong_size", "checkpoint file '{dir}/layer_0-e000001.npz' holds float32[3], "
                       f"layer_0 needs float32[{SIZE}]"),
    ],
)
def test_a_damaged_checkpoint_is_an_input_error(tmp_path: Path, damage: str, message: str):
    directory = tmp_path / "ck"
    saved_checkpoint(directory)
    manifest, state_file = directory / MANIFEST, directory / "layer_0-e000001.npz"
    if damage == "truncated_manifest":
        manifest.write_text(manifest.read_text()[:40])
    elif damage == "foreign_manifest":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": "x"}))
    elif damage == "missing_state":
        state_file.unlink()
    elif damage == "garbage_state":
        state_file.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        np.savez(state_file, state=np.zeros(3, np.float32))
    with pytest.raises(InputError, match=re.escape(message.format(dir=directory))):
        resumed = Checkpoint(directory, CONFIG, 1)
        resumed.prepare("resume")
        resumed.restore("layer_0", SIZE)


def test_resume_of_a_finished_output(tmp_path: Path) -> None:
    """--if-exists resume on an existing output: fine for the same config, refused for
    another one or for a directory that is no finished run."""
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.json").write_text(json.dumps({"config": CONFIG}))
    check_finished(out, {**CONFIG, "if_exists": "resume"})
    with pytest.raises(InputError, match=re.escape(
        f"output '{out}' was trained with another config, differing in k (1 → 2)"
    )):
        check_finished(out, {**CONFIG, "k": 2})
    (out / "model" / "model.json").unlink()
    with pytest.raises(InputError, match=re.escape(
        f"output '{out}' exists but is not a finished training run"
    )):
        check_finished(out, CONFIG)
