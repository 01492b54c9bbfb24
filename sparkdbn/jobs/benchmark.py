"""Measure sparkdbn against this machine's limits; print one JSON object and a table.

    python jobs/benchmark.py --output bench.json            # full Fashion-MNIST when prepared
    python jobs/benchmark.py --rows 4000 --repeats 1 --epochs 2   # a quick look

Data: data/fashion-mnist/train (make train prepares it) or --data; else random binary data of
the same shape (the JSON says which). Every figure is a median after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sparkdbn import benchmark as bm
from sparkdbn.cli import JobParser, run
from sparkdbn.errors import InputError
from sparkdbn.fsutil import IF_EXISTS, check_target, write_text_atomic
from sparkdbn.kernels.rbm import CDConfig
from sparkdbn.logs import Reporter
from sparkdbn.settings import parse_sizes

DEFAULT_DATA = bm.REPO / "data" / "fashion-mnist" / "train"


def build_parser() -> JobParser:
    parser = JobParser(
        prog="benchmark",
        description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 success, 2 bad input or settings, 1 other failures.",
    )
    parser.add_argument("--data", help=f"Parquet training data (default: {DEFAULT_DATA})")
    parser.add_argument("--rows", type=int, default=60000, help="rows (random data or a prefix)")
    parser.add_argument("--hidden", type=int, default=500, help="hidden units of the epoch tests")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per figure")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per layer in makespans")
    parser.add_argument(
        "--layers", default="784,500,784",
        help="DBN of the makespan runs; must tie for the tied schedule (default 784,500,784)",
    )
    parser.add_argument("--partitions", type=int, default=2, help="training data partitions")
    parser.add_argument(
        "--publish-every", type=int, default=2,
        help="epochs between rough versions in the pipelined makespans (default 2)",
    )
    parser.add_argument(
        "--layer-core-epochs", type=int, default=20,
        help="epochs per layer in the one-core-per-layer comparison (default 20): the pipeline "
        "can at best reach 2E/(E+1) of greedy, 1.71 at 6 epochs, 1.90 at 20",
    )
    parser.add_argument(
        "--layer-core-publish-every", type=int, default=5,
        help="epochs between rough versions in the one-core-per-layer comparison (default 5)",
    )
    parser.add_argument(
        "--layer-core-repeats", type=int,
        help="sequential/pipelined pairs in the one-core-per-layer comparison (default: "
        "--repeats); each pair takes about 4 minutes at the default sizes",
    )
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument(
        "--if-exists",
        choices=IF_EXISTS,
        default="error",
        help="when the --output file exists: error (default) refuses it before measuring, "
        "exit 2; overwrite replaces it (written whole, by a rename). No resume: a benchmark "
        "is measured afresh",
    )
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)  # internal: one epoch run
    return parser


def _subprocess_env(master: str) -> dict[str, str]:
    return {**os.environ, "SPARKDBN_MASTER": master, "PYSPARK_PYTHON": sys.executable}


def _epoch_subprocess(args: argparse.Namespace, data: str, scale: int) -> dict:
    """Epoch seconds and driver peak memory at 1× or 4× the rows, in a fresh application."""
    cmd = [
        "-m", "sparkdbn.jobs.benchmark", "--data", data, "--scale", str(scale),
        "--hidden", str(args.hidden), "--repeats", str(args.repeats),
        "--partitions", str(args.partitions),
    ]
    return bm.run_json_subprocess(cmd, _subprocess_env("local[*]"))


def _scale_main(args: argparse.Namespace) -> None:
    from sparkdbn.engine.bench import epoch_at_scale
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn benchmark epoch")
    seconds = epoch_at_scale(
        spark, args.data, args.scale, args.hidden, CDConfig(), args.partitions, args.repeats
    )
    print(json.dumps({"epoch_seconds": seconds, "driver_peak_rss_mb": bm.peak_rss_mb()}))


def _pinned(core: int) -> list[str]:
    """Command prefix that keeps a process and all its children (the JVM, Python workers) on
    one core: a local[1] application alone also uses a second core for its JVM otherwise."""
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(core % (os.cpu_count() or 1))] if taskset else []


def _per_layer_core(args: argparse.Namespace, data: str, layers: list[int]) -> dict:
    """Sequential greedy on one core vs pipelined with one single-core application per layer,
    in `--layer-core-repeats` interleaved pairs; the figure is the ratio of the medians, the
    timeline that of the median pipelined run."""
    pairs = [_layer_core_pair(args, data, layers) for _ in range(args.layer_core_repeats)]
    sequential = statistics.median(seq for seq, _, _ in pairs)
    pipelined = statistics.median(pipe for _, pipe, _ in pairs)
    _, _, metrics = sorted(pairs, key=lambda pair: pair[1])[(len(pairs) - 1) // 2]
    return {
        "sequential_1core_makespan_seconds": sequential,
        "pipelined_1core_per_layer_makespan_seconds": pipelined,
        "pipelined_speedup_per_layer_core": sequential / pipelined,
        "per_layer_core_pinned": bool(_pinned(0)),
        "per_layer_core_timeline": bm.pipeline_timeline(metrics),
        "per_layer_core_runs": {
            "sequential": [round(seq, 3) for seq, _, _ in pairs],
            "pipelined": [round(pipe, 3) for _, pipe, _ in pairs],
        },
    }


def _layer_core_pair(
    args: argparse.Namespace, data: str, layers: list[int]
) -> tuple[float, float, list[dict]]:
    """One sequential and one pipelined makespan, and the pipelined layers' metrics.

    "One core" is enforced with CPU affinity (taskset) when available: layer l's application
    runs on core l, the sequential one on core 0, each with local[1].
    """
    tmp = bm.temp_dir()
    common = [
        "--layers", ",".join(map(str, layers)), "--epochs", str(args.layer_core_epochs),
        "--partitions", "1", "--publish-every", str(args.layer_core_publish_every),
        "--final-epochs", "1",
    ]
    seq = subprocess.run(
        [*_pinned(0), sys.executable, "-m", "sparkdbn.jobs.train_dbn", "--train", data, "--output",
         str(tmp / "seq"), "--schedule", "sequential", *common],
        env=_subprocess_env("local[1]"), capture_output=True, text=True, check=False,
    )
    if seq.returncode != 0:
        raise RuntimeError(f"sequential run failed:\n{seq.stderr[-3000:]}")
    sequential = json.loads((tmp / "seq" / "metrics.json").read_text())["makespan_seconds"]
    def start(layer: int) -> subprocess.Popen[str]:
        log = tmp / f"layer{layer}.log"
        with open(log, "w") as out:
            return subprocess.Popen(
                [*_pinned(layer), sys.executable, "-m", "sparkdbn.jobs.pretrain_layer", "--layer",
                 str(layer), "--store", str(tmp / "store"), "--output", str(tmp / f"layer{layer}"),
                 "--schedule", "pipelined", *common, *(["--train", data] if layer == 0 else [])],
                env=_subprocess_env("local[1]"), stdout=out, stderr=subprocess.STDOUT,
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
    spans = [span for m in metrics for span in bm.layer_spans(m)]
    pipelined = max(e for _, e in spans) - min(s for s, _ in spans)
    return sequential, pipelined, metrics


class References:
    """The in-process references the Spark epoch is compared with: our numpy epoch and
    scikit-learn's, on float32 (like for like) and on float64 (its default for numpy data).

    They are timed in three windows, around and between the Spark epoch runs, and each figure
    is the median of all windows' runs (every run is kept in `reference_runs`). Two BLAS
    threads on 100-row products are fragile on a shared VM: whole windows ran at 3.4 s instead
    of 1.9 s here, so one window alone can halve or double a ratio.
    """

    def __init__(self, X: np.ndarray, hidden: int, cfg: CDConfig, repeats: int) -> None:
        self.X, self.hidden, self.cfg, self.repeats = X, hidden, cfg, repeats
        self.X64 = X.astype(np.float64)
        self.runs: dict[str, list[float]] = {}

    def measure(self) -> None:
        measured = {
            "numpy_epoch_seconds": bm.numpy_epoch_runs(self.X, self.hidden, self.cfg, self.repeats),
            "sklearn_epoch_seconds": bm.sklearn_epoch_runs(
                self.X, self.hidden, self.cfg.batch_size, self.repeats
            ),
            "sklearn_float64_epoch_seconds": bm.sklearn_epoch_runs(
                self.X64, self.hidden, self.cfg.batch_size, self.repeats
            ),
        }
        for key, runs in measured.items():
            if runs is not None:
                self.runs.setdefault(key, []).extend(runs)

    def figures(self) -> dict:
        medians = {key: statistics.median(runs) for key, runs in self.runs.items()}
        rounded = {key: [round(t, 3) for t in runs] for key, runs in self.runs.items()}
        return {**medians, "reference_runs": rounded}


def _load(path: str, rows: int) -> np.ndarray:
    table = pq.read_table(path, columns=["features"])
    flat = table.column("features").combine_chunks().flatten().to_numpy()
    X = flat.astype(np.float32).reshape(table.num_rows, -1)
    return X[:rows]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.scale is not None:
        _scale_main(args)
        return
    reporter = Reporter("benchmark", args.log_format)
    if args.output:
        check_target(args.output, args.if_exists)
    layers = parse_sizes("--layers", args.layers)
    if args.layer_core_repeats is None:
        args.layer_core_repeats = args.repeats
    sizes = (
        args.rows, args.repeats, args.epochs, args.partitions, args.hidden, args.publish_every,
        args.layer_core_epochs, args.layer_core_publish_every, args.layer_core_repeats,
    )
    if min(sizes) < 1:
        raise InputError(
            "--rows, --repeats, --epochs, --partitions, --hidden, --publish-every, "
            "--layer-core-epochs, --layer-core-publish-every and --layer-core-repeats "
            "must be >= 1"
        )
    source = args.data or (str(DEFAULT_DATA) if DEFAULT_DATA.exists() else None)
    tmp = bm.temp_dir()
    data = str(tmp / "data")
    if source is None:
        source_kind = f"random binary data, {args.rows} x 784 (Fashion-MNIST not prepared)"
        rng = np.random.default_rng(0)
        X = (rng.random((args.rows, 784), dtype=np.float32) < 0.3).astype(np.float32)
    else:
        X = _load(source, args.rows)
        source_kind = f"{len(X)} rows of {source}"
    bm.write_parquet(Path(data), X, args.partitions)
    n, width = X.shape
    cfg = CDConfig()
    out: dict = {"data": source_kind, "rows": n, "machine": bm.machine(),
                 "settings": {"hidden": args.hidden, "k": cfg.k, "batch_size": cfg.batch_size,
                              "repeats": args.repeats, "partitions": args.partitions,
                              "publish_every": args.publish_every,
                              "makespan_layers": layers, "makespan_epochs": args.epochs,
                              "layer_core_epochs": args.layer_core_epochs,
                              "layer_core_publish_every": args.layer_core_publish_every,
                              "layer_core_repeats": args.layer_core_repeats}}
    out["sgemm_gflops"] = bm.sgemm_gflops(repeats=max(args.repeats, 3))
    references = References(X, args.hidden, cfg, args.repeats)
    references.measure()
    one = _epoch_subprocess(args, data, 1)
    references.measure()
    four = _epoch_subprocess(args, data, 4)
    references.measure()
    out.update(references.figures())
    out["spark_epoch_seconds"] = one["epoch_seconds"]
    out["spark_overhead_ratio"] = one["epoch_seconds"] / out["numpy_epoch_seconds"]
    out["cd_gflops"] = bm.cd_flops(n, width, args.hidden, cfg.k) / one["epoch_seconds"] / 1e9
    out["fraction_of_sgemm"] = out["cd_gflops"] / out["sgemm_gflops"]
    if "sklearn_epoch_seconds" in out:
        out["speedup_vs_sklearn"] = out["sklearn_epoch_seconds"] / one["epoch_seconds"]
        out["speedup_vs_sklearn_float64"] = (
            out["sklearn_float64_epoch_seconds"] / one["epoch_seconds"]
        )
    out["scaling_ratio_4x"] = four["epoch_seconds"] / one["epoch_seconds"]
    out["driver_peak_rss_mb"] = {"1x": one["driver_peak_rss_mb"], "4x": four["driver_peak_rss_mb"]}

    from sparkdbn.engine.bench import makespan
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn benchmark")
    # Rounds of the three schedules in turn, so that a slow window of this machine falls on
    # all of them alike; each figure is the median of its rounds.
    schedules = ("sequential", "pipelined", "tied")
    runs: dict[str, list[float]] = {schedule: [] for schedule in schedules}
    # Warm-up, untimed: this application's first jobs, rough versions and store reads.
    makespan(spark, data, layers, "pipelined", 2, args.partitions, tmp / "stores",
             publish_every=1, final_epochs=1)
    for _ in range(args.repeats):
        for schedule in schedules:
            seconds = makespan(
                spark, data, layers, schedule, args.epochs, args.partitions, tmp / "stores",
                publish_every=args.publish_every, final_epochs=1,
            )
            runs[schedule].append(round(seconds, 3))
    for schedule in schedules:
        out[f"{schedule}_makespan_seconds"] = statistics.median(runs[schedule])
    out["makespan_runs"] = runs
    out.update(_per_layer_core(args, data, layers))
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(out, indent=2)
    reporter.event("benchmark", results=out, text=f"{table(out)}\n{text}")
    if args.output:
        write_text_atomic(args.output, text + "\n")
    reporter.event("done", output=args.output, text="")  # text: the JSON above says it all


def table(out: dict) -> str:
    rows = [(k, v) for k, v in out.items() if isinstance(v, int | float)]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'figure':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v:,.3f}" for k, v in rows]
    return "\n".join(lines)


def console() -> int:
    """The `sparkdbn-benchmark` console script and `python jobs/benchmark.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
