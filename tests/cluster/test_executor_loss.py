"""Executor loss on a real standalone cluster: one worker dies mid-training, the job finishes.

jobs/train_dbn.py is submitted (as in test_standalone.py: `--py-files` zip, standalone.conf,
no repository on any path) to a master with two one-core workers, so the application gets one
executor on each. Once layer 0 has finished its first epoch, the worker whose executor holds
the most cached blocks of the training set is SIGKILLed with everything it started: its
process group (the Worker JVM and the executor JVM it launched) and the executor's Python
daemon and workers (PySpark puts those in a group of their own), as if the machine had gone.
The executor's cached partitions and shuffle files are lost with it.

The job runs a second time, uninterrupted, in this process (local[2]) as the reference the
model must equal bit for bit.

`standalone_cluster` is module-scoped, so this module gets its own cluster, torn down when the
module ends: the one-worker cluster left behind never reaches test_standalone.py. Teardown
copes with the dead worker (signalling a group that no longer exists is ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cluster.conftest import (
    REPO,
    StandaloneCluster,
    cluster_env,
    free_port,
    get_json,
    spark_home,
)
from tests.reliability.conftest import run_in_process

pytestmark = pytest.mark.slow

APP_NAME = "sparkdbn train_dbn"
EPOCHS = 8
KILL_AFTER = f"layer 0 · epoch 1/{EPOCHS} "  # the progress line that triggers the kill
SUBMIT_TIMEOUT = 300
JOB_ARGS = (
    "--layers", "784,32,16", "--epochs", str(EPOCHS), "--schedule", "sequential",
    "--partitions", "4", "--checkpoint-every", "0", "--seed", "5", "--averaging", "plain",
)  # fmt: skip
LAYER_FILES = ("layer_0.npz", "layer_1.npz")


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
    return state, int(ppid), int(pgrp)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _worker_pid(worker_ui: str) -> int:
    """The Worker JVM serving `worker_ui` (its command line names the web UI port)."""
    port = worker_ui.rsplit(":", 1)[1]
    found = [
        pid
        for pid in _all_pids()
        if "org.apache.spark.deploy.worker.Worker" in (args := _cmdline(pid))
        and "--webui-port" in args
        and args[args.index("--webui-port") + 1] == port
    ]
    assert len(found) == 1, f"worker processes for {worker_ui}: {found}"
    return found[0]


def _descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _placement(cluster: StandaloneCluster, driver_ui: str) -> tuple[str, dict[str, int]] | None:
    """The application's id and the worker (index) of each of its executors, once both
    executors have registered with the driver; None before. Asking early also warms up the
    web servers, so that the lookups at kill time are quick."""
    try:
        [app] = [a for a in cluster.state()["activeapps"] if a["name"] == APP_NAME]
        executors = get_json(f"{driver_ui}/api/v1/applications/{app['id']}/executors")
        ids = {e["id"] for e in executors if e["id"] != "driver"}
        workers = {
            str(e["id"]): i
            for i, ui in enumerate(cluster.worker_webui_urls)
            for e in get_json(f"{ui}/json/")["executors"]
            if e["appid"] == app["id"]
        }
    except (OSError, ValueError):  # not up yet
        return None
    if len(ids) < 2 or set(workers) != ids:
        return None
    return app["id"], workers


def _executor_holding_cache(driver_ui: str, app_id: str) -> tuple[str, int]:
    """The executor with the most cached blocks (the training set), from the driver's REST API."""
    executors = get_json(f"{driver_ui}/api/v1/applications/{app_id}/executors")
    blocks = {e["id"]: e["rddBlocks"] for e in executors if e["id"] != "driver"}
    assert len(blocks) == 2, executors  # one executor on each worker
    executor = max(blocks, key=lambda e: (blocks[e], e))
    return executor, blocks[executor]


