"""Bad input the other suites do not cover, each refused with exit code 2 and one line naming
the problem and where, with nothing written.

Data and config cases of `prepare`, `load_config` and `read_idx` live in tests/spark/test_data.py,
tests/unit/test_config.py, tests/unit/test_datasets.py and tests/jobs/test_train_dbn_cli.py.
Here: corrupt and truncated Parquet files, labels beyond the output layer, tampered model
directories for `jobs/evaluate.py`, and the reliability settings. Cases that fail before Spark
starts run the jobs' `main` in-process (plus one real process); cases that need Spark run
in-process on the test session.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sparkdbn.data import prepare
from sparkdbn.errors import InputError
from sparkdbn.kernels.mlp import init_mlp
from sparkdbn.kernels.rbm import RBMParams
from sparkdbn.model import DBNModel
from tests.conftest import run_job
from tests.reliability.conftest import run_in_process

SIZES = [784, 6, 4]
N_CLASSES = 3


def error_line(result) -> str:
    """The one line on stderr (asserting there is exactly one, prefixed `error: `)."""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


# --- corrupt and truncated Parquet --------------------------------------------------------


def damaged_copy(source: Path, target: Path, damage: str) -> Path:
    """A copy of a Parquet directory with one part file damaged; returns the damaged file.

    Hadoop's local file system checks `.crc` sidecar files when they exist, so a damaged file
    with its old `.crc` fails the checksum, and without one fails Parquet decoding.
    """
    shutil.copytree(source, target)
    part = sorted(target.glob("part-*.parquet"))[0 if damage == "garbage_first" else 1]
    data = part.read_bytes()
    if damage in ("garbage", "garbage_first"):
        part.write_bytes(b"this is not a Parquet file\n" * 500)
    elif damage in ("truncated", "truncated_checksummed"):
        part.write_bytes(data[: len(data) // 2])
    else:  # bytes flipped in the middle of a column chunk
        middle = len(data) // 2
        part.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 512])
                         + data[middle + 512 :])
    if damage != "truncated_checksummed":
        (part.parent / f".{part.name}.crc").unlink()
    return part


@pytest.mark.parametrize(
    "damage", ["garbage", "garbage_first", "truncated", "truncated_checksummed", "flipped"]
)
def test_damaged_parquet_names_the_file(spark, fashion_parquet, tmp_path, damage) -> None:
    """Spark reads lazily, so a damaged part file surfaces while the data is packed and checked
    (or, for the first file, while the schema is read): either way an InputError naming the
    data set and the file."""
    part = damaged_copy(fashion_parquet / "train", tmp_path / "train", damage)
    with pytest.raises(InputError) as caught:
        prepare(spark, str(tmp_path / "train"), require_label=True)
    message = str(caught.value)
    where = tmp_path / "train"
    assert message.startswith(f"cannot read Parquet data at '{where}': cannot read file file:")
    assert part.name in message and "\n" not in message


def test_damaged_parquet_job_exits_2_and_writes_nothing(spark, fashion_parquet, tmp_path):
    """The training job on a truncated part file: exit 2, one line, no output, no checkpoint,
    no store."""
    part = damaged_copy(fashion_parquet / "train", tmp_path / "train", "truncated")
    (tmp_path / "runs").mkdir()
    result = run_in_process(
        "train_dbn", "--train", str(tmp_path / "train"), "--output", str(tmp_path / "runs/out"),
        "--layers", "784,4", "--epochs", "1",
    )
    assert result.returncode == 2
    assert part.name in error_line(result)
    assert list((tmp_path / "runs").iterdir()) == []


def test_test_data_needs_labelled_training_data(spark, fashion_parquet, tmp_path) -> None:
    """--test asks for a classifier: training data without labels is refused before training."""
    # Without Spark's schema in the file's metadata, which would still name the label.
    table = pq.read_table(fashion_parquet / "train").drop(["label"]).replace_schema_metadata()
    (tmp_path / "unlabelled").mkdir()
    pq.write_table(table, tmp_path / "unlabelled" / "part-0.parquet")
    (tmp_path / "runs").mkdir()
    result = run_in_process(
        "train_dbn", "--train", str(tmp_path / "unlabelled"), "--test",
        str(fashion_parquet / "test"), "--output", str(tmp_path / "runs/out"), "--layers", "784,4",
    )
    assert result.returncode == 2
    assert error_line(result) == (
        "error: label column 'label' not found; columns are ['features', 'id'] (fine-tuning "
        "and test data need labels: set label_col to their column)"
    )
    assert list((tmp_path / "runs").iterdir()) == []


# --- labels beyond the output layer -----------------------------------------------------------


def test_training_labels_beyond_n_classes(spark, fashion_parquet, tmp_path) -> None:
    (tmp_path / "runs").mkdir()
    result = run_in_process(
        "train_dbn", "--train", str(fashion_parquet / "train"), "--output",
        str(tmp_path / "runs/out"), "--layers", "784,4", "--epochs", "1", "--finetune-epochs", "1",
        "--n-classes", "5",
    )
    assert result.returncode == 2
    assert error_line(result) == (
        "error: column 'label' of the training data has label 9, beyond the 5 classes of the "
        "output layer (n_classes)"
    )
    assert list((tmp_path / "runs").iterdir()) == []


def test_test_labels_beyond_the_trained_classes(spark, fashion_parquet, tmp_path) -> None:
    """Training labels 0-4 imply 5 classes; a test set with label 9 is refused before training."""
    table = pq.read_table(fashion_parquet / "train")
    (tmp_path / "low").mkdir()
    pq.write_table(table.filter(pc.less(table["label"], 5)), tmp_path / "low" / "part-0.parquet")
    (tmp_path / "runs").mkdir()
    result = run_in_process(
        "train_dbn", "--train", str(tmp_path / "low"), "--test", str(fashion_parquet / "test"),
        "--output", str(tmp_path / "runs/out"), "--layers", "784,4", "--epochs", "1",
        "--finetune-epochs", "1",
    )
    assert result.returncode == 2
    assert error_line(result) == (
        "error: column 'label' of the test data has label 9, beyond the 5 classes of the "
        "output layer (n_classes)"
    )
    assert list((tmp_path / "runs").iterdir()) == []


# --- model directories for jobs/evaluate.py ------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A valid 784-6-4 model with a 3-class classifier (random weights: only loading matters)."""
    rng = np.random.default_rng(0)
    layers = [RBMParams.init(a, b, rng) for a, b in zip(SIZES[:-1], SIZES[1:], strict=True)]
    mlp = init_mlp([*SIZES, N_CLASSES], rng)
    DBNModel(layers).with_mlp(mlp).save(tmp_path / "model")
    return tmp_path / "model"


