"""The scaling study: one network trained at growing partition counts, per averaging strategy.

Every point trains the same config on the same data for the same epochs, changing only the
number of partitions (and the strategy), so the accuracy and reconstruction error it reports
are the statistical efficiency of the averaging, and the seconds per epoch its Spark cost on
the same cores. With one partition every strategy is the same run (there is nothing to
average), so P = 1 runs once. For the default strategy the study also finds, among the given
epoch counts, the fewest epochs at which each P reaches P = 1's accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from sparkdbn.config import TrainConfig
from sparkdbn.engine.training import TrainingResult, train
from sparkdbn.fsutil import atomic_directory
from sparkdbn.kernels.averaging import DEFAULT_STRATEGY
from sparkdbn.logs import Reporter

BASELINE_PARTITIONS = 2


@dataclass
class Point:
    """One training run of the study."""

    partitions: int
    strategy: str
    epochs: int
    finetune_epochs: int
    test_accuracy: float
    recon_error: float
    pretrain_epoch_seconds: float
    finetune_epoch_seconds: float
    rounds: list[int] = field(default_factory=list)
    max_replica_divergence: float = 0.0


def _point(result: TrainingResult, cfg: TrainConfig) -> Point:
    epochs = [e for layer in result.run.layers for e in layer.epochs]
    tuned = result.finetune_history
    divergence = [d for e in epochs for d in e.replica_divergence]
    divergence += [d for e in tuned for d in e.replica_divergence]
    return Point(
        partitions=cfg.partitions or 1,
        strategy=cfg.averaging,
        epochs=cfg.epochs,
        finetune_epochs=cfg.finetune_epochs,
        test_accuracy=result.evaluation.accuracy,
        recon_error=epochs[-1].recon_error,
        pretrain_epoch_seconds=statistics.median(e.seconds for e in epochs),
        finetune_epoch_seconds=statistics.median(e.seconds for e in tuned) if tuned else 0.0,
        rounds=[epochs[-1].rounds, tuned[-1].rounds if tuned else 0],
        max_replica_divergence=round(max(divergence, default=0.0), 4),
    )


def train_point(
    spark: SparkSession, base: TrainConfig, train_path: str, test_path: str, partitions: int,
    strategy: str, epochs: int, finetune_epochs: int,
) -> Point:
    """Train `base` with these partitions, strategy and epochs; measure it on `test_path`."""
    cfg = dataclasses.replace(
        base, partitions=partitions, averaging=strategy, epochs=epochs,
        finetune_epochs=finetune_epochs, schedule="sequential", baseline=False,
        checkpoint_every=0,
    ).validate()
    store = tempfile.mkdtemp(prefix="sparkdbn-scaling-")
    try:
        quiet = Reporter("scaling_study", write=lambda line: None)
        result = train(spark, cfg, store, train_path, test_path, reporter=quiet)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return _point(result, cfg)


def study(
    spark: SparkSession,
    base: TrainConfig,
    train_path: str,
    test_path: str,
    partitions: list[int],
    strategies: list[str],
    efficiency_epochs: list[int],
    report: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """All points of the study, the cost relative to P = BASELINE_PARTITIONS, and the epochs
    the default strategy needs to reach P = 1's accuracy (None: not within the largest)."""
    points: list[Point] = []

    def run(p: int, strategy: str, epochs: int, finetune_epochs: int) -> Point:
        point = train_point(spark, base, train_path, test_path, p, strategy, epochs,
                            finetune_epochs)
        report(
            f"P={p:<3} {strategy:<8} {epochs}+{finetune_epochs} epochs · accuracy "
            f"{point.test_accuracy:.4f} · recon {point.recon_error:.2f} · "
            f"{point.pretrain_epoch_seconds:.2f} / {point.finetune_epoch_seconds:.2f} s per epoch"
        )
        points.append(point)
        return point

    single = run(1, strategies[0], base.epochs, base.finetune_epochs) if 1 in partitions else None
    for strategy in strategies:
        for p in partitions:
            if p == 1:
                if strategy != single.strategy:
                    points.append(dataclasses.replace(single, strategy=strategy))
                continue
            run(p, strategy, base.epochs, base.finetune_epochs)
    target = single.test_accuracy if single is not None else None
    needed: dict[str, int | None] = {}
    if target is not None and DEFAULT_STRATEGY in strategies:
        for p in partitions:
            needed[str(p)] = _epochs_to_reach(
                target, p, points, efficiency_epochs, base,
                lambda e, p=p: run(p, DEFAULT_STRATEGY, e, e * base.finetune_epochs // base.epochs),
            )
    return {
        "config": {k: v for k, v in base.to_dict().items() if v is not None},
        "n_rows": _rows(spark, train_path),
        "target_accuracy": target,
        "points": [asdict(point) for point in points],
        "relative_epoch_seconds": _relative_cost(points, base),
        "epochs_to_target": needed,
    }


def _rows(spark: SparkSession, path: str) -> int:
    return spark.read.parquet(path).count()


def _epochs_to_reach(
    target: float, p: int, points: list[Point], candidates: list[int], base: TrainConfig,
    run: Callable[[int], Point],
) -> int | None:
    """The fewest pretraining epochs (fine-tuning scaled alike) at which P reaches `target`."""
    first = next(
        pt for pt in points
        if pt.partitions == p and pt.strategy == DEFAULT_STRATEGY and pt.epochs == base.epochs
    )
    if first.test_accuracy >= target:
        return base.epochs
    for epochs in sorted(e for e in candidates if e > base.epochs):
        if run(epochs).test_accuracy >= target:
            return epochs
    return None


def _relative_cost(points: list[Point], base: TrainConfig) -> dict[str, dict[str, list[float]]]:
    """Per strategy and P: seconds per pretraining and fine-tuning epoch over P = 2's."""
    out: dict[str, dict[str, list[float]]] = {}
    equal = [pt for pt in points if pt.epochs == base.epochs]
    for strategy in sorted({pt.strategy for pt in equal}):
        mine = {pt.partitions: pt for pt in equal if pt.strategy == strategy}
        ref = mine.get(BASELINE_PARTITIONS)
        if ref is None:
            continue
        out[strategy] = {
            str(p): [
                round(pt.pretrain_epoch_seconds / ref.pretrain_epoch_seconds, 3),
                round(pt.finetune_epoch_seconds / ref.finetune_epoch_seconds, 3)
                if ref.finetune_epoch_seconds else 0.0,
            ]
            for p, pt in sorted(mine.items())
        }
    return out


def table(result: dict[str, Any]) -> str:
    """The study as a Markdown table: one row per P, per strategy accuracy, recon and cost."""
    equal = [pt for pt in result["points"] if pt["epochs"] == result["config"]["epochs"]]
    strategies = sorted({pt["strategy"] for pt in equal}, key=lambda s: s != "plain")
    header = ["P", "rows/partition"]
    for s in strategies:
        header += [f"{s} accuracy", f"{s} recon", f"{s} s/epoch (pretrain, fine-tune)"]
    header.append(f"{DEFAULT_STRATEGY}: epochs to P=1's accuracy")
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    n_rows = result.get("n_rows", 0)
    for p in sorted({pt["partitions"] for pt in equal}):
        cells = [str(p), f"{n_rows // p:,}" if n_rows else "?"]
        for s in strategies:
            pt = next((x for x in equal if x["partitions"] == p and x["strategy"] == s), None)
            if pt is None:
                cells += ["", "", ""]
                continue
            cells += [
                f"{pt['test_accuracy']:.4f}", f"{pt['recon_error']:.1f}",
                f"{pt['pretrain_epoch_seconds']:.2f}, {pt['finetune_epoch_seconds']:.2f}",
            ]
        needed = result["epochs_to_target"].get(str(p), "")
        cells.append("not reached" if needed is None else str(needed))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy and reconstruction error against P (log scale), one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    equal = [pt for pt in result["points"] if pt["epochs"] == result["config"]["epochs"]]
    fig, (acc, recon) = plt.subplots(1, 2, figsize=(10, 4))
    for strategy in sorted({pt["strategy"] for pt in equal}):
        mine = sorted((pt for pt in equal if pt["strategy"] == strategy),
                      key=lambda pt: pt["partitions"])
        ps = [pt["partitions"] for pt in mine]
        acc.plot(ps, [pt["test_accuracy"] for pt in mine], marker="o", label=strategy)
        recon.plot(ps, [pt["recon_error"] for pt in mine], marker="o", label=strategy)
    if result["target_accuracy"] is not None:
        acc.axhline(result["target_accuracy"], color="grey", linestyle=":", label="P = 1")
    for ax, what in ((acc, "test accuracy"), (recon, "last reconstruction error")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("partitions")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        ax.legend()
    cfg = result["config"]
    fig.suptitle(
        f"{'-'.join(map(str, cfg['layers']))}, {cfg['epochs']} + {cfg['finetune_epochs']} "
        "epochs, equal epochs at every P"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(result: dict[str, Any], output: str | Path) -> None:
    """OUTPUT/scaling.json, scaling.md and scaling.png, committed together."""
    with atomic_directory(output) as tmp:
        (tmp / "scaling.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (tmp / "scaling.md").write_text(table(result) + "\n", encoding="utf-8")
        plot(result, tmp / "scaling.png")
