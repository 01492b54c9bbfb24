"""Evaluate a trained DBN: classifier accuracy, per class, confusion matrix; and with
--log-likelihood each RBM layer's log-likelihood of the data by AIS.

    python jobs/evaluate.py --model out/run1/model --data data/fashion-mnist/test
    python jobs/evaluate.py --model out/run1/model --data test.parquet --output eval.json
    python jobs/evaluate.py --model out/run1/model --data test.parquet --log-likelihood

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
from sparkdbn.kernels.likelihood import (
    DEFAULT_BETAS,
    DEFAULT_CHAINS,
    DEFAULT_GROUPS,
    DEFAULT_SCHEDULE,
    SCHEDULES,
)
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
        "--data", required=True,
        help="data (a Parquet path or table:NAME); labelled when the model has a classifier, "
        "unless only --log-likelihood is asked of a model without one",
    )
    parser.add_argument("--features-col", default="features", help="features column")
    parser.add_argument("--label-col", default="label", help="integer label column")
    parser.add_argument("--output", help="also write the evaluation as JSON to this file")
    likelihood = parser.add_argument_group("log-likelihood (annealed importance sampling)")
    likelihood.add_argument(
        "--log-likelihood", action="store_true",
        help="also estimate each RBM layer's mean log-likelihood of the data (Bernoulli "
        "visible units); a model without a classifier then needs no labels",
    )
    likelihood.add_argument("--ais-chains", type=int, default=DEFAULT_CHAINS,
                            help=f"AIS chains per layer (default {DEFAULT_CHAINS})")
    likelihood.add_argument("--ais-betas", type=int, default=DEFAULT_BETAS,
                            help=f"annealing steps per chain (default {DEFAULT_BETAS})")
    likelihood.add_argument(
        "--ais-groups", type=int, default=DEFAULT_GROUPS,
        help=f"groups of chains, one Spark task each (default {DEFAULT_GROUPS}); the estimate "
        "depends on the seed and the groups, not on the cluster",
    )
    likelihood.add_argument(
        "--ais-schedule", choices=SCHEDULES, default=DEFAULT_SCHEDULE,
        help=f"spacing of the temperatures: linear or the paper's (default {DEFAULT_SCHEDULE})",
    )
    likelihood.add_argument("--seed", type=int, default=0, help="seed of AIS (default 0)")
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
    from sparkdbn.engine.likelihood import AISSettings
    from sparkdbn.model import DBNModel

    settings = None
    if args.log_likelihood:
        try:
            settings = AISSettings(args.ais_chains, args.ais_betas, args.ais_groups,
                                   args.ais_schedule, args.seed)
        except ValueError as err:
            raise InputError(str(err)) from err
    model = DBNModel.load(args.model)
    if model.classifier is None and settings is None:
        raise InputError(
            f"model {args.model!r} has no classifier layer (train with fine-tuning, or ask "
            "for --log-likelihood)"
        )
    if settings is not None and model.visible != "bernoulli":
        raise InputError(
            f"--log-likelihood needs Bernoulli visible units; model {args.model!r} has "
            f"{model.visible} ones"
        )

    from sparkdbn.data import prepare
    from sparkdbn.engine.likelihood import log_likelihood, summary, table
    from sparkdbn.engine.predict import evaluate, predict_packed
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn evaluate")
    classify = model.classifier is not None
    data = prepare(spark, args.data, args.features_col, args.label_col, model.visible,
                   require_label=classify and settings is None)
    figures: dict = {}
    try:
        if data.width != model.sizes[0]:
            raise InputError(
                f"column {args.features_col!r} has {data.width} values per row, the model "
                f"expects {model.sizes[0]}"
            )
        if classify and data.has_label:
            if data.max_label is not None and data.max_label >= model.n_classes:
                raise InputError(
                    f"column {args.label_col!r} has label {data.max_label}, beyond the "
                    f"model's {model.n_classes} classes"
                )
            result = evaluate(predict_packed(data, model.to_mlp()), model.n_classes)
            reporter.event("evaluation", model=args.model, data=args.data, text=result.table(),
                           **result.to_dict())
            figures.update(result.to_dict())
        if settings is not None:
            layers = log_likelihood(spark, data, model, settings)
            estimates = summary(layers, settings)
            reporter.event("log_likelihood", model=args.model, data=args.data,
                           text=table(layers, settings), **estimates)
            figures.update(estimates)
    finally:
        data.unpersist()
    if args.output:
        write_text_atomic(args.output, json.dumps(figures, indent=2) + "\n")
    reporter.event("done", output=args.output, text="")  # text: the tables say it all

def console() -> int:
    """The `sparkdbn-evaluate` console script and `python jobs/evaluate.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
