"""Pretrain ONE layer of a DBN as its own Spark application (ParDBN's layer-per-machine setting).

Layer 0 trains on --train; layer L > 0 trains on the representations that layer L-1's
application publishes into --store, switching to the newest version at each epoch boundary.
Every layer but the top one publishes its own versions into the store for the layer above.
An upper layer that starts before its first input version warms its application up meanwhile
(a store write, a load and a CD round on random rows; see `sparkdbn.engine.warmup`).

    python jobs/pretrain_layer.py --layer 0 --train data/train --store /shared/st --output l0 ...
    python jobs/pretrain_layer.py --layer 1 --store /shared/st --output l1 ...  # meanwhile

All applications must get the same --layers, --schedule (pipelined or sequential) and
publishing settings. Writes OUTPUT/layer.npz (W, vbias, hbias) and OUTPUT/metrics.json.

With checkpoints on (--checkpoint-every, default 1 epoch) a killed layer resumes with
--if-exists resume from its last checkpointed epoch, on the newest version of its input;
a layer whose OUTPUT is finished is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparkdbn.cli import JobParser, run
from sparkdbn.config import add_arguments, config_from_args
from sparkdbn.engine.checkpoint import Checkpoint, checkpoint_dir
from sparkdbn.errors import InputError
from sparkdbn.fsutil import RESUMABLE_IF_EXISTS, check_target
from sparkdbn.logs import Reporter


def build_parser() -> JobParser:
    parser = JobParser(
        prog="pretrain_layer",
        description="Pretrain one DBN layer, consuming and feeding a shared representation store.",
        epilog="--if-exists: error (default) refuses an existing OUTPUT or checkpoint (exit 2); "
        "overwrite trains afresh and replaces OUTPUT when the layer has trained; resume exits 0 "
        "when OUTPUT already holds the finished layer (layer.npz) and otherwise continues the "
        "layer from its checkpoint. "
        "Exit codes: 0 success, 2 bad input or config, 1 other failures.",
    )
    parser.add_argument("--layer", type=int, required=True, help="which layer (0 = bottom)")
    parser.add_argument(
        "--wait-timeout", type=float, default=3600.0,
        help="seconds to wait for the layer below's versions (default: 3600)",
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reporter = Reporter("pretrain_layer", args.log_format)
    cfg = config_from_args(args)
    n_layers = len(cfg.layers) - 1
    if not 0 <= args.layer < n_layers:
        raise InputError(f"--layer must be in [0, {n_layers - 1}] for layers {cfg.layers}")
    if cfg.schedule == "tied":
        raise InputError("--schedule tied needs all layers in one application: use train_dbn.py")
    if cfg.store is None or cfg.output is None:
        raise InputError("--store and --output are required")
    if args.layer == 0 and cfg.train is None:
        raise InputError("layer 0 needs --train")
    check_target(cfg.output, cfg.if_exists, RESUMABLE_IF_EXISTS)
    run_config = {**cfg.to_dict(), "layer": args.layer}
    checkpoint = Checkpoint(checkpoint_dir(cfg.output), run_config, cfg.checkpoint_every)
    if cfg.if_exists == "resume" and Path(cfg.output).exists():
        if not (Path(cfg.output) / "layer.npz").is_file():
            raise InputError(
                f"output {cfg.output!r} exists but holds no finished layer (layer.npz); "
                "use --if-exists overwrite"
            )
        checkpoint.remove()  # left over if the last run was killed right after its commit
        reporter.event(
            "done", output=cfg.output, layer=args.layer, skipped=True,
            text=f"layer {args.layer} is already complete in {cfg.output}: nothing to do",
        )
        return
    checkpoint.prepare(cfg.if_exists)

    from sparkdbn.engine.one_layer import pretrain_one_layer
    from sparkdbn.outputs import write_layer
    from sparkdbn.session import get_session

    spark = get_session(f"sparkdbn pretrain_layer {args.layer}")
    params, log = pretrain_one_layer(
        spark, cfg, args.layer, checkpoint, args.wait_timeout, reporter
    )
    write_layer(params, log, cfg.output)
    checkpoint.remove()
    reporter.event(
        "done", output=cfg.output, layer=args.layer,
        text=f"layer {args.layer} written to {cfg.output}",
    )


def console() -> int:
    """The `sparkdbn-pretrain-layer` console script and `python jobs/pretrain_layer.py`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
