"""jobs/train_dbn.py under spark-submit on a real standalone cluster (master + two workers).

The driver and the executors see no path to the repository: the package reaches them only as
the `--py-files` zip that `make dist` builds, and the settings come from
conf/spark/standalone.conf, scaled down to the test cluster by --conf flags.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cluster.conftest import REPO, cluster_env, get_json, spark_home

pytestmark = pytest.mark.slow

APP_NAME = "sparkdbn train_dbn"
SUBMIT_TIMEOUT = 300


def test_pyfiles_zip_holds_the_package_and_nothing_else(pyfiles_zip: Path, tmp_path: Path):
    """The zip has every module and the resources, no bytecode caches, and imports on its own."""
    names = zipfile.ZipFile(pyfiles_zip).namelist()
    sources = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "sparkdbn").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert set(names) == sources
    assert "sparkdbn/resources/log4j2.properties" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    where = subprocess.run(
        [sys.executable, "-c", "import sparkdbn.engine.training as t; print(t.__file__)"],
        cwd=tmp_path, env=cluster_env(PYTHONPATH=str(pyfiles_zip)),
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert where.startswith(str(pyfiles_zip))


def _submit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """spark-submit in its own process group; the whole group is killed on timeout."""
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=SUBMIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"spark-submit did not finish in {SUBMIT_TIMEOUT} s:\n{err[-5000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_train_dbn_runs_on_the_standalone_cluster(
    standalone_cluster, fashion_parquet: Path, pyfiles_zip: Path, tmp_path: Path
):
    """spark-submit with --py-files and standalone.conf trains the pipelined DBN on both
    workers: exit 0, the model files, metrics with test accuracy and overlapping layers, and
    the master and both workers record the finished application and its executors."""
    output = tmp_path / "run"
    args = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master", standalone_cluster.master_url,
        "--properties-file", "conf/spark/standalone.conf",
        "--py-files", str(pyfiles_zip),
        "--conf", "spark.executor.cores=1",
        "--conf", "spark.cores.max=2",
        "--conf", "spark.executor.memory=512m",
        "--conf", "spark.driver.memory=1g",
        "--conf", "spark.sql.shuffle.partitions=4",
        "--conf", "spark.ui.enabled=false",
        "jobs/train_dbn.py",
        "--train", str(fashion_parquet / "train"),
        "--test", str(fashion_parquet / "test"),
        "--output", str(output),
        "--layers", "784,32,16", "--epochs", "6", "--schedule", "pipelined",
        "--start-after", "1", "--final-epochs", "1", "--finetune-epochs", "2",
        "--partitions", "2", "--averaging", "plain",
    ]  # fmt: skip
    done = _submit(args, cluster_env())
    assert done.returncode == 0, done.stderr[-5000:]

    model = output / "model"
    for name in ("layer_0.npz", "layer_1.npz", "classifier.npz", "model.json"):
        assert (model / name).is_file(), name
    with np.load(model / "layer_0.npz") as layer0:
        assert layer0["W"].shape == (784, 32) and layer0["W"].dtype == np.float32
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["schedule"] == "pipelined"
    assert metrics["test_accuracy"] > 0.3  # chance is 0.1
    layers = {layer["layer"]: layer for layer in metrics["layers"]}
    assert layers[1]["started_at"] < layers[0]["finished_at"]
    assert not output.with_name(f".{output.name}.store").exists()  # the default store is gone
    assert "Creating Fair Scheduler pools from conf/spark/fairscheduler.xml" in done.stderr

    state = standalone_cluster.state()
    apps = [app for app in state["completedapps"] if app["name"] == APP_NAME]
    assert len(apps) == 1 and apps[0]["state"] == "FINISHED"
    app_id = apps[0]["id"]
    for worker_ui in standalone_cluster.worker_webui_urls:
        worker = get_json(f"{worker_ui}/json/")
        # An executor still shutting down is listed under "executors" for a moment.
        executors = worker["executors"] + worker["finishedexecutors"]
        assert app_id in {e["appid"] for e in executors}, worker
