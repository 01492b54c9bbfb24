"""Measure sparkdbn against this machine's limits; print one JSON object and a table.

    python jobs/benchmark.py --output bench.json            # full Fashion-MNIST when prepared
    python jobs/benchmark.py --rows 4000 --repeats 1 --epochs 2   # a quick look

Data: --data, or data/fashion-mnist/train in the working directory (make train prepares it);
else random binary data of the same shape (the JSON says which). Every figure is a median after
a warm-up; the measurements are `sparkdbn.bench`'s.
"""

from __future__ import annotations

import argparse
import json
import sys

from sparkdbn.bench.layer_core import LayerCoreSettings
from sparkdbn.bench.suite import DEFAULT_DATA, BenchSettings, measure, table
from sparkdbn.cli import JobParser, run
from sparkdbn.errors import InputError
from sparkdbn.fsutil import IF_EXISTS, check_target, write_text_atomic
from sparkdbn.logs import Reporter
from sparkdbn.settings import parse_sizes


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


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.scale is not None:
        from sparkdbn.bench.epochs import epoch_figures

        figures = epoch_figures(args.data, args.scale, args.hidden, args.repeats, args.partitions)
        print(json.dumps(figures))
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
    out = measure(BenchSettings(
        args.data, args.rows, args.hidden, args.repeats, args.epochs, layers, args.partitions,
        args.publish_every,
        LayerCoreSettings(
            args.layer_core_epochs, args.layer_core_publish_every, args.layer_core_repeats
        ),
    ))
    text = json.dumps(out, indent=2)
    reporter.event("benchmark", results=out, text=f"{table(out)}\n{text}")
    if args.output:
        write_text_atomic(args.output, text + "\n")
    reporter.event("done", output=args.output, text="")  # text: the JSON above says it all


def console() -> int:
    """The `sparkdbn-benchmark` console script and `python jobs/benchmark.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
