"""Train a Deep Belief Network on Spark.

    python jobs/train_dbn.py --train data/train --output out/run1 --layers 784,500
    spark-submit --py-files sparkdbn.zip jobs/train_dbn.py --config conf/fashion_mnist.toml ...

Exit codes: 0 success, 2 bad input or config (one line on stderr), 1 other failures.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from sparkdbn.cli import run
from sparkdbn.config import add_arguments, config_from_args
from sparkdbn.errors import InputError
from sparkdbn.fsutil import check_target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_dbn",
        description="Pretrain a DBN (stack of RBMs) with CD-k on Spark; flags override --config.",
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    cfg = config_from_args(build_parser().parse_args(argv))
    if cfg.train is None or cfg.output is None:
        raise InputError("--train and --output are required (flags or config keys)")
    check_target(cfg.output, cfg.if_exists)

    from sparkdbn.engine.training import default_store, train, write_outputs
    from sparkdbn.metrics import gantt
    from sparkdbn.session import get_session

    spark = get_session("sparkdbn train_dbn")
    store = cfg.store or str(default_store(cfg.output))
    try:
        result = train(spark, cfg, store)
    finally:
        if cfg.store is None:
            shutil.rmtree(store, ignore_errors=True)
    write_outputs(result, cfg.output)
    print(gantt(result.run))
    if result.evaluation is not None:
        print(result.evaluation.table())
    print(f"model and metrics written to {cfg.output}")


if __name__ == "__main__":
    sys.exit(run(main))
