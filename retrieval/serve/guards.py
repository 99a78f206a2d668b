"""Request guards of ``retrieval-serve``: which hosts and origins may call it, and how much body a request may send.

Pure ASGI middleware (no BaseHTTPMiddleware), outermost in the app, so every request passes
them before routing and every refusal is the API's one JSON error shape.

- ``HostGuard``: a ``Host`` header that is not the bound address, a loopback name or an
  ``--allowed-hosts`` name is refused. Without it, a page on ``evil.example`` whose DNS name
  is later re-pointed at 127.0.0.1 (DNS rebinding) would be same-origin with the service.
- ``OriginGuard``: state-changing methods refuse cross-site browsers. A multipart POST is a
  "simple" CORS request, so a page on another origin can send it with ``mode: 'no-cors'``
  and no preflight; the browser still sends ``Origin`` and ``Sec-Fetch-Site``, so refusing
  on those stops it. A request with neither header (curl, scripts) is not a browser's and
  passes; the token, when set, guards those.
- ``BodyGuard``: counts the body as it streams (a chunked upload has no Content-Length to
  check up front) and cuts it at the limit (413), and bounds the wait for each body chunk
  (408), so a slow or stalled client cannot hold a request open forever. uvicorn's
  ``timeout_keep_alive`` only covers the time between requests.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


async def send_error(send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """The API's error shape ``{"error": message}`` sent from middleware (before any route ran)."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def host_name(host_header: str) -> str:
    """The name of a ``Host`` value without its port (``[::1]:8000`` → ``::1``), lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names a request may name: the bound address, the loopback names, and ``extra``.

    A wildcard bind (0.0.0.0, ::) names no host of its own; clients then reach the service by
    names the operator lists with ``--allowed-hosts``.
    """
    names = {n.lower() for n in (*LOOPBACK_NAMES, *extra)}
    try:
        if not ipaddress.ip_address(bind_host).is_unspecified:
            names.add(bind_host.lower())
    except ValueError:
        names.add(bind_host.lower())
    return frozenset(names)


class HostGuard:
    """Refuse (400) a request whose ``Host`` is not one of ``hosts`` (DNS rebinding)."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]):
        self.app, self.hosts = app, frozenset(h.lower() for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            if host is None or host_name(host) not in self.hosts:
                await send_error(send, 400, f"Host {host!r} is not served here (start the server with "
                                            "--allowed-hosts NAME to serve it under that name)")
                return
        await self.app(scope, receive, send)


def cross_site_reason(scope: Scope, trusted_origins: Iterable[str] = ()) -> str | None:
    """Why a state-changing request comes from another site, or None when it does not (or is no browser's)."""
    origin = _header(scope, b"origin")
    site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
    if origin is not None and origin.strip() in trusted_origins:
        return None  # an operator's --cors-origin: allowed to call the API from its pages
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    if origin is not None:
        own = (_header(scope, b"host") or "").strip().lower()
        if origin.strip().lower() == "null" or urlsplit(origin.strip().lower()).netloc != own:
            return f"Origin {origin} is not this server ({own})"
    return None


class OriginGuard:
    """Refuse (403) state-changing requests that a browser sends from another site."""

    def __init__(self, app: ASGIApp, trusted_origins: Iterable[str] = ()):
        self.app, self.trusted = app, frozenset(o.strip() for o in trusted_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            reason = cross_site_reason(scope, self.trusted)
            if reason:
                await send_error(send, 403, f"cross-site {scope['method']} refused ({reason}): write requests "
                                            "are accepted only from this server's own page or from non-browser "
                                            "clients")
                return
        await self.app(scope, receive, send)


class BodyRejected(HTTPException):
    """A body over the limit (413) or too slow to arrive (408).

    An HTTPException, so that FastAPI's body parsing re-raises it rather than turning it into
    its generic 400, and the app's handler answers it in the one error shape. The rest of the
    body is never read, so the answer closes the connection.
    """

    def __init__(self, status_code: int, detail: str):
        super().__init__(status_code, detail, headers={"Connection": "close"})


class BodyGuard:
    """Cut request bodies at ``limit(content_type)`` bytes (413) and wait at most ``timeout_s`` per chunk (408)."""

    def __init__(self, app: ASGIApp, limit: Callable[[str], int], timeout_s: float):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        limit = self.limit(kind)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await send_error(send, 413, _too_large(int(declared), limit), [(b"connection", b"close")])  # unread
            return
        state = {"seen": 0, "done": False, "started": False}

        async def counted_receive() -> dict:
            if state["done"]:  # the body is complete: later receives wait for a disconnect, unbounded
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise BodyRejected(408, f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    raise BodyRejected(413, _too_large(state["seen"], limit))
                state["done"] = not message.get("more_body", False)
            return message

        async def watched_send(message: dict) -> None:
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyRejected as err:  # read somewhere no handler answers it (e.g. by a middleware)
            if state["started"]:
                raise
            await send_error(send, err.status_code, str(err.detail), [(b"connection", b"close")])


def _too_large(size: int, limit: int) -> str:
    return f"request body of at least {size:,} bytes is over the {limit:,}-byte limit"


# The page loads its script and style from the app itself; images come from the app or are the
# user's own upload (blob:). Nothing inline runs, no other site frames the page.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'; form-action 'self'")


class SecurityHeaders:
    """Add ``X-Content-Type-Options: nosniff`` and the page's Content-Security-Policy to every response.

    nosniff: a gallery file served as image/png is never run as a script or page whatever it
    holds; the CSP keeps an injected tag in a label or file name from running anything.
    """

    def __init__(self, app: ASGIApp, csp: str = CONTENT_SECURITY_POLICY):
        self.app = app
        self.headers = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", csp.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()), *(h for h in self.headers if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)
