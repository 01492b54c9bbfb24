"""jobs/scaling_study.py end to end on the Fashion-MNIST sample: every point trained, the cost
relative to P = 2, the efficiency search, and the three outputs; bad settings exit 2 first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_job


@pytest.mark.slow
def test_study_writes_json_table_and_plot(fashion_parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "scaling"
    result = run_job(
        "scaling_study", "--train", str(fashion_parquet / "train"),
        "--test", str(fashion_parquet / "test"), "--output", str(out), "--layers", "784,16",
        "--epochs", "1", "--finetune-epochs", "1", "--partitions", "1,2",
        "--efficiency-epochs", "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["scaling.json", "scaling.md", "scaling.png"]
    study = json.loads((out / "scaling.json").read_text())
    points = {(p["partitions"], p["strategy"], p["epochs"]): p for p in study["points"]}
    assert {(1, "plain", 1), (1, "auto", 1), (2, "plain", 1), (2, "auto", 1)} <= set(points)
    # One partition is one run for every strategy; two partitions differ by strategy.
    assert points[1, "plain", 1]["test_accuracy"] == points[1, "auto", 1]["test_accuracy"]
    assert points[2, "plain", 1]["rounds"] == [1, 1]
    assert points[2, "auto", 1]["rounds"][0] > 1
    assert study["target_accuracy"] == points[1, "plain", 1]["test_accuracy"]
    assert study["relative_epoch_seconds"]["auto"]["2"] == [1.0, 1.0]
    # The efficiency search: the first epoch count (of 1, then 2) at which P = 2 reaches P = 1.
    reached = [
        e for e in (1, 2)
        if (2, "auto", e) in points
        and points[2, "auto", e]["test_accuracy"] >= study["target_accuracy"]
    ]
    assert study["epochs_to_target"]["2"] == (reached[0] if reached else None)
    assert reached[:1] == [1] or (2, "auto", 2) in points
    table = (out / "scaling.md").read_text().splitlines()
    assert table[0].startswith("| P | rows/partition | plain accuracy")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["1", "2"]
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "P=2   auto" in result.stdout


def test_bad_strategies_exit_2_before_spark(tmp_path: Path) -> None:
    result = run_job(
        "scaling_study", "--train", "x", "--test", "y", "--output", str(tmp_path / "o"),
        "--strategies", "plain,mean",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --strategies must list some of auto|plain|block|nesterov, got 'plain,mean'"
    ]
    assert not (tmp_path / "o").exists()
