"""Convert a data set into sparkdbn's Parquet layout: id long, features array<float>, label int.

Sources: an MNIST-format directory (IDX files, gzipped or raw), a CSV file or directory, or a
Parquet file or directory; or Fashion-MNIST from the Debian package / a download.

    python jobs/prepare_data.py --fashion-mnist --output data/fashion-mnist
    python jobs/prepare_data.py --source train.csv --output data/mine --partitions 4

`id` is the row's index in the source (file order), so it is stable across runs. Features
are scaled into [0, 1]: MNIST images are divided by 255; CSV and Parquet features are divided
by 255 when their maximum exceeds 1 and kept as they are otherwise; anything still outside
[0, 1] is an error. The source is read on the driver, so it must fit in driver memory.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from sparkdbn.cli import JobParser, run
from sparkdbn.datasets import MNIST_SPLITS, download_fashion_mnist, find_fashion_mnist
from sparkdbn.errors import InputError
from sparkdbn.fsutil import RESUMABLE_IF_EXISTS, check_target
from sparkdbn.logs import Reporter
from sparkdbn.prepare import (
    FORMATS,
    SPLIT_DIRS,
    detect_format,
    load_datasets,
    local_path,
    write_datasets,
)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = JobParser(
        prog="prepare_data.py",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 done, 2 bad input (one line on stderr), 1 other failure.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--source", help="MNIST-format directory, CSV file/directory or Parquet file/directory"
    )
    source.add_argument(
        "--fashion-mnist",
        action="store_true",
        help="use Fashion-MNIST from --data-dir or /usr/share/datasets/fashion-mnist "
        "(apt-get install dataset-fashion-mnist)",
    )
    parser.add_argument("--data-dir", help="where to look for (or --download) Fashion-MNIST")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download the official Fashion-MNIST files into --data-dir first (MD5-checked)",
    )
    parser.add_argument("--format", choices=FORMATS, default="auto", help="source format")
    parser.add_argument(
        "--split",
        choices=MNIST_SPLITS,
        help="MNIST only: convert one split into OUTPUT itself "
        "(default: both, into OUTPUT/train and OUTPUT/test)",
    )
    parser.add_argument("--output", required=True, help="output directory (local path)")
    parser.add_argument(
        "--partitions", type=positive_int, default=8, help="Parquet files per data set"
    )
    parser.add_argument(
        "--features-col", default="features", help="Parquet input: array or Vector column"
    )
    parser.add_argument(
        "--label-col",
        default="label",
        help="CSV/Parquet input: integer label column (in CSV every other column is a pixel)",
    )
    parser.add_argument(
        "--if-exists",
        choices=RESUMABLE_IF_EXISTS,
        default="error",
        help="when OUTPUT already exists: error (default) refuses it, exit 2, nothing read; "
        "overwrite replaces it in one rename at the end; resume leaves a complete OUTPUT (the "
        "expected data sets, each with Spark's _SUCCESS marker) alone and exits 0, and "
        "converts afresh (replacing OUTPUT) otherwise",
    )
    return parser.parse_args(argv)


def expected_layouts(args: argparse.Namespace, source: Path | None) -> list[list[str]]:
    """The data set directories under OUTPUT ("" = OUTPUT itself) that a run with these flags
    writes; with --format auto and no readable source, either layout counts."""
    fmt = "mnist" if args.fashion_mnist else args.format
    if fmt == "auto" and source is not None and source.exists():
        with contextlib.suppress(InputError):  # the fresh run reports it
            fmt = detect_format(source)
    both_splits = list(SPLIT_DIRS.values())
    if args.split is not None or fmt in ("csv", "parquet"):
        return [[""]]
    return [both_splits] if fmt == "mnist" else [[""], both_splits]


def is_complete(output: Path, layouts: list[list[str]]) -> bool:
    """An OUTPUT this job finished: every expected data set has its _SUCCESS marker."""
    return any(all((output / name / "_SUCCESS").is_file() for name in names) for names in layouts)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reporter = Reporter("prepare_data", args.log_format)
    output = local_path(args.output, "--output")
    check_target(output, args.if_exists, RESUMABLE_IF_EXISTS)
    if args.download and not (args.fashion_mnist and args.data_dir):
        raise InputError("--download needs --fashion-mnist and --data-dir DIR to download into")
    if args.data_dir and not args.fashion_mnist:
        raise InputError("--data-dir applies to --fashion-mnist only; use --source for a path")
    source_path = None if args.fashion_mnist else local_path(args.source, "--source")
    # resume: a finished output stays; anything else there is converted afresh and replaced.
    resumable = args.if_exists == "resume" and output.exists()
    if resumable and is_complete(output, expected_layouts(args, source_path)):
        reporter.event(
            "done", output=str(output), skipped=True,
            text=f"{output} is already complete: nothing to do",
        )
        return
    if args.fashion_mnist:
        data_dir = local_path(args.data_dir, "--data-dir") if args.data_dir else None
        if args.download:
            download_fashion_mnist(data_dir)
        source, fmt = find_fashion_mnist(data_dir), "mnist"
    else:
        source, fmt = source_path, args.format
    datasets = load_datasets(source, fmt, args.split, args.features_col, args.label_col)

    from sparkdbn.session import get_session

    spark = get_session("sparkdbn-prepare-data")
    if_exists = "overwrite" if args.if_exists == "resume" else args.if_exists
    counts = write_datasets(spark, datasets, output, args.partitions, if_exists)
    reporter.event(
        "done", output=str(output), written=counts,
        text="\n".join(f"wrote {rows} rows to {path}" for path, rows in counts.items()),
    )


def console() -> int:
    """The `sparkdbn-prepare` console script and `python jobs/prepare_data.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