def _kill_worker(cluster: StandaloneCluster, index: int, app_id: str) -> dict:
    """SIGKILL worker `index` and everything below it, as if its machine had gone; returns
    what was killed, without waiting for it to go."""
    worker = _worker_pid(cluster.worker_webui_urls[index])
    assert os.getpgid(worker) == worker  # the fixture started it as its own group's leader
    below = _descendants(worker)
    executor_jvms = [
        pid
        for pid in below
        if "org.apache.spark.executor.CoarseGrainedExecutorBackend" in (args := _cmdline(pid))
        and app_id in args
    ]
    assert len(executor_jvms) == 1, {pid: _cmdline(pid) for pid in below}
    assert os.getpgid(executor_jvms[0]) == worker  # launched by the Worker, in its group
    # The Worker's group, then the groups below it: PySpark's daemon makes its own for itself
    # and the Python workers it forks.
    groups = [worker] + sorted({s[2] for pid in below if (s := _proc_stat(pid))} - {worker})
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    return {"worker_pid": worker, "executor_pid": executor_jvms[0], "groups": groups,
            "pids": [worker, *below]}  # fmt: skip


def _wait_gone(killed: dict) -> None:
    def gone() -> bool:
        if any(_alive(pid) for pid in killed["pids"]):
            return False
        stats = (_proc_stat(pid) for pid in _all_pids())
        return not any(s is not None and s[2] in killed["groups"] and s[0] != "Z" for s in stats)

    deadline = time.monotonic() + 20
    while not gone():
        assert time.monotonic() < deadline, f"processes of the killed worker left: {killed}"
        time.sleep(0.2)


def _submit_args(
    cluster: StandaloneCluster, pyfiles_zip: Path, ui_port: int, *job_args: str
) -> list[str]:
    """test_standalone.py's submission; the driver's UI on (for its REST API), and no task
    before both executors have registered, so that both hold part of the cached data."""
    return [
        str(spark_home() / "bin" / "spark-submit"),
        "--master", cluster.master_url,
        "--properties-file", "conf/spark/standalone.conf",
        "--py-files", str(pyfiles_zip),
        "--conf", "spark.executor.cores=1",
        "--conf", "spark.cores.max=2",
        "--conf", "spark.executor.memory=512m",
        "--conf", "spark.driver.memory=1g",
        "--conf", "spark.sql.shuffle.partitions=4",
        "--conf", f"spark.ui.port={ui_port}",
        "--conf", "spark.port.maxRetries=0",
        "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
        "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
        "jobs/train_dbn.py",
        *job_args,
    ]  # fmt: skip


