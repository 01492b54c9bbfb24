"""The one-core-per-layer comparison: greedy on one core against one single-core application
per layer, each a real job (train_dbn, pretrain_layer) in its own process."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from sparkdbn.bench.common import subprocess_env, temp_dir


@dataclass(frozen=True)
class LayerCoreSettings:
    """Epochs per layer, epochs between rough versions, and sequential/pipelined pairs."""

    epochs: int
    publish_every: int
    repeats: int


def pinned(core: int) -> list[str]:
    """Command prefix that keeps a process and all its children (the JVM, Python workers) on
    one core: a local[1] application alone also uses a second core for its JVM otherwise."""
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(core % (os.cpu_count() or 1))] if taskset else []


def per_layer_core(settings: LayerCoreSettings, data: str, layers: list[int]) -> dict:
    """Sequential greedy on one core vs pipelined with one single-core application per layer,
    in `settings.repeats` interleaved pairs; the figure is the ratio of the medians, the
    timeline that of the median pipelined run."""
    pairs = [layer_core_pair(settings, data, layers) for _ in range(settings.repeats)]
    sequential = statistics.median(seq for seq, _, _ in pairs)
    pipelined = statistics.median(pipe for _, pipe, _ in pairs)
    _, _, metrics = sorted(pairs, key=lambda pair: pair[1])[(len(pairs) - 1) // 2]
    return {
        "sequential_1core_makespan_seconds": sequential,
        "pipelined_1core_per_layer_makespan_seconds": pipelined,
        "pipelined_speedup_per_layer_core": sequential / pipelined,
        "per_layer_core_pinned": bool(pinned(0)),
        "per_layer_core_timeline": pipeline_timeline(metrics),
        "per_layer_core_runs": {
            "sequential": [round(seq, 3) for seq, _, _ in pairs],
            "pipelined": [round(pipe, 3) for _, pipe, _ in pairs],
        },
    }


def layer_core_pair(
    settings: LayerCoreSettings, data: str, layers: list[int]
) -> tuple[float, float, list[dict]]:
    """One sequential and one pipelined makespan, and the pipelined layers' metrics.

    "One core" is enforced with CPU affinity (taskset) when available: layer l's application
    runs on core l, the sequential one on core 0, each with local[1].
    """
    tmp = temp_dir()
    common = [
        "--layers", ",".join(map(str, layers)), "--epochs", str(settings.epochs),
        "--partitions", "1", "--publish-every", str(settings.publish_every),
        "--final-epochs", "1",
    ]
    seq = subprocess.run(
        [*pinned(0), sys.executable, "-m", "sparkdbn.jobs.train_dbn", "--train", data, "--output",
         str(tmp / "seq"), "--schedule", "sequential", *common],
        env=subprocess_env("local[1]"), capture_output=True, text=True, check=False,
    )
    if seq.returncode != 0:
        raise RuntimeError(f"sequential run failed:\n{seq.stderr[-3000:]}")
    sequential = json.loads((tmp / "seq" / "metrics.json").read_text())["makespan_seconds"]
    def start(layer: int) -> subprocess.Popen[str]:
        log = tmp / f"layer{layer}.log"
        with open(log, "w") as out:
            return subprocess.Popen(
                [*pinned(layer), sys.executable, "-m", "sparkdbn.jobs.pretrain_layer", "--layer",
                 str(layer), "--store", str(tmp / "store"), "--output", str(tmp / f"layer{layer}"),
                 "--schedule", "pipelined", *common, *(["--train", data] if layer == 0 else [])],
                env=subprocess_env("local[1]"), stdout=out, stderr=subprocess.STDOUT,
            )

    # Upper layers first, each until it is up and waiting: as machines that are already booted
    # when layer 0 starts, so application start-up does not count against the pipeline.
    procs = []
    for layer in range(len(layers) - 2, -1, -1):
        procs.append(start(layer))
        while layer > 0 and f"layer {layer} ready" not in (tmp / f"layer{layer}.log").read_text():
            if procs[-1].poll() is not None:
                break
            time.sleep(0.2)
    for layer, proc in zip(range(len(layers) - 2, -1, -1), procs, strict=True):
        if proc.wait() != 0:
            log = (tmp / f"layer{layer}.log").read_text()
            raise RuntimeError(f"pretrain_layer {layer} failed:\n{log[-3000:]}")
    metrics = [
        json.loads((tmp / f"layer{layer}" / "metrics.json").read_text())
        for layer in range(len(layers) - 1)
    ]
    shutil.rmtree(tmp, ignore_errors=True)
    spans = [span for m in metrics for span in layer_spans(m)]
    pipelined = max(e for _, e in spans) - min(s for s, _ in spans)
    return sequential, pipelined, metrics


def layer_spans(metrics: dict[str, Any]) -> list[tuple[float, float]]:
    """Absolute (start, end) seconds of each layer from a metrics.json document."""
    base = metrics["run_started_unix"]
    return [(base + lg["started_at"], base + lg["finished_at"]) for lg in metrics["layers"]]


def pipeline_timeline(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Where a one-application-per-layer pipeline spends its makespan, for layers 0 and 1,
    from their metrics.json documents (absolute clocks, so the applications line up):

    - upper_start_delay: from layer 0's start until layer 1 starts training;
    - layer0_seconds: layer 0's epochs, with its rough versions (written in or after them);
    - final_publish: layer 0's last version, a pass with the final weights;
    - upper_tail: from that version's commit until layer 1 is done (its load and last epochs).
    """
    (s0, e0), (s1, e1) = (layer_spans(m)[0] for m in metrics[:2])
    publishes = metrics[0]["layers"][0]["publishes"]
    final = publishes[-1]
    committed = metrics[0]["run_started_unix"] + final["started_at"] + final["seconds"]
    return {
        "upper_start_delay_seconds": round(s1 - s0, 3),
        "layer0_seconds": round(e0 - s0, 3),
        "final_publish_seconds": final["seconds"],
        "upper_tail_seconds": round(e1 - committed, 3),
        "rough_versions": len(publishes) - 1,
    }
