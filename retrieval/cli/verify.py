"""`retrieval-verify`: decode every image of a data set and list each bad or missing file."""
from __future__ import annotations

import argparse
import os
import sys

from .common import add_config_args, add_logging_args, command, new_parser, resolve_config


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("retrieval-verify", "Check that every image of the configured data set decodes; print one "
                        "line per bad file (path<TAB>reason); exit 1 when any is bad.",
                        "retrieval-verify data.name=cub data.root=/data/CUB_200_2011")
    add_config_args(parser, required=False)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="decoding threads (default: CPU count, at most 8)")
    add_logging_args(parser)
    return parser


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if cfg is None:
        return 0
    from ..data.images import verify_images
    from ..data import load_records

    records = load_records(cfg.data, check_missing=False)
    bad = verify_images(records["path"], num_workers=args.workers)
    for path, reason in bad:
        print(f"{path}\t{reason}")
    summary = f"{len(records)} images checked ({cfg.data.name} at {cfg.data.root}): {len(bad)} bad"
    print(summary, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