def _model_arrays(model: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for name in LAYER_FILES:
        with np.load(model / name) as npz:
            arrays.update({f"{name}:{key}": npz[key] for key in npz.files})
    return arrays


def test_job_survives_the_loss_of_a_worker_and_its_executor(
    standalone_cluster: StandaloneCluster, fashion_parquet: Path, pyfiles_zip: Path, tmp_path
):
    """One of the two workers is killed (Worker JVM, executor JVM, Python workers) after layer
    0's first epoch, taking cached partitions of the training set with it: the driver logs
    the lost executor and the blocks with no replica left, reruns the lost work on the other
    executor, exits 0 and writes the model and every epoch's metrics; the master lists one
    ALIVE worker and the killed one DEAD. The model equals, bit for bit, an uninterrupted
    in-process run's: the lost partitions were recomputed from the Parquet source exactly."""
    output = tmp_path / "run"
    stdout_log, stderr_log = tmp_path / "driver.out", tmp_path / "driver.err"
    ui_port = free_port()
    args = _submit_args(
        standalone_cluster, pyfiles_zip, ui_port,
        "--train", str(fashion_parquet / "train"), "--output", str(output), *JOB_ARGS,
    )  # fmt: skip
    started = time.monotonic()
    with open(stdout_log, "w") as out, open(stderr_log, "w") as err:
        proc = subprocess.Popen(
            args, cwd=REPO, env=cluster_env(PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL,
            stdout=out, stderr=err, text=True, start_new_session=True,
        )  # fmt: skip
    driver_ui = f"http://127.0.0.1:{ui_port}"
    placement = None
    try:
        deadline = time.monotonic() + SUBMIT_TIMEOUT
        while placement is None or KILL_AFTER not in stdout_log.read_text():
            assert proc.poll() is None, (
                f"the job ended (exit {proc.returncode}) before training got under way:\n"
                f"{stderr_log.read_text()[-5000:]}"
            )
            assert time.monotonic() < deadline, "training did not get under way"
            placement = placement or _placement(standalone_cluster, driver_ui)
            time.sleep(0.1)
        triggered = time.monotonic()
        app_id, worker_of = placement
        executor_id, cached_blocks = _executor_holding_cache(driver_ui, app_id)
        assert cached_blocks > 0
        lost_worker = worker_of[executor_id]
        killed = _kill_worker(standalone_cluster, lost_worker, app_id)
        killed_at = time.monotonic()
        at_kill = stdout_log.read_text()  # the epochs finished before the kill
        _wait_gone(killed)
        try:
            returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job did not finish:\n{stderr_log.read_text()[-5000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    elapsed = time.monotonic() - started
    stdout, stderr = stdout_log.read_text(), stderr_log.read_text()
    assert returncode == 0, stderr[-5000:]
    print(
        f"\nkilled worker {lost_worker} (executor {executor_id}, {cached_blocks} cached "
        f"blocks) {killed_at - triggered:.1f} s after the trigger, {killed_at - started:.1f} s "
        f"into the {elapsed:.1f} s run, after {at_kill.count(' · epoch ')} epochs: {killed}"
    )

    # The kill landed inside layer 0; the driver lost the executor and its cached blocks.
    assert f"layer 0 · epoch {EPOCHS}/{EPOCHS} " not in at_kill, at_kill
    assert re.search(rf"Lost executor {executor_id} on 127\.0\.0\.1", stderr), stderr[-5000:]
    assert "No more replicas available for rdd_" in stderr, stderr[-5000:]

    # Everything was written, every epoch of both layers included.
    model = output / "model"
    for name in (*LAYER_FILES, "model.json"):
        assert (model / name).is_file(), name
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["schedule"] == "sequential"
    assert [layer["layer"] for layer in metrics["layers"]] == [0, 1]
    for layer in metrics["layers"]:
        assert [r["epoch"] for r in layer["epochs"]] == list(range(EPOCHS))
    assert f"layer 1 · epoch {EPOCHS}/{EPOCHS} " in stdout

    # The master saw the worker go: one worker ALIVE, the killed one DEAD (or already dropped).
    state = standalone_cluster.state()
    lost_ui = standalone_cluster.worker_webui_urls[lost_worker]
    alive = [w for w in state["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 1 and alive[0]["webuiaddress"] != lost_ui, state["workers"]
    lost = [w["state"] for w in state["workers"] if w["webuiaddress"] == lost_ui]
    assert lost in ([], ["DEAD"]), state["workers"]
    [app] = [a for a in state["completedapps"] if a["id"] == app_id]
    assert app["state"] == "FINISHED", app

    # Bit-identical to an uninterrupted run of the same job (in this process, local[2]).
    reference = tmp_path / "reference"
    done = run_in_process(
        "train_dbn", "--train", str(fashion_parquet / "train"), "--output", str(reference),
        *JOB_ARGS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ours, theirs = _model_arrays(model), _model_arrays(reference / "model")
    assert sorted(ours) == sorted(theirs)
    assert [key for key in ours if not np.array_equal(ours[key], theirs[key])] == []
    reference_metrics = json.loads((reference / "metrics.json").read_text())

    def errors(m: dict) -> list[list[float]]:
        return [[r["recon_error"] for r in layer["epochs"]] for layer in m["layers"]]

    assert errors(metrics) == errors(reference_metrics)
