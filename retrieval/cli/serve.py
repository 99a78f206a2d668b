"""`retrieval-serve`: keep a checkpoint and its index folder loaded behind an HTTP API and a web page."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
from pathlib import Path

from ..errors import ConfigError
from .common import add_checkpoint_arg, add_logging_args, command, new_parser

log = logging.getLogger("retrieval.serve")


def build_parser() -> argparse.ArgumentParser:
    from ..runtime import PRECISIONS

    parser = new_parser("retrieval-serve", "Serve top-K retrieval over an index folder built by build_index.py with "
                        "the same checkpoint: HTTP API (OpenAPI at /docs) and a web page at /.",
                        "retrieval-serve --checkpoint runs/cub/last.pt --index indexes/cub --port 8000")
    add_checkpoint_arg(parser, "the checkpoint the index was built with")
    parser.add_argument("--index", required=True, metavar="INDEX_DIR", help="index folder from build_index.py")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                                                            "--token-file)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the bearer token the write endpoints "
                                                             "(POST /items, DELETE /items/{id}) require")
    parser.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                        help="allow browser pages from ORIGIN to call the API (repeatable; default: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU count)")
    parser.add_argument("--max-batch", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                        help="how long a forward pass waits for more requests before it starts (default 0: it "
                             "takes the requests already queued; under load those that came during a pass)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="per uploaded file (default 10 MB)")
    parser.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for (default 1000)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 on CPUs with native bf16, AMP on CUDA")
    add_logging_args(parser)
    return parser


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def _token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--token-file {path}: cannot read it ({err})") from None
    if len(token) < 16:
        raise ConfigError(f"--token-file {path}: the token is {len(token)} characters; use at least 16")
    return token


def settings_from(args: argparse.Namespace):
    """Checked Settings of the command line (ConfigError naming the flag)."""
    from ..serve import Settings

    for flag, value, low in (("--port", args.port, 1), ("--max-batch", args.max_batch, 1), ("--max-k", args.max_k, 1),
                             ("--threads", args.threads, 0)):
        if value < low:
            raise ConfigError(f"{flag}: expected >= {low}, got {value}")
    if args.port > 65535 or args.max_upload_mb <= 0 or args.batch_wait_ms < 0:
        raise ConfigError("--port must be <= 65535, --max-upload-mb > 0 and --batch-wait-ms >= 0")
    token = _token(args.token_file)
    if token is None and not _is_loopback(args.host):
        raise ConfigError(f"--host {args.host}: binding beyond this machine needs --token-file (anyone who can "
                          "reach the port could add or remove gallery images)")
    return Settings(checkpoint=Path(args.checkpoint), index=Path(args.index), device=args.device,
                    precision=args.precision, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                    max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_k=args.max_k, token=token)


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from ..serve import RetrievalService, create_app

    settings = settings_from(args)
    # One intra-op pool for the forward passes: the batcher runs them one at a time, so all cores go to it.
    torch.set_num_threads(args.threads or torch.get_num_threads())
    service = RetrievalService(settings)  # a bad checkpoint or index fails here, as one error line
    app = create_app(settings, service, cors_origins=args.cors_origin)
    url = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}/"
    print(f"serving {service.gallery.count} images from {args.index} at {url} (API docs: {url}docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
