"""`retrieval-serve`: keep a checkpoint and its index folder loaded behind an HTTP API and a web page."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
from pathlib import Path

from ..errors import ConfigError
from .common import add_checkpoint_and_index_args, add_device_args, add_logging_args, command, new_parser

log = logging.getLogger("retrieval.serve")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("retrieval-serve", "Serve top-K retrieval over an index folder built by build_index.py with "
                        "the same checkpoint: HTTP API (OpenAPI document at /openapi.json) and a web page at /.",
                        "retrieval-serve --checkpoint runs/cub/last.pt --index indexes/cub --port 8000")
    add_checkpoint_and_index_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                                                            "--token-file)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the bearer token the write endpoints "
                                                             "(POST /items, DELETE /items/{id}) require")
    parser.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                        help="allow browser pages from ORIGIN to call the API (repeatable; default: none)")
    parser.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME",
                        help="a further Host name clients reach the server by (repeatable; default: the bound "
                             "address, localhost, 127.0.0.1, ::1); other Host headers are refused (DNS rebinding)")
    parser.add_argument("--expose-paths", action="store_true",
                        help="answer with the full server paths of gallery files and the checkpoint (default: "
                             "file names only)")
    parser.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="longest wait for the next part of a request body before answering 408 (default 30)")
    parser.add_argument("--rerank", default="none", metavar="NAME[:k=v,...]",
                        help="default re-ranking of /search and /neighbours: none | aqe | dba | dba_aqe | kreciprocal "
                             "(docs/reranking.md); a request's rerank parameter overrides it (default none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU count)")
    parser.add_argument("--max-batch", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                        help="how long a forward pass waits for more requests before it starts (default 0: it "
                             "takes the requests already queued; under load those that came during a pass)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="per uploaded file (default 10 MB)")
    parser.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for (default 1000)")
    add_device_args(parser)
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
    if args.port > 65535 or args.max_upload_mb <= 0 or args.batch_wait_ms < 0 or args.body_timeout <= 0:
        raise ConfigError("--port must be <= 65535, --max-upload-mb > 0, --batch-wait-ms >= 0 and --body-timeout > 0")
    from ..rerank import parse_rerank

    parse_rerank(args.rerank)  # a bad spec fails before the model loads
    token = _token(args.token_file)
    if token is None and not _is_loopback(args.host):
        raise ConfigError(f"--host {args.host}: binding beyond this machine needs --token-file (anyone who can "
                          "reach the port could add or remove gallery images)")
    return Settings(checkpoint=Path(args.checkpoint), index=Path(args.index), device=args.device,
                    precision=args.precision, runtime=args.runtime, compile=args.compile, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                    max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_k=args.max_k, token=token,
                    host=args.host, allowed_hosts=tuple(args.allowed_hosts), cors_origins=tuple(args.cors_origin or ()),
                    expose_paths=args.expose_paths, body_timeout_s=args.body_timeout, rerank=args.rerank)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or ConfigError naming the port (before any model is loaded).

    The server then serves on this very socket, so no other process can take the port between
    the check and uvicorn's start.
    """
    try:
        # IPv4 unless the address is an IPv6 one, as uvicorn binds (so "localhost" is 127.0.0.1)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        family, kind, proto, _, address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0]
    except OSError as err:
        raise ConfigError(f"--host {host}: cannot resolve it ({err})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart may reuse TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror or err}); "
                          "choose another --port or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)  # refusals of the arguments come first, before anything is loaded
    import torch
    import uvicorn

    from ..serve import RetrievalService, create_app

    sock = bind(args.host, args.port)
    try:
        # One intra-op pool for the forward passes: the batcher runs them one at a time, so all cores go to it.
        torch.set_num_threads(args.threads or torch.get_num_threads())
        service = RetrievalService(settings)  # a bad checkpoint or index fails here, as one error line
        app = create_app(settings, service)
        url = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}/"
        print(f"serving {service.gallery.count} images from {args.index} at {url} (API document: "
              f"{url}openapi.json)", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