def tamper(model: Path, case: str) -> str:
    """Damage the model directory; returns the message expected on the error line."""
    meta_file = model / "model.json"
    meta = json.loads(meta_file.read_text())
    if case == "missing_layer":
        (model / "layer_1.npz").unlink()
        return f"model file '{model / 'layer_1.npz'}' is missing"
    if case == "wrong_shape":
        np.savez(model / "layer_1.npz", W=np.zeros((6, 5), np.float32),
                 vbias=np.zeros(6, np.float32), hbias=np.zeros(4, np.float32))
        return f"{model / 'layer_1.npz'}: W is float32[6, 5], model.json says float32[6, 4]"
    if case == "wrong_dtype":
        with np.load(model / "layer_0.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        np.savez(model / "layer_0.npz", **{**arrays, "W": arrays["W"].astype(np.float64)})
        return f"{model / 'layer_0.npz'}: W is float64[784, 6], model.json says float32[784, 6]"
    if case == "missing_array":
        with np.load(model / "classifier.npz") as npz:
            np.savez(model / "classifier.npz", W=npz["W"])
        return f"{model / 'classifier.npz'}: missing array 'bias'"
    if case == "non_finite":
        with np.load(model / "layer_0.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["hbias"][2] = np.nan
        np.savez(model / "layer_0.npz", **arrays)
        return f"{model / 'layer_0.npz'}: hbias has non-finite values"
    if case == "garbage_npz":
        (model / "layer_0.npz").write_bytes(b"PK\x03\x04 truncated")
        return f"{model / 'layer_0.npz'}: not a readable npz file"
    if case == "edited_sizes":
        meta_file.write_text(json.dumps({**meta, "sizes": [784, 7, 4]}))
        return f"{model / 'layer_0.npz'}: W is float32[784, 6], model.json says float32[784, 7]"
    if case == "edited_layers":
        meta_file.write_text(json.dumps({**meta, "layers": ["layer_0.npz"]}))
        return f"{meta_file}: 'sizes' [784, 6, 4] does not fit 'layers'"
    if case == "edited_classes":
        classifier = {**meta["classifier"], "n_classes": 4}
        meta_file.write_text(json.dumps({**meta, "classifier": classifier}))
        return f"{model / 'classifier.npz'}: W is float32[4, 3], model.json says float32[4, 4]"
    if case == "not_json":
        meta_file.write_text('{"format": "sparkdbn-dbn", ')
        return f"{meta_file}: not valid JSON"
    assert case == "no_model"
    shutil.rmtree(model)
    return f"model directory '{model}' has no model.json"


TAMPERING = [
    "missing_layer", "wrong_shape", "wrong_dtype", "missing_array", "non_finite", "garbage_npz",
    "edited_sizes", "edited_layers", "edited_classes", "not_json", "no_model",
]  # fmt: skip


@pytest.mark.parametrize("case", TAMPERING)
def test_tampered_model_is_refused_before_spark(model_dir, tmp_path, case) -> None:
    """jobs/evaluate.py checks the model directory against model.json before Spark starts."""
    expected = tamper(model_dir, case)
    result = run_in_process(
        "evaluate", "--model", str(model_dir), "--data", str(tmp_path / "never-read"),
        "--output", str(tmp_path / "eval.json"),
    )
    assert result.returncode == 2
    assert error_line(result).startswith(f"error: {expected}")
    assert not (tmp_path / "eval.json").exists()


def test_tampered_model_exit_code_of_a_real_process(model_dir, tmp_path) -> None:
    expected = tamper(model_dir, "missing_layer")
    result = run_job("evaluate", "--model", str(model_dir), "--data", str(tmp_path / "never"))
    assert result.returncode == 2
    assert error_line(result) == f"error: {expected}"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("labels", "error: column 'label' has label 9, beyond the model's 3 classes"),
        ("width", "error: column 'features' has 784 values per row, the model expects 20"),
        ("missing", "error: cannot read Parquet data at '{missing}': [PATH_NOT_FOUND]"),
    ],
)
def test_evaluate_data_that_does_not_fit_the_model(
    spark, fashion_parquet, model_dir, tmp_path, case, message
) -> None:
    """A model that is fine but data it cannot judge: labels beyond its classes, another
    width, or a path that does not exist."""
    data, missing = fashion_parquet / "test", tmp_path / "no-such-data"
    if case == "width":
        rng = np.random.default_rng(1)
        layers = [RBMParams.init(20, 6, rng), RBMParams.init(6, 4, rng)]
        model_dir = tmp_path / "narrow"
        DBNModel(layers).with_mlp(init_mlp([20, 6, 4, N_CLASSES], rng)).save(model_dir)
    elif case == "missing":
        data = missing
    result = run_in_process("evaluate", "--model", str(model_dir), "--data", str(data))
    assert result.returncode == 2
    assert error_line(result).startswith(message.format(missing=missing))


