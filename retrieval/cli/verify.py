"""`retrieval-verify`: decode every image of a data set and list each bad or missing file."""
from __future__ import annotations

import argparse
import os
import sys

from .common import add_config_args, add_logging_args, cli_main, resolve_config, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrieval-verify",
        description="Check that every image of the configured data set decodes; print one line per bad "
                    "file (path<TAB>reason); exit 1 when any is bad. "
                    "Example: retrieval-verify data.name=cub data.root=/data/CUB_200_2011")
    add_config_args(parser, required=False)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="decoding threads (default: CPU count, at most 8)")
    add_logging_args(parser)
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    cfg = resolve_config(args)
    if cfg is None:
        return 0
    from ..data.images import verify_images
    from ..data.records import load_records

    records = load_records(cfg.data, check_missing=False)
    bad = verify_images(records["path"], num_workers=args.workers)
    for path, reason in bad:
        print(f"{path}\t{reason}")
    summary = f"{len(records)} images checked ({cfg.data.name} at {cfg.data.root}): {len(bad)} bad"
    print(summary, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
