"""Shared command-line plumbing: logging flags, config loading, turning errors into exit codes."""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable

from ..config import Config, load_config, to_yaml
from ..errors import RetrievalError
from ..progress import set_progress

log = logging.getLogger("retrieval")


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config (see configs/)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (after overrides) and exit without running")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, e.g. optim.lr=3e-4 model.descriptors=SG")


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else (
        logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    # The level sits on the console handler too: a run's log file may lower the library
    # logger to INFO, and its records must still stay off a --quiet console.
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    set_progress(not getattr(args, "quiet", False))
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every library it tries


def resolve_config(args: argparse.Namespace) -> Config | None:
    """Load the config; with --print-config print it and return None (the caller exits 0)."""
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return None
    return cfg


def cli_main(fn: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command: user errors print 'error: ...' to stderr and exit 2; Ctrl-C exits 130."""
    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return int(fn(argv) or 0)
        except (RetrievalError, FileNotFoundError, FileExistsError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return wrapper
