"""Recovery, seen from outside: real `train_dbn.py` processes, killed and with failing tasks.

- A run SIGKILLed (driver and JVM: the whole process group) in the middle of pretraining
  layer 0, resumed, killed again in the middle of fine-tuning and resumed again, ends with the
  bit-identical model of a run that was never interrupted.
- Spark task failures injected into a `local[2,4]` session (Spark retries each task up to
  4 times, and reruns a failed barrier stage whole) leave the model bit-identical too.

Spark's start-up dominates every run, so the module fixture queues them on two workers (the
kill-and-resume chain on one, the reference and the faulty run on the other).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparkdbn.engine.checkpoint import MANIFEST, checkpoint_dir
from tests.conftest import run_job, start_job

EPOCHS, FINETUNE_EPOCHS, ROUNDS = 5, 4, 3
# Three averaging rounds per epoch with Nesterov block momentum, and PCD's persistent chains:
# kills between rounds, and retried tasks inside them, must not change a bit either.
ARGS = (
    "--layers", "784,32,16", "--epochs", str(EPOCHS), "--partitions", "2",
    "--finetune-epochs", str(FINETUNE_EPOCHS), "--checkpoint-every", "1", "--seed", "3",
    "--averaging", "nesterov", "--rounds-per-epoch", str(ROUNDS),
    "--cd", "pcd", "--lr-schedule", "linear",  # the partitions' chains must survive too
)  # fmt: skip
POLL_SECONDS = 0.02
KILL_DEADLINE_SECONDS = 600
MODEL_FILES = ("layer_0.npz", "layer_1.npz", "classifier.npz")


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The checkpoint manifest beside `out` (replaced atomically, so never half-written)."""
    try:
        return json.loads((checkpoint_dir(out) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def epoch(manifest: dict[str, Any] | None, trainer: str) -> int:
    """Epochs the checkpoint holds for `trainer` (0 when it has none)."""
    entry = (manifest or {}).get("trainers", {}).get(trainer)
    return 0 if entry is None else entry["epoch"]


def kill_when(
    proc: subprocess.Popen[str], out: Path, ready: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any], str]:
    """SIGKILL the job's process group once its checkpoint satisfies `ready`.

    Returns the checkpoint as the kill left it (what a resume starts from) and the job's stdout.
    """
    deadline = time.monotonic() + KILL_DEADLINE_SECONDS
    while proc.poll() is None and time.monotonic() < deadline:
        manifest = read_manifest(out)
        if manifest is not None and ready(manifest):
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            return read_manifest(out), stdout
        time.sleep(POLL_SECONDS)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate()
    raise AssertionError(
        f"the job ended (exit {proc.returncode}) before its checkpoint reached the kill point:\n"
        f"{stdout[-2000:]}\n{stderr[-3000:]}"
    )


@dataclass
class Chain:
    """The kill-and-resume chain: checkpoints left by the two kills, and the runs' output."""

    first_kill: dict[str, Any]
    second_kill: dict[str, Any]
    resumed_stdout: str
    final: subprocess.CompletedProcess[str]


def kill_and_resume(train: str, out: Path) -> Chain:
    args = ("--train", train, "--output", str(out), *ARGS)
    proc = start_job("train_dbn", *args)
    first, _ = kill_when(proc, out, lambda m: epoch(m, "layer_0") >= 2)
    proc = start_job("train_dbn", *args, "--if-exists", "resume")
    second, resumed_stdout = kill_when(proc, out, lambda m: epoch(m, "fine-tune") >= 1)
    final = run_job("train_dbn", *args, "--if-exists", "resume")
    return Chain(first, second, resumed_stdout, final)


@dataclass
class Runs:
    root: Path
    train: str
    futures: dict[str, Future]

    def result(self, name: str) -> tuple[Any, Path]:
        """The named run's result (waiting for it) and its OUT."""
        return self.futures[name].result(), self.root / name / "out"


@pytest.fixture(scope="module")
def runs(fashion_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Every run of this module, two at a time; each OUT sits alone in a directory of its own."""
    root = tmp_path_factory.mktemp("recovery")
    train = str(fashion_parquet / "train")

    def out(name: str) -> Path:
        (root / name).mkdir()
        return root / name / "out"

    def train_dbn(name: str, *args: str, env: dict[str, str] | None = None) -> Any:
        return run_job("train_dbn", "--train", train, "--output", str(out(name)), *args, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {"chain": pool.submit(kill_and_resume, train, out("chain"))}
        futures["reference"] = pool.submit(train_dbn, "reference", *ARGS)
        futures["faults"] = pool.submit(
            train_dbn, "faults", *ARGS, "--fault-injection", "partition:1",
            env={"SPARKDBN_MASTER": "local[2,4]"},
        )
        yield Runs(root, train, futures)
        pool.shutdown(cancel_futures=True)


def model_arrays(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for name in MODEL_FILES:
        with np.load(out / "model" / name, allow_pickle=False) as npz:
            arrays.update({f"{name}:{key}": npz[key] for key in npz.files})
    return arrays


def assert_same_model(out: Path, reference: Path) -> None:
    ours, theirs = model_arrays(out), model_arrays(reference)
    assert sorted(ours) == sorted(theirs)
    different = [key for key in ours if not np.array_equal(ours[key], theirs[key])]
    assert not different


@pytest.mark.slow
def test_killed_twice_resumes_to_the_bit_identical_model(runs) -> None:
    """Killed mid-layer 0, resumed; killed mid-fine-tuning, resumed: exit 0, and every array of
    layer_0.npz, layer_1.npz and classifier.npz equals the uninterrupted run's, as do the
    per-epoch metrics; the checkpoint and the store are gone afterwards."""
    chain, out = runs.result("chain")
    reference, reference_out = runs.result("reference")
    assert reference.returncode == 0, reference.stderr
    # The kills hit where intended: inside layer 0, then inside fine-tuning.
    assert 2 <= epoch(chain.first_kill, "layer_0") < EPOCHS
    assert epoch(chain.first_kill, "fine-tune") == 0
    done_at = epoch(chain.first_kill, "layer_0")
    assert f"layer 0 · resumed after epoch {done_at}/{EPOCHS} (checkpoint)" in chain.resumed_stdout
    assert [epoch(chain.second_kill, f"layer_{i}") for i in (0, 1)] == [EPOCHS, EPOCHS]
    tuned = epoch(chain.second_kill, "fine-tune")
    assert 1 <= tuned < FINETUNE_EPOCHS
    assert chain.final.returncode == 0, chain.final.stderr
    assert f"fine-tune · resumed after epoch {tuned}/{FINETUNE_EPOCHS}" in chain.final.stdout
    assert " · epoch " not in chain.final.stdout.split("fine-tune · resumed")[0]  # no retraining
    assert_same_model(out, reference_out)
    ours = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((reference_out / "metrics.json").read_text())
    for mine, other in zip(ours["layers"], theirs["layers"], strict=True):
        assert [e["recon_error"] for e in mine["epochs"]] == [
            e["recon_error"] for e in other["epochs"]
        ]
    assert [e["loss"] for e in ours["finetune"]] == [e["loss"] for e in theirs["finetune"]]
    resumed = {"layer_0": EPOCHS, "layer_1": EPOCHS, "fine-tune": tuned}
    assert ours["resumed_after_epochs"] == resumed
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no checkpoint, no store


@pytest.mark.slow
def test_injected_task_failures_change_nothing(runs) -> None:
    """Partition 1's task fails its first attempt in every epoch (the executor logs each
    failure once: 2 layers × 5 epochs + 4 fine-tuning epochs), whose 3 rounds run as one
    barrier stage that Spark reruns whole; the run finishes, and the model is bit-identical
    to the fault-free one."""
    faults, out = runs.result("faults")
    reference, reference_out = runs.result("reference")
    assert faults.returncode == 0, faults.stderr
    assert reference.returncode == 0, reference.stderr
    failures = faults.stderr.count("injected fault (fault_injection): partition 1, first attempt")
    assert failures == 2 * EPOCHS + FINETUNE_EPOCHS
    assert_same_model(out, reference_out)
