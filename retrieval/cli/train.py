"""`train_embed.py` / `retrieval-train`: train an embedding model from a YAML config."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

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
    cfg = load_config(args.config, args.overrides) if args.config else None
    if args.print_config:
        print(to_yaml(cfg) if cfg is not None else (Path(args.resume) / "config.yaml").read_text(), end="")
        return 0
    from ..engine import train

    row = train(cfg, resume=args.resume, overwrite=args.overwrite).row
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the whole run
    shown = "  ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith(("recall@", "map@r")))
    print(f"done: epoch {row.get('epoch', '-')}  {shown}")
    return 0
