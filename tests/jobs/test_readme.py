"""Every command of the README runs as written, on the small Fashion-MNIST sample.

The README's shell blocks run with bash in a directory laid out as `make train` leaves the
repository: `data/fashion-mnist` (here the sample), `dist/sparkdbn.zip`, `conf/` and `jobs/`.
`make` lines are the set-up and are left out; `python` and `spark-submit` are the test's
interpreter's. The Python block runs in that directory in a fresh interpreter whose session
is `spark`, as in a notebook, beside the shell blocks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, job_env

pytestmark = pytest.mark.slow

README = REPO / "README.md"
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def blocks(kind: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [body for lang, body in BLOCK.findall(text) if lang == kind]


def commands(body: str) -> str:
    """The block without its set-up (`make …`) lines."""
    return "\n".join(line for line in body.splitlines() if not line.startswith("make "))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fashion_parquet: Path, pyfiles_zip: Path) -> Path:
    root = tmp_path_factory.mktemp("readme")
    for name in ("conf", "jobs"):
        (root / name).symlink_to(REPO / name)
    (root / "data").mkdir()
    (root / "data" / "fashion-mnist").symlink_to(fashion_parquet)
    (root / "dist").mkdir()
    shutil.copy(pyfiles_zip, root / "dist" / "sparkdbn.zip")
    rows = ["label,a,b,c,d"] + [f"{i % 3},{i % 2},0.5,{(i * 7) % 10 / 10},1" for i in range(30)]
    (root / "my.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def python_run(workdir: Path) -> Iterator[Future]:
    """The Python block in a notebook's setting: a fresh interpreter in that directory, `spark`
    its session. It needs nothing the shell blocks make, so it runs beside them (each of these
    applications mostly waits on Spark's start-up and stage latency)."""
    (code,) = blocks("python")
    (workdir / "block.py").write_text(code, encoding="utf-8")
    wrapper = (
        "from sparkdbn.session import get_session\n"
        "spark = get_session('readme')\n"
        "exec(compile(open('block.py').read(), 'README.md', 'exec'))\n"
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(
            subprocess.run, [sys.executable, "-c", wrapper], cwd=workdir, env=job_env(),
            capture_output=True, text=True, timeout=600,
        )


@pytest.fixture(scope="module")
def shell_runs(workdir: Path, python_run: Future) -> list[subprocess.CompletedProcess[str]]:
    """Each shell block in order, as one bash script: later blocks use earlier outputs. The
    Python block (`python_run`) starts first and runs meanwhile."""
    env = job_env(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    runs = []
    for body in blocks("bash"):
        script = commands(body)
        if not script.strip():
            continue
        runs.append(subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=env,
            capture_output=True, text=True, timeout=900,
        ))
    return runs


def test_the_readme_shows_runnable_commands() -> None:
    shell = [commands(b) for b in blocks("bash")]
    assert sum(bool(s.strip()) for s in shell) >= 4 and len(blocks("python")) == 1
    assert any("make train" in b and "make test" in b for b in blocks("bash"))


def test_every_shell_block_exits_0(shell_runs) -> None:
    for run in shell_runs:
        assert run.returncode == 0, f"{run.args[-1]}\n{run.stderr[-3000:]}"


def test_the_quick_start_fine_tunes_and_evaluates(shell_runs, workdir: Path) -> None:
    """The quick start with no config writes a classifier and its test accuracy; the other
    commands leave what they say they make."""
    metrics = json.loads((workdir / "out" / "quickstart" / "metrics.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1.0  # chance is 0.1
    evaluation = json.loads((workdir / "out" / "quickstart-evaluation.json").read_text())
    assert evaluation["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert (workdir / "out" / "quickstart-predictions" / "_SUCCESS").is_file()
    assert json.loads((workdir / "out" / "four" / "metrics.json").read_text())["test_accuracy"]
    assert (workdir / "data" / "mine" / "_SUCCESS").is_file()
    for layer in ("layer0", "layer1"):
        assert (workdir / "out" / layer / "layer.npz").is_file()


def test_the_python_block_runs_in_a_session(python_run: Future, workdir: Path) -> None:
    """In a notebook's setting: a fresh interpreter in that directory, `spark` its session."""
    run = python_run.result()
    assert run.returncode == 0, run.stderr[-3000:]
    assert "prediction" in run.stdout  # the .show(5) table
    assert (workdir / "out" / "pipeline" / "metadata").is_dir()
