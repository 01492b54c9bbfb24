"""A wheel of the package installed in a fresh virtualenv outside the checkout, built once per
session for the tests that run its console scripts as a user of the wheel would."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO, job_env


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv outside the checkout with sparkdbn from its wheel alone; pyspark, numpy and
    pyarrow come from this interpreter's site-packages through a path file (which, unlike a
    site directory, does not run the checkout's editable-install hook)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"),
         str(REPO)], check=True, capture_output=True, text=True, timeout=300,
    )
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    ours = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site, "base_packages.pth").write_text(ours + "\n")
    wheel = next((root / "dist").glob("sparkdbn-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return env_dir


def wheel_env(env_dir: Path) -> dict[str, str]:
    """A user's environment for the wheel's venv: its Python, and no checkout on the path."""
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in job_env().items() if k != "PYTHONPATH"}
    env.update(PYSPARK_PYTHON=str(python), PYSPARK_DRIVER_PYTHON=str(python))
    return env


def assert_from_wheel(env_dir: Path, cwd: Path) -> None:
    """sparkdbn imports from the wheel's venv, run from `cwd`, not from the checkout."""
    where = subprocess.run(
        [env_dir / "bin" / "python", "-c", "import sparkdbn; print(sparkdbn.__file__)"],
        cwd=cwd, env=wheel_env(env_dir), check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where
