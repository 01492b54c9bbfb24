"""ParDBN's layer-per-application setting: two real applications of jobs/pretrain_layer.py run at
once, layer 1 training on the rough versions that layer 0's application publishes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import start_job

COMMON = [
    "--layers", "784,32,16", "--schedule", "pipelined", "--start-after", "1",
    "--publish-every", "1", "--final-epochs", "1", "--partitions", "2", "--seed", "5",
    "--averaging", "plain",
]


def test_two_applications_share_a_store(fashion_parquet: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    upper = start_job(
        "pretrain_layer", "--layer", "1", "--store", str(store), "--output",
        str(tmp_path / "layer1"), "--epochs", "4", *COMMON,
    )
    for line in upper.stdout:  # the upper application is up and waiting for versions
        if line.startswith("layer 1 ready"):
            break
    lower = start_job(
        "pretrain_layer", "--layer", "0", "--train", str(fashion_parquet / "train"), "--store",
        str(store), "--output", str(tmp_path / "layer0"), "--epochs", "12", *COMMON,
    )
    outputs = {}
    for name, proc in (("lower", lower), ("upper", upper)):
        outputs[name], err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    # Layer 1 had no version yet: it warmed up in a scratch store and removed it again.
    assert "layer 1 warmed up in" in outputs["upper"]
    assert "warmed up" not in outputs["lower"]
    assert sorted(p.name for p in (store / "layer_0").iterdir()) == sorted(
        ["_versions", "_leases", *(p.name for p in (store / "layer_0").glob("v-*"))]
    )

    with np.load(tmp_path / "layer0" / "layer.npz", allow_pickle=False) as npz:
        assert npz["W"].shape == (784, 32)
    with np.load(tmp_path / "layer1" / "layer.npz", allow_pickle=False) as npz:
        assert npz["W"].shape == (32, 16) and np.isfinite(npz["W"]).all()

    def span_and_versions(name: str) -> tuple[float, float, list[int | None]]:
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        (log,) = metrics["layers"]
        base = metrics["run_started_unix"]
        versions = [e["input_version"] for e in log["epochs"]]
        return base + log["started_at"], base + log["finished_at"], versions

    _, end_0, versions_0 = span_and_versions("layer0")
    start_1, _, versions_1 = span_and_versions("layer1")
    assert versions_0 == [None] * 12  # layer 0 trains longer: each application has its epochs
    assert start_1 < end_0  # the upper layer trained while the lower one was still training
    assert len(set(versions_1)) >= 2 and versions_1 == sorted(versions_1)
    final = json.loads((store / "layer_0" / "_versions" / "FINAL.json").read_text())["version"]
    assert versions_1[-1] == final  # its last epoch trained on layer 0's final version
