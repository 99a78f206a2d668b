"""Shared command-line plumbing: logging flags, config loading, turning errors into exit codes."""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from ..config import load_config, to_yaml
from ..errors import ConfigError, RetrievalError
from ..progress import set_progress
from ..schema import Config

log = logging.getLogger("retrieval")


def new_parser(prog: str, what: str, example: str) -> argparse.ArgumentParser:
    """A command's parser: what it does, then one example command line."""
    return argparse.ArgumentParser(prog=prog, description=f"{what} Example: {example}")


def add_checkpoint_arg(parser: argparse.ArgumentParser, help: str = "trained checkpoint (*.pt)") -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help=help)


def add_checkpoint_and_index_args(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and --index of the commands that search an index folder with its checkpoint (query, serve)."""
    add_checkpoint_arg(parser, "the checkpoint the index was built with")
    parser.add_argument("--index", required=True, metavar="INDEX_DIR", help="index folder from build_index.py")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device and --precision: where and in what precision a checkpoint's network embeds (``Embedder``)."""
    from ..schema import PRECISIONS, RUNTIMES

    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 on CPUs with native bf16, AMP on CUDA")
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES,
                        help="what runs the network: torch (default), onnxruntime (CPU, fp32; the network is "
                             "exported to ONNX on the first batch; needs the 'export' extra) or onnxruntime-int8 "
                             "(the same quantised to int8, calibrated on 64 images of the gallery; faster, "
                             "slightly different embeddings: RESULTS.md has its Recall@1)")
    parser.add_argument("--compile", action="store_true",
                        help="torch runtime: torch.compile the network (tens of seconds of compilation on the first "
                             "batch, then faster; falls back to eager with a warning where compilation fails)")


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


def add_embedding_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the commands that embed images with a checkpoint (build_index, query)."""
    parser.add_argument("--batch-size", type=int,
                        help="images per forward pass (default: the checkpoint's eval.batch_size)")
    parser.add_argument("--workers", type=int, default=2, help="data-loader worker processes (default 2)")
    add_device_args(parser)


def check_embedding_flags(args: argparse.Namespace) -> None:
    """--batch-size >= 1 and --workers >= 0, whichever embedder then runs."""
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ConfigError(f"--workers: expected >= 0, got {args.workers}")


def open_embedder_from(args: argparse.Namespace):
    """The checkpoint of ``--checkpoint`` ready to embed, with the embedding flags applied."""
    from ..embed import open_embedder

    check_embedding_flags(args)
    return open_embedder(args.checkpoint, args.device, args.batch_size, args.workers, args.precision,
                         runtime=args.runtime, compile=args.compile)


_verbose = False  # set by setup_logging: -v shows the traceback the one-line error hides


def setup_logging(args: argparse.Namespace) -> None:
    global _verbose
    _verbose = bool(getattr(args, "verbose", False))
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


class UsageError(Exception):
    """A combination of flags that argparse cannot check; reported like argparse's own errors (usage, exit 2)."""


def command(build_parser: Callable[[], argparse.ArgumentParser]):
    """Decorator of a command's body ``main(args)``: the result is ``main(argv)`` that parses ``argv`` with
    ``build_parser()``, sets up logging and progress bars, and turns user errors into exit status 2."""
    def wrap(body: Callable[[argparse.Namespace], int | None]) -> Callable[[list[str] | None], int]:
        @cli_main
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int | None:
            parser = build_parser()
            args = parser.parse_args(argv)
            args.command_line = " ".join([parser.prog, *(argv if argv is not None else sys.argv[1:])])
            setup_logging(args)
            try:
                return body(args)
            except UsageError as err:
                parser.error(str(err))
        return main
    return wrap


# Errors of the file system that a user fixes (a path, a permission, a full disk), not bugs.
USER_OS_ERRORS = (errno.ENOENT, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                  errno.EFBIG, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP)


def _os_message(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    hint = {errno.ENOSPC: " (free some space or choose another output folder)",
            errno.EDQUOT: " (free some space or choose another output folder)",
            errno.EFBIG: " (a file-size limit: ulimit -f, or the file system's)"}.get(err.errno, "")
    return f"{where}{err.strerror or err}{hint}"


# How long a rank other than 0 waits after a user error before exiting itself (see _user_error).
OTHER_RANKS_WAIT_S = 10.0


def _torchrun_rank() -> int | None:
    """This process's rank under torchrun (WORLD_SIZE > 1), else None."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _user_error(message: str, err: BaseException) -> int:
    """Report a user error: one line (under torchrun from rank 0 only, the others exit quietly with the same
    status), and for torchrun's summary the error file naming it."""
    rank = _torchrun_rank()
    if rank is None or rank == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    if rank:
        # Every rank checks the same flags, so rank 0 meets the same error. torchrun stops the other
        # workers as soon as one fails, and its summary names the failure with the earliest error file:
        # had this rank exited (or written its file) first, rank 0 could be killed before its line was
        # printed and the summary would name this rank. Rank 0's exit ends this wait (torchrun sends
        # SIGTERM); the bound keeps an error only this rank sees from hanging.
        time.sleep(OTHER_RANKS_WAIT_S)
    if rank is not None:
        _record_for_torchrun(f"{type(err).__name__}: {message}")
    return 2


def _record_for_torchrun(message: str) -> None:
    """Write the error file torchrun's failure summary reads (the format of torch.distributed.elastic's
    ``ErrorHandler.record_exception``), with the one-line message in place of a traceback."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": message, "extraInfo": {
        "py_callstack": f"{message} (exit status 2: a user error; the command's own line says what to change)",
        "timestamp": str(int(time.time()))}}}
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(data))


def cli_main(fn: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main(argv)``: one ``error: ...`` line and exit 2 for bad input; Ctrl-C exits 130.

    Bad input: the library's RetrievalError, a file that exists or not, and OS errors a user
    fixes (permissions, read-only or full disks). Anything else is a bug: one line saying so
    and exit 1, or the whole traceback with -v. Under torchrun only rank 0 prints a user error,
    and ``main`` runs inside torch.distributed.elastic's ``record`` so that the failure summary
    names the error (an error file per failed rank).
    """
    @functools.wraps(fn)
    def run(argv: list[str] | None = None) -> int:
        try:
            return int(fn(argv) or 0)
        except (RetrievalError, FileNotFoundError, FileExistsError) as err:
            if _verbose:
                traceback.print_exc(file=sys.stderr)
            return _user_error(str(err), err)
        except OSError as err:
            if err.errno not in USER_OS_ERRORS or _verbose:
                raise
            return _user_error(_os_message(err), err)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - the last line of defence of a command
            if _verbose:
                raise
            print(f"error: internal error ({type(err).__name__}: {err}); run again with -v for the traceback",
                  file=sys.stderr)
            if _torchrun_rank() is not None:
                _record_for_torchrun(f"internal error ({type(err).__name__}: {err})")
            return 1

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        if _torchrun_rank() is None:
            return run(argv)
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(run)(argv)
    return wrapper
