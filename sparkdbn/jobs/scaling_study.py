"""The scaling study: the same network at growing partition counts, per averaging strategy.

    python jobs/scaling_study.py --train data/fashion-mnist/train --test data/fashion-mnist/test \
        --output out/scaling

Trains --config (default conf/scaling.toml) with --layers, --epochs and
--finetune-epochs at every --partitions count, for each --strategies entry, sequentially on
this session's cores; then, for the default strategy, at each --efficiency-epochs count
until P reaches P = 1's accuracy. Writes OUTPUT/scaling.json, scaling.md (the table) and
scaling.png (accuracy and reconstruction error against P).

Exit codes: 0 success, 2 bad input or settings, 1 other failures.
"""

from __future__ import annotations

import sys

from sparkdbn.cli import JobParser, run
from sparkdbn.config import CHOICES_OF_AVERAGING, load_config
from sparkdbn.errors import InputError
from sparkdbn.fsutil import IF_EXISTS, check_target
from sparkdbn.logs import Reporter
from sparkdbn.settings import parse_sizes

DEFAULT_CONFIG = "conf/scaling.toml"


def build_parser() -> JobParser:
    parser = JobParser(
        prog="scaling_study",
        description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 success, 2 bad input or settings, 1 other failures.",
    )
    parser.add_argument("--train", required=True, help="training data (Parquet, labelled)")
    parser.add_argument("--test", required=True, help="held-out data (Parquet, labelled)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config to train")
    parser.add_argument("--layers", default="784,500", help="layer sizes (default 784,500)")
    parser.add_argument("--epochs", type=int, default=5, help="pretraining epochs (default 5)")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning epochs")
    parser.add_argument(
        "--partitions", default="1,2,4,8,16,32,64", help="partition counts (default 1,...,64)"
    )
    parser.add_argument(
        "--strategies", default="plain,auto", help="averaging strategies (default plain,auto)"
    )
    parser.add_argument(
        "--efficiency-epochs", default="10,15",
        help="pretraining epochs to try, fine-tuning scaled alike, until the default reaches "
        "P = 1's accuracy (default 10,15; empty: skip)",
    )
    parser.add_argument("--if-exists", choices=IF_EXISTS, default="error")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reporter = Reporter("scaling_study", args.log_format)
    partitions = parse_sizes("--partitions", args.partitions)
    efficiency = parse_sizes("--efficiency-epochs", args.efficiency_epochs)
    strategies = [s for s in args.strategies.split(",") if s]
    wrong = [s for s in strategies if s not in CHOICES_OF_AVERAGING]
    if wrong or not strategies:
        choices = "|".join(CHOICES_OF_AVERAGING)
        raise InputError(f"--strategies must list some of {choices}, got {args.strategies!r}")
    if not partitions or min(partitions) < 1 or min(efficiency, default=1) < 1:
        raise InputError("--partitions and --efficiency-epochs must be positive integers")
    base = load_config(args.config, {
        "layers": parse_sizes("--layers", args.layers), "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs, "schedule": "sequential", "baseline": False,
    })
    if base.finetune_epochs < 1:
        raise InputError("--finetune-epochs must be > 0: the study measures test accuracy")
    check_target(args.output, args.if_exists)

    from sparkdbn.scaling import study, table, write_study
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn scaling_study")
    result = study(spark, base, args.train, args.test, partitions, strategies, efficiency,
                   reporter.say)
    write_study(result, args.output)
    reporter.text(table(result))
    reporter.event("done", output=args.output, text=f"study written to {args.output}")


def console() -> int:
    """The `sparkdbn-scaling-study` console script and `python jobs/scaling_study.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
