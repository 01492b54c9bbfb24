"""Train a Deep Belief Network on Spark.

    python jobs/train_dbn.py --train data/train --output out/run1 --layers 784,500
    spark-submit --py-files sparkdbn.zip jobs/train_dbn.py --config conf/fashion_mnist.toml ...

With checkpoints on (--checkpoint-every, default 1 epoch) a killed or failed run resumes with
--if-exists resume: finished layers are skipped and the current one continues from its last
checkpointed epoch (bit-identical under the sequential schedule).

--log-format json prints one JSON object per line on stdout (epoch, finetune_epoch,
evaluation, timeline, done events) and errors as one JSON line on stderr.

Exit codes: 0 success, 2 bad input or config, or training diverged (one line on stderr),
1 other failures.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparkdbn.cli import JobParser, run
from sparkdbn.config import add_arguments, config_from_args
from sparkdbn.engine.checkpoint import Checkpoint, check_finished, checkpoint_dir
from sparkdbn.errors import InputError
from sparkdbn.fsutil import RESUMABLE_IF_EXISTS, check_target
from sparkdbn.logs import Reporter


def build_parser() -> JobParser:
    parser = JobParser(
        prog="train_dbn",
        description="Pretrain a DBN (stack of RBMs) with CD-k on Spark; flags override --config.",
        epilog="--if-exists: error refuses an existing OUTPUT or checkpoint (exit 2); overwrite "
        "trains afresh and replaces OUTPUT at the end; resume continues an unfinished run from "
        "its checkpoint, or exits 0 when OUTPUT is a finished run of the same config. "
        "Exit codes: 0 success, 2 bad input or config, 1 other failures.",
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reporter = Reporter("train_dbn", args.log_format)
    cfg = config_from_args(args)
    if cfg.train is None or cfg.output is None:
        raise InputError("--train and --output are required (flags or config keys)")
    checkpoint = Checkpoint(checkpoint_dir(cfg.output), cfg.to_dict(), cfg.checkpoint_every)
    if cfg.if_exists == "resume" and Path(cfg.output).exists():
        check_finished(cfg.output, cfg.to_dict())
        checkpoint.remove()  # left over if the last run was killed right after its commit
        reporter.event(
            "done", output=cfg.output, skipped=True,
            text=f"{cfg.output} is already complete with this config: nothing to resume",
        )
        return
    check_target(cfg.output, cfg.if_exists, RESUMABLE_IF_EXISTS)

    from sparkdbn.engine.training import train, training_store
    from sparkdbn.metrics import gantt
    from sparkdbn.outputs import write_outputs
    from sparkdbn.session import get_session
    from sparkdbn.tracking import tracking_for

    tracking = tracking_for(cfg)
    checkpoint.prepare(cfg.if_exists)
    spark = get_session("sparkdbn train_dbn")
    with tracking.run(spark, "train_dbn"):
        with training_store(cfg, checkpoint) as store:
            result = train(
                spark, cfg, store, checkpoint=checkpoint, reporter=tracking.watch(reporter)
            )
        write_outputs(result, cfg.output)
        tracking.log_outputs(result, cfg.output)
    checkpoint.remove()
    reporter.event("timeline", text=gantt(result.run), **result.run.timeline())
    if result.evaluation is not None:
        reporter.text(result.evaluation.table())  # JSON: the fine-tune evaluation event
    reporter.event("done", output=cfg.output, text=f"model and metrics written to {cfg.output}")


def console() -> int:
    """The `sparkdbn-train` console script and `python jobs/train_dbn.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
