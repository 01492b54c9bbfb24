"""A run's outputs: OUTPUT/model, metrics.json, evaluation.txt and the pictures; and one
layer's: OUTPUT/layer.npz and metrics.json.

Written from a finished `TrainingResult` (or layer) and committed together by one rename, so a
reader sees all of them or none. The engine trains and knows nothing of this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sparkdbn.engine.training import TrainingResult
from sparkdbn.fsutil import atomic_directory
from sparkdbn.kernels.rbm import RBMParams
from sparkdbn.metrics import RunLog
from sparkdbn.plots import write_pictures


def metrics_dict(result: TrainingResult) -> dict[str, Any]:
    """metrics.json: the run log plus fine-tuning curves, evaluations and log-likelihoods."""
    out = result.run.to_dict()  # schedule, layers, makespan
    if result.finetune_history:
        out["finetune"] = [asdict(e) for e in result.finetune_history]
    if result.evaluation is not None:
        out["test_accuracy"] = result.evaluation.accuracy
        out["test_evaluation"] = result.evaluation.to_dict()
    if result.baseline_history:
        out["baseline_finetune"] = [asdict(e) for e in result.baseline_history]
    if result.baseline_evaluation is not None:
        out["baseline_test_accuracy"] = result.baseline_evaluation.accuracy
    if result.log_likelihood is not None:
        out["log_likelihood"] = result.log_likelihood
    return out


def write_outputs(result: TrainingResult, output: str | Path) -> None:
    """OUTPUT/model/…, OUTPUT/metrics.json and pictures, committed together by one rename."""
    with atomic_directory(output) as tmp:
        result.model.save(tmp / "model")
        (tmp / "metrics.json").write_text(
            json.dumps(metrics_dict(result), indent=2) + "\n", encoding="utf-8"
        )
        if result.evaluation is not None:
            (tmp / "evaluation.txt").write_text(result.evaluation.table() + "\n", encoding="utf-8")
        write_pictures(result, tmp)


def write_layer(params: RBMParams, log: RunLog, output: str | Path) -> None:
    """OUTPUT/layer.npz (W, vbias, hbias) and OUTPUT/metrics.json, committed by one rename."""
    with atomic_directory(output) as tmp:
        np.savez(tmp / "layer.npz", W=params.W, vbias=params.vbias, hbias=params.hbias)
        (tmp / "metrics.json").write_text(log.to_json(), encoding="utf-8")
