"""Training over Spark Connect: the library call and the job, with no SparkContext on the client.

A local Connect server cannot share a Python process with the classic session of
tests/conftest.py (pyspark refuses: SESSION_OR_CONTEXT_EXISTS), so every Connect client here
runs in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import (
    REPO,
    Processes,
    cluster_env,
    free_port,
    spark_home,
    wait_until,
)

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("connect_train.py")
CLIENT_TIMEOUT = 300


def _run(
    args: list[str], env: dict[str, str], cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """A client process in its own process group; the whole group is killed on timeout."""
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args[1]} did not finish in {CLIENT_TIMEOUT} s:\n{err[-5000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory: pytest.TempPathFactory, pyfiles_zip: Path) -> Iterator[str]:
    """A Spark Connect server (local[2]) from pyspark's own jars, bound to 127.0.0.1.

    Its Python workers import sparkdbn from the --py-files zip only, as on a cluster where
    the package is installed; the repository is not on their path."""
    base = tmp_path_factory.mktemp("connect-server")
    port = free_port()
    processes = Processes()
    log = base / "server.log"
    proc = processes.start(
        [str(spark_home() / "bin" / "spark-submit"),
         "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
         "--name", "sparkdbn connect test server", "--master", "local[2]",
         "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
         "--conf", f"spark.connect.grpc.binding.port={port}",
         "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.shuffle.partitions=4"],
        log, cluster_env(PYTHONPATH=str(pyfiles_zip), SPARK_HOME=str(spark_home())), base,
    )  # fmt: skip

    def listening() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, "Spark Connect server", [proc], [log])
        yield f"sc://127.0.0.1:{port}"
    finally:
        processes.stop()


def test_library_trains_and_fine_tunes_through_connect(
    fashion_parquet: Path, pyfiles_zip: Path, tmp_path: Path
):
    """`training.train` on a Connect session (pyspark's in-process server, remote("local[2]"))
    with Connect DataFrames: the pipelined layers overlap, fine-tuning runs and test accuracy
    is computed, with the representation store on the local file system (which the store's
    probe finds shared); then the ml stages on data with empty partitions. The server's Python
    workers get the package only as the zip the client uploads with addArtifacts."""
    store = tmp_path / "store"
    done = _run(
        [sys.executable, str(SCRIPT), "local[2]", str(fashion_parquet / "train"),
         str(fashion_parquet / "test"), str(store), str(pyfiles_zip)],
        cluster_env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["is_connect"]
    assert summary["test_accuracy"] > 0.5  # chance is 0.1
    assert summary["finetune_epochs"] == 2
    assert summary["layer1_started_at"] < summary["layer0_finished_at"]
    versions = summary["layer1_input_versions"]
    assert versions == sorted(versions) and versions[0] < versions[-1]  # rough, then final
    assert (store / "layer_0" / "_versions" / "FINAL.json").is_file()
    # Empty partitions under Connect: a pipelined classifier fitted on a `limit`, an RBM with
    # 64 partitions for 40 rows, predictions for a frame with 3 rows in 8 partitions.
    assert (summary["pipeline_predictions"], summary["rbm_rows"]) == (3, 40)


def test_train_dbn_job_runs_over_spark_remote(
    connect_url: str, fashion_parquet: Path, tmp_path: Path
):
    """`SPARK_REMOTE=sc://… python jobs/train_dbn.py` trains on a separate Connect server:
    exit 0, the model files, metrics with test accuracy and overlapping layers."""
    output = tmp_path / "run"
    done = _run(
        [sys.executable, "jobs/train_dbn.py",
         "--train", str(fashion_parquet / "train"), "--test", str(fashion_parquet / "test"),
         "--output", str(output), "--layers", "784,32,16", "--epochs", "6",
         "--schedule", "pipelined", "--start-after", "1", "--final-epochs", "1",
         "--finetune-epochs", "2", "--partitions", "2", "--averaging", "plain"],
        cluster_env(PYTHONPATH=str(REPO), SPARK_REMOTE=connect_url),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    for name in ("layer_0.npz", "layer_1.npz", "classifier.npz", "model.json"):
        assert (output / "model" / name).is_file(), name
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.3  # chance is 0.1
    layers = {layer["layer"]: layer for layer in metrics["layers"]}
    assert layers[1]["started_at"] < layers[0]["finished_at"]
