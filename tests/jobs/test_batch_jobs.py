"""Scheduled batch jobs: every job's --help, exit codes 0/2/1, --if-exists and --log-format json.

Two real Spark applications run one after the other in a background thread (train_dbn with
--log-format json on the Fashion-MNIST sample, then evaluate on its model) while the other
cases, which all finish or fail before Spark starts, run as subprocesses in the foreground.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sparkdbn.cli import JobParser, run
from sparkdbn.datasets import load_mnist_dir, to_arrow_table
from sparkdbn.errors import InputError
from sparkdbn.logs import Reporter, log_format_in
from sparkdbn.metrics import EpochRecord, RunLog
from sparkdbn.prepare import SPLIT_DIRS
from tests.conftest import FIXTURE_DIR, run_job, start_job

JOBS = ("prepare_data", "train_dbn", "pretrain_layer", "evaluate", "benchmark")
TRAIN = ["--layers", "784,16", "--epochs", "2", "--finetune-epochs", "1", "--partitions", "2",
         "--seed", "3", "--averaging", "plain"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def data(root: Path) -> Path:
    """The sample in prepare_data's output layout (DIR/train, DIR/test, each with Spark's
    _SUCCESS marker), written with pyarrow alone so that no Spark starts in this process."""
    out = root / "data"
    for split, name in SPLIT_DIRS.items():
        images, labels = load_mnist_dir(FIXTURE_DIR, split)
        (out / name).mkdir(parents=True)
        pq.write_table(to_arrow_table(images, labels), out / name / "part-00000.parquet")
        (out / name / "_SUCCESS").touch()
    return out


def train_args(data: Path, root: Path) -> list[str]:
    return ["--train", str(data / "train"), "--test", str(data / "test"), "--output",
            str(root / "run"), *TRAIN]


def evaluate_args(data: Path, root: Path) -> list[str]:
    return ["--model", str(root / "run" / "model"), "--data", str(data / "test"), "--output",
            str(root / "eval.json")]


@pytest.fixture(scope="module", autouse=True)
def real_runs(
    request: pytest.FixtureRequest, data: Path, root: Path
) -> Iterator[Future[dict[str, subprocess.CompletedProcess]] | None]:
    """train_dbn then evaluate, both with --log-format json, in the background from the
    module's first test on (when any slow test of it is selected); killed at the end of the
    module if still running."""
    if not any(
        getattr(item, "module", None) is request.module and item.get_closest_marker("slow")
        for item in request.session.items
    ):
        yield None
        return
    stop, procs = threading.Event(), []

    def chain() -> dict[str, subprocess.CompletedProcess]:
        results = {}
        for job, args in (("train_dbn", train_args(data, root)),
                          ("evaluate", evaluate_args(data, root))):
            if stop.is_set():
                break
            proc = start_job(job, *args, "--log-format", "json")
            procs.append(proc)
            out, err = proc.communicate(timeout=600)
            results[job] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            if proc.returncode != 0:
                break
        return results

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(chain)
        yield future
        stop.set()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            future.result(timeout=60)


def finished(real_runs: Future, job: str) -> subprocess.CompletedProcess:
    results = real_runs.result(timeout=600)
    assert job in results, {k: r.stderr[-2000:] for k, r in results.items()}
    return results[job]


def json_lines(text: str) -> list[dict]:
    """Every line parsed as one JSON object with the common fields (fails on anything else)."""
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        assert isinstance(record, dict)
        assert {"ts", "level", "job", "event"} <= record.keys()
        ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0
    return records


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under path (or path itself) with its mtime and content."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def job_args(job: str, data: Path, output: Path, tmp_path: Path) -> list[str]:
    """Arguments that reach the job's output check."""
    return {
        "prepare_data": ["--source", str(FIXTURE_DIR), "--output", str(output)],
        "train_dbn": ["--train", str(data / "train"), "--output", str(output), *TRAIN],
        "pretrain_layer": ["--layer", "0", "--layers", "784,16", "--train", str(data / "train"),
                           "--store", str(tmp_path / "store"), "--output", str(output)],
        "evaluate": ["--model", str(tmp_path / "model"), "--data", str(data / "test"),
                     "--output", str(output)],
        "benchmark": ["--output", str(output), "--rows", "100", "--repeats", "1"],
    }[job]


