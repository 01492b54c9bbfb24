"""Real clusters for the cluster tests, all on 127.0.0.1, built from the pip-installed pyspark.

`pyfiles_zip` builds dist/sparkdbn.zip with the Makefile's own rule (into a temporary DIST).
`standalone_cluster` starts a Spark standalone master and two one-core workers; every process
the fixtures start runs in its own process group, and teardown kills exactly those groups
(SIGTERM, then SIGKILL) and checks that nothing of them is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 20.0
START_TIMEOUT = 120.0


def spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a tiny race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_env(**extra: str) -> dict[str, str]:
    """The environment for cluster processes and spark-submit: this interpreter for Python,
    loopback only, and no path to the repository, so Python code reaches the cluster only
    through what is shipped (`--py-files`, or PYTHONPATH given in `extra`)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "SPARK_REMOTE", "SPARKDBN_MASTER", "PYSPARK_GATEWAY_PORT")
        and not key.startswith("PYSPARK_GATEWAY")
    }
    env.update(
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_DAEMON_MEMORY="512m",
        # Quick JVM start-up for tiny jobs on a small machine.
        JAVA_TOOL_OPTIONS="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    )
    env.update(extra)
    return env


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


@dataclass
class Processes:
    """Processes started in their own sessions; `stop` ends exactly their groups."""

    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self, args: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """SIGTERM each group (newest first), SIGKILL what is left after a timeout; assert
        that no process of these groups survives."""
        for proc in reversed(self.procs):
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in reversed(self.procs):
            while _group_members(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_members(proc.pid):
                _signal_group(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=STOP_TIMEOUT)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _group_members(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        left = {proc.pid: _group_members(proc.pid) for proc in self.procs}
        assert not any(left.values()), f"processes left in the groups we started: {left}"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read().decode())


def wait_until(check, what: str, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    """Poll `check` until it is true; fail early, with the logs, if a process died."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                pytest.fail(f"{what}: process exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tails = "\n".join(log.read_text()[-2000:] for log in logs)
    pytest.fail(f"{what}: not ready within {START_TIMEOUT:.0f} s\n{tails}")


@dataclass
class StandaloneCluster:
    master_url: str
    webui_url: str
    worker_webui_urls: list[str]
    logs: list[Path]

    def state(self) -> dict:
        return get_json(f"{self.webui_url}/json/")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """A real standalone cluster: one master and two workers (1 core, 1 GB each)."""
    base = tmp_path_factory.mktemp("standalone")
    home = spark_home()
    spark_class = str(home / "bin" / "spark-class")
    port, webui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    env = cluster_env(
        SPARK_HOME=str(home), SPARK_LOG_DIR=str(base / "logs"), SPARK_WORKER_DIR=str(base / "work"),
        SPARK_LOCAL_DIRS=str(base / "local"),
    )
    processes = Processes()
    logs = [base / "master.log"]
    procs = [
        processes.start(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(port), "--webui-port", str(webui)],
            logs[0], env, base,
        )
    ]
    worker_uis = []
    try:
        for i in range(2):
            worker_ui = free_port()
            worker_uis.append(f"http://127.0.0.1:{worker_ui}")
            logs.append(base / f"worker{i}.log")
            procs.append(
                processes.start(
                    [spark_class, "org.apache.spark.deploy.worker.Worker", master_url,
                     "--cores", "1", "--memory", "1g", "--host", "127.0.0.1",
                     "--webui-port", str(worker_ui), "--work-dir", str(base / f"work{i}")],
                    logs[-1], env, base,
                )
            )
        cluster = StandaloneCluster(master_url, f"http://127.0.0.1:{webui}", worker_uis, logs)

        def two_alive() -> bool:
            workers = cluster.state()["workers"]
            return sum(w["state"] == "ALIVE" for w in workers) == 2

        wait_until(two_alive, "standalone cluster", procs, logs)
        yield cluster
    finally:
        processes.stop()
