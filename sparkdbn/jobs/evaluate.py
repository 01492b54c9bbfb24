"""Evaluate a trained DBN classifier on labelled data: accuracy, per class, confusion matrix.

    python jobs/evaluate.py --model out/run1/model --data data/fashion-mnist/test
    python jobs/evaluate.py --model out/run1/model --data test.parquet --output eval.json

Prints a readable table; --output also writes the figures as JSON. Exit codes: 0 success,
2 bad input (data, columns or model directory), 1 other failures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sparkdbn.cli import JobParser, run
from sparkdbn.errors import InputError
from sparkdbn.fsutil import RESUMABLE_IF_EXISTS, check_target, write_text_atomic
from sparkdbn.logs import Reporter


def build_parser() -> JobParser:
    parser = JobParser(
        prog="evaluate",
        description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 success, 2 bad input (data, columns or model directory), "
        "1 other failures.",
    )
    parser.add_argument("--model", required=True, help="model directory (with model.json)")
    parser.add_argument(
        "--data", required=True, help="labelled data: a Parquet path or table:NAME"
    )
    parser.add_argument("--features-col", default="features", help="features column")
    parser.add_argument("--label-col", default="label", help="integer label column")
    parser.add_argument("--output", help="also write the evaluation as JSON to this file")
    parser.add_argument(
        "--if-exists",
        choices=RESUMABLE_IF_EXISTS,
        default="error",
        help="when the --output file exists: error (default) refuses it before any work, "
        "exit 2; overwrite replaces it (written whole, by a rename); resume keeps it and "
        "exits 0 without evaluating",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reporter = Reporter("evaluate", args.log_format)
    if args.output:
        check_target(args.output, args.if_exists, RESUMABLE_IF_EXISTS)
        if args.if_exists == "resume" and Path(args.output).exists():
            reporter.event(
                "done", output=args.output, skipped=True,
                text=f"{args.output} already exists: nothing to do",
            )
            return
    from sparkdbn.model import DBNModel

    model = DBNModel.load(args.model)
    if model.classifier is None:
        raise InputError(f"model {args.model!r} has no classifier layer (train with fine-tuning)")

    from sparkdbn.data import prepare
    from sparkdbn.engine.predict import evaluate, predict_packed
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn evaluate")
    data = prepare(spark, args.data, args.features_col, args.label_col, model.visible,
                   require_label=True)
    try:
        if data.width != model.sizes[0]:
            raise InputError(
                f"column {args.features_col!r} has {data.width} values per row, the model "
                f"expects {model.sizes[0]}"
            )
        if data.max_label is not None and data.max_label >= model.n_classes:
            raise InputError(
                f"column {args.label_col!r} has label {data.max_label}, beyond the model's "
                f"{model.n_classes} classes"
            )
        result = evaluate(predict_packed(data, model.to_mlp()), model.n_classes)
    finally:
        data.unpersist()
    reporter.event(
        "evaluation", model=args.model, data=args.data, text=result.table(), **result.to_dict()
    )
    if args.output:
        write_text_atomic(args.output, json.dumps(result.to_dict(), indent=2) + "\n")
    reporter.event("done", output=args.output, text="")  # text: the table says it all


def console() -> int:
    """The `sparkdbn-evaluate` console script and `python jobs/evaluate.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