# --- reliability settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--checkpoint-every", "-1"), "config checkpoint_every must be >= 0, got -1"),
        (("--fault-injection", "stage:1"), "config fault_injection must look like 'partition:1'"),
        (("--fault-injection", "partition:x"), "config fault_injection must look like"),
        (("--if-exists", "append"), "config if_exists must be one of error|overwrite|resume"),
    ],
)
def test_bad_reliability_settings_exit_2_before_spark(tmp_path, flags, message) -> None:
    result = run_in_process(
        "train_dbn", "--train", str(tmp_path / "data"), "--output", str(tmp_path / "out"), *flags
    )
    assert result.returncode == 2
    assert message in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_pretrain_layer_resume_needs_a_finished_layer(tmp_path) -> None:
    """The one-layer job keeps no checkpoints: resume skips a finished layer (OUTPUT with
    layer.npz) and refuses an OUTPUT it cannot vouch for instead of reporting it finished."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("not a layer")
    result = run_in_process(
        "pretrain_layer", "--layer", "0", "--train", str(tmp_path / "data"), "--store",
        str(tmp_path / "store"), "--output", str(tmp_path / "out"), "--if-exists", "resume",
    )
    assert result.returncode == 2
    assert re.fullmatch(
        r"error: output '.*out' exists but holds no finished layer \(layer\.npz\); "
        r"use --if-exists overwrite",
        error_line(result),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
