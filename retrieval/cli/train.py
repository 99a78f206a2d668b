"""`train_embed.py` / `retrieval-train`: train an embedding model from a YAML config."""
from __future__ import annotations

import argparse
import os

from ..config import load_config, to_yaml
from ..errors import ConfigError
from .common import add_config_args, add_logging_args, command, new_parser


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("train_embed.py", "Train a CBAM-ResNet + CGD embedding with a metric-learning loss.",
                        "train_embed.py --config configs/cub200.yaml optim.lr=3e-4 data.root=/data/CUB_200_2011")
    add_config_args(parser, required=False)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    add_logging_args(parser)
    return parser


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    if args.config is None and args.resume is None:
        raise ConfigError("give --config FILE (or --resume RUN_DIR to continue a run)")
    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces one: give one of them")
    cfg = load_config(args.config, args.overrides) if args.config else None
    overrides = [] if args.config else args.overrides  # with --resume alone they change the run's own config
    if args.print_config:
        if args.resume is not None:
            from ..engine.run import resumed_config

            cfg = resumed_config(args.resume, cfg, overrides)
        print(to_yaml(cfg), end="")
        return 0
    from ..engine import train

    result = train(cfg, resume=args.resume, overwrite=args.overwrite, overrides=overrides)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the whole run
    if not result.row:
        print(f"nothing to train: {result.run_dir} has finished {result.epoch} of {result.epochs} epochs "
              f"(to continue it: --resume {result.run_dir} train.epochs={result.epochs + 10})")
        return 0
    shown = "  ".join(f"{k}={v:.4f}" for k, v in result.row.items() if k.startswith(("recall@", "map@r", "val_recall@")))
    best = result.run_dir / "best.pt"
    print(f"done: epoch {result.row['epoch']}/{result.epochs}  {shown}\n"
          f"model: {result.run_dir / 'last.pt'}" + (f" (best on validation: {best})" if best.is_file() else ""))
    return 0
