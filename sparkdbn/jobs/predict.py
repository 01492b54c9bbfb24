"""Score data with a trained DBN classifier: one row of predictions per input row.

    python jobs/predict.py --model out/run1/model --data data/new --output out/scored
    sparkdbn-predict --model out/run1/model --data table:lake.images \
        --output table:lake.image_classes --keep label --if-exists overwrite

Writes `id`, the --keep columns, `prediction` (double), `probability` (array<double>, one per
class) and with --features `hidden` (array<float>, the top layer's representation) as Parquet
or a table (`table:db.t`, `table:catalog.db.t`), committed whole by one rename. Exit codes:
0 success, 2 bad input (data, columns, model directory or an existing output), 1 other failures.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparkdbn.cli import JobParser, run
from sparkdbn.errors import InputError
from sparkdbn.fsutil import RESUMABLE_IF_EXISTS, check_target
from sparkdbn.logs import Reporter
from sparkdbn.tables import Table, parse_location

ID = "id"


def build_parser() -> JobParser:
    parser = JobParser(
        prog="predict",
        description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 success, 2 bad input (data, columns, model directory or an "
        "existing output), 1 other failures.",
    )
    parser.add_argument("--model", required=True, help="model directory (with model.json)")
    parser.add_argument(
        "--data", required=True, help="data to score: a Parquet path or table:NAME, with an "
        f"{ID!r} column and the features column",
    )
    parser.add_argument(
        "--output", required=True, help="where the predictions go: a Parquet directory or "
        "table:NAME",
    )
    parser.add_argument("--features-col", default="features", help="features column")
    parser.add_argument(
        "--keep", default="", help="comma-separated input columns copied to the output "
        f"beside {ID!r} (such as label)",
    )
    parser.add_argument(
        "--features", action="store_true",
        help="also write `hidden`, the top hidden layer's representation of each row",
    )
    parser.add_argument(
        "--partition-by", default="", help="comma-separated output columns to partition by",
    )
    parser.add_argument(
        "--if-exists",
        choices=RESUMABLE_IF_EXISTS,
        default="error",
        help="when the output exists: error (default) refuses it before any work, exit 2; "
        "overwrite replaces it (by one rename); resume keeps it and exits 0 without scoring",
    )
    return parser


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reporter = Reporter("predict", args.log_format)
    parse_location(args.data)  # a malformed table name is refused before Spark starts
    output = parse_location(args.output)
    if not isinstance(output, Table):
        check_target(output, args.if_exists, RESUMABLE_IF_EXISTS)
        if args.if_exists == "resume" and Path(output).exists():  # a local path: no Spark
            _skipped(reporter, args.output)
            return
    from sparkdbn.model import DBNModel

    model = DBNModel.load(args.model)
    if model.classifier is None:
        raise InputError(f"model {args.model!r} has no classifier layer (train with fine-tuning)")

    from sparkdbn.data import check_features, read_source
    from sparkdbn.engine.predict import HIDDEN, PREDICTION, PROBABILITY, score_columns
    from sparkdbn.engine.sink import output_exists, write_output
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn predict")
    if output_exists(spark, output):
        if args.if_exists == "error":
            raise InputError(f"output {args.output!r} already exists (use --if-exists overwrite)")
        if args.if_exists == "resume":
            _skipped(reporter, args.output)
            return
    df = read_source(spark, args.data)
    keep = list(dict.fromkeys([ID, *_names(args.keep)]))
    missing = [name for name in keep if name not in df.columns]
    if missing:
        raise InputError(f"column {missing[0]!r} not found; columns are {sorted(df.columns)}")
    made = [PREDICTION, PROBABILITY] + ([HIDDEN] if args.features else [])
    clash = [name for name in keep if name in made]
    if clash:
        raise InputError(f"--keep column {clash[0]!r} is also an output column; rename it")
    partition_by = _names(args.partition_by)
    unknown = [name for name in partition_by if name not in keep + made]
    if unknown:
        raise InputError(f"--partition-by column {unknown[0]!r} is not an output column")
    n_rows, width = check_features(df, args.features_col, model.visible)
    if width != model.sizes[0]:
        raise InputError(
            f"column {args.features_col!r} has {width} values per row, the model expects "
            f"{model.sizes[0]}"
        )
    reporter.event(
        "start", rows=n_rows, output=args.output,
        text=f"scoring {n_rows} rows of {args.data} into {args.output}",
    )
    scores = score_columns(df, model, args.features_col, keep, hidden=args.features)
    write_output(scores, output, partition_by)
    reporter.event(
        "done", output=args.output, rows=n_rows,
        text=f"{n_rows} predictions written to {args.output}",
    )


def _skipped(reporter: Reporter, output: str) -> None:
    reporter.event(
        "done", output=output, skipped=True, text=f"{output} already exists: nothing to do"
    )


def console() -> int:
    """The `sparkdbn-predict` console script and `python jobs/predict.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