# --- --help and bad flag values ----------------------------------------------------------------


@pytest.mark.parametrize("job", JOBS)
def test_help_lists_log_format_and_if_exists(job: str) -> None:
    result = run_job(job, "--help")
    assert result.returncode == 0, result.stderr
    assert "--log-format" in result.stdout and "--if-exists" in result.stdout
    assert "{text,json}" in result.stdout


@pytest.mark.parametrize(
    ("job", "flag", "value"),
    [(job, "--log-format", "xml") for job in JOBS]
    + [(job, "--if-exists", "append") for job in JOBS]
    + [("benchmark", "--if-exists", "resume")],  # a benchmark is always measured afresh
)
def test_bad_flag_value_exits_2(
    job: str, flag: str, value: str, data: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    result = run_job(job, *job_args(job, data, output, tmp_path), flag, value)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "invalid choice" in last or "must be one of" in last
    assert repr(value) in last or value in last
    assert list(tmp_path.iterdir()) == []


# --- --if-exists -------------------------------------------------------------------------------


@pytest.mark.parametrize("job", JOBS)
def test_existing_output_with_if_exists_error_exits_2_untouched(
    job: str, data: Path, tmp_path: Path
) -> None:
    output = tmp_path / ("out.json" if job in ("evaluate", "benchmark") else "out")
    if output.suffix:
        output.write_text('{"earlier": true}\n')
    else:
        output.mkdir()
        (output / "earlier.txt").write_text("an earlier run's output")
    before = snapshot(output)
    result = run_job(job, *job_args(job, data, output, tmp_path), "--if-exists", "error")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == f"error: output {str(output)!r} already exists (use --if-exists overwrite)"
    assert snapshot(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]


def test_prepare_data_resume_keeps_a_complete_output(data: Path, tmp_path: Path) -> None:
    output = tmp_path / "prepared"
    shutil.copytree(data, output)
    before = snapshot(output)
    result = run_job("prepare_data", "--source", str(FIXTURE_DIR), "--output", str(output),
                     "--if-exists", "resume", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    [done] = json_lines(result.stdout)
    assert (done["event"], done["output"], done["skipped"]) == ("done", str(output), True)
    assert snapshot(output) == before


def test_prepare_data_resume_tells_complete_from_incomplete(data: Path, tmp_path: Path) -> None:
    """Complete = every data set the flags ask for has its _SUCCESS marker; anything else is
    converted afresh (not run here: that starts Spark)."""
    job = importlib.import_module("sparkdbn.jobs.prepare_data")
    both = job.parse_args(["--source", str(FIXTURE_DIR), "--output", "x"])
    one = job.parse_args(["--source", str(FIXTURE_DIR), "--output", "x", "--split", "train"])
    layouts = job.expected_layouts(both, FIXTURE_DIR)
    assert layouts == [["train", "test"]]
    assert job.is_complete(data, layouts)
    assert not job.is_complete(data, job.expected_layouts(one, FIXTURE_DIR))  # no OUT/_SUCCESS
    shutil.copytree(data, tmp_path / "half")
    (tmp_path / "half" / "test" / "_SUCCESS").unlink()
    assert not job.is_complete(tmp_path / "half", layouts)


def test_pretrain_layer_resume_skips_a_finished_layer(data: Path, tmp_path: Path) -> None:
    output = tmp_path / "layer0"
    output.mkdir()
    np.savez(output / "layer.npz", W=np.zeros((784, 16), np.float32),
             vbias=np.zeros(784, np.float32), hbias=np.zeros(16, np.float32))
    before = snapshot(output)
    result = run_job("pretrain_layer", *job_args("pretrain_layer", data, output, tmp_path),
                     "--if-exists", "resume")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"layer 0 is already complete in {output}: nothing to do\n"
    assert snapshot(output) == before
    assert not (tmp_path / "store").exists()


# --- --log-format json -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "args", "message"),
    [
        ("prepare_data", ["--source", "/nonexistent/src", "--output", "{tmp}/out"],
         "/nonexistent/src: no such file or directory"),
        ("train_dbn", ["--train", "{tmp}/data", "--output", "{tmp}/out", "--layers", "784,0"],
         "config layers must list at least two positive sizes"),
        ("pretrain_layer", ["--layer", "3", "--layers", "784,16", "--store", "{tmp}/store",
                            "--output", "{tmp}/out"], "--layer must be in [0, 0]"),
        ("evaluate", ["--model", "{tmp}/model", "--data", "{tmp}/data"], "has no model.json"),
        ("benchmark", ["--rows", "0"], "must be >= 1"),
        ("evaluate", ["--model", "m", "--data", "d", "--if-exists", "append"],
         "argument --if-exists: invalid choice"),
    ],
)
def test_bad_input_in_json_mode_is_one_json_line_on_stderr(
    job: str, args: list[str], message: str, tmp_path: Path
) -> None:
    result = run_job(job, "--log-format", "json", *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    [error] = json_lines(line)
    assert (error["event"], error["level"], error["job"], error["exit_code"]) == (
        "error", "error", job, 2)
    assert message in error["message"]
    assert list(tmp_path.iterdir()) == []


# --- in process: cli.run and the reporter ------------------------------------------------------


def test_other_failures_exit_1_with_type_and_message() -> None:
    def main(argv: list[str] | None) -> None:
        raise RuntimeError("the cluster went away")

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert run(main, ["--log-format", "json"], job="demo") == 1
    assert out.getvalue() == ""
    [error] = json_lines(err.getvalue())
    assert (error["job"], error["exception"], error["exit_code"]) == ("demo", "RuntimeError", 1)
    assert error["message"] == "the cluster went away"
    assert "RuntimeError: the cluster went away" in error["traceback"]
    with pytest.raises(RuntimeError):  # text mode: the traceback stays Python's
        run(main, [])


def test_text_mode_renders_the_progress_lines() -> None:
    out = io.StringIO()
    log = RunLog("sequential", out=out)
    record = EpochRecord(2, 12.3456, 2.31, 25974.0, 4, 3, [0.5, 0.75])
    log.record_epoch(log.layer(0, 784, 16), record, 10)
    reporter = Reporter(out=out)
    reporter.event("finetune_epoch", stage="fine-tune", epoch=3, epochs=10, loss=0.5,
                   train_accuracy=0.875, seconds=1.234, learning_rate=0.1)
    reporter.event("evaluation", stage="baseline", accuracy=0.81234)
    reporter.event("resumed", layer=1, after_epoch=4, epochs=10)
    reporter.event("done", output="x", text="")  # JSON only
    assert out.getvalue().splitlines() == [
        "layer 0 · epoch 3/10 · recon 12.3456 · 2.31 s · 25,974 rows/s · ETA 16 s · input v4"
        " · 3 rounds · divergence 0.75",
        "fine-tune · epoch 3/10 · loss 0.5000 · train acc 0.8750 · 1.23 s",
        "test accuracy (random init baseline): 0.8123",
        "layer 1 · resumed after epoch 4/10 (checkpoint)",
    ]


def test_json_mode_makes_strict_json_and_reads_the_flag_like_argparse() -> None:
    out = io.StringIO()
    Reporter("demo", "json", out=out).event("epoch", recon_error=float("nan"), path=Path("/a"),
                                            n=np.int64(3))
    [record] = json_lines(out.getvalue())
    assert (record["recon_error"], record["path"], record["n"]) == (None, "/a", 3)
    assert log_format_in(["--log-format", "json"]) == "json"
    assert log_format_in(["--log-format=json"]) == "json"
    assert log_format_in(["--log", "json"]) == "json"
    assert log_format_in(["--log-format", "xml"]) == "text"
    assert log_format_in(["--", "--log-format", "json"]) == "text"
    with pytest.raises(InputError):  # json mode: a usage error is bad input, not usage text
        JobParser(prog="demo").parse_args(["--log-format", "json", "--nope"])


# --- the real runs (slow) -----------------------------------------------------------------------


@pytest.mark.slow
def test_train_dbn_json_logs(real_runs, root: Path) -> None:
    """stdout holds JSON lines only: two epochs, one fine-tuning epoch, the test evaluation and
    the final summary, agreeing with metrics.json."""
    result = finished(real_runs, "train_dbn")
    assert result.returncode == 0, result.stderr[-3000:]
    records = json_lines(result.stdout)
    assert {r["job"] for r in records} == {"train_dbn"}
    assert {r["level"] for r in records} == {"info"}
    events = [r["event"] for r in records]
    assert events[-1] == "done" and records[-1]["output"] == str(root / "run")
    metrics = json.loads((root / "run" / "metrics.json").read_text())

    epochs = [r for r in records if r["event"] == "epoch"]
    assert [(r["layer"], r["epoch"], r["epochs"]) for r in epochs] == [(0, 1, 2), (0, 2, 2)]
    for record, saved in zip(epochs, metrics["layers"][0]["epochs"], strict=True):
        for key in ("recon_error", "seconds", "rows_per_second", "input_version"):
            assert record[key] == saved[key]
    [tune] = [r for r in records if r["event"] == "finetune_epoch"]
    assert (tune["stage"], tune["epoch"], tune["epochs"]) == ("fine-tune", 1, 1)
    assert tune["loss"] == metrics["finetune"][0]["loss"]
    [evaluation] = [r for r in records if r["event"] == "evaluation"]
    assert evaluation["stage"] == "fine-tune"
    assert evaluation["accuracy"] == metrics["test_accuracy"]
    assert evaluation["n_rows"] == 500
    assert events.index("epoch") < events.index("finetune_epoch") < events.index("evaluation")


@pytest.mark.slow
def test_evaluate_json_logs(real_runs, root: Path) -> None:
    result = finished(real_runs, "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    records = json_lines(result.stdout)
    assert [r["event"] for r in records] == ["evaluation", "done"]
    written = json.loads((root / "eval.json").read_text())
    assert records[0]["accuracy"] == written["accuracy"]
    assert records[0]["confusion_matrix"] == written["confusion_matrix"]
    assert records[1]["output"] == str(root / "eval.json")


@pytest.mark.slow
def test_train_dbn_resume_on_a_finished_run_does_nothing(real_runs, data: Path, root: Path) -> None:
    assert finished(real_runs, "train_dbn").returncode == 0
    before = snapshot(root / "run")
    result = run_job("train_dbn", *train_args(data, root), "--if-exists", "resume",
                     "--log-format", "json")
    assert result.returncode == 0, result.stderr
    [done] = json_lines(result.stdout)
    assert (done["event"], done["output"], done["skipped"]) == ("done", str(root / "run"), True)
    assert snapshot(root / "run") == before


@pytest.mark.slow
def test_evaluate_resume_keeps_the_file(real_runs, data: Path, root: Path) -> None:
    assert finished(real_runs, "evaluate").returncode == 0
    before = snapshot(root / "eval.json")
    result = run_job("evaluate", *evaluate_args(data, root), "--if-exists", "resume")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{root / 'eval.json'} already exists: nothing to do\n"
    assert snapshot(root / "eval.json") == before
