"""The HTTP API and web page of ``retrieval-serve`` (FastAPI), thin over ``RetrievalService``: the app's assembly.

``create_app`` puts together the routes (``routes.router``), the app's state (settings, and the
service, loaded once in the lifespan: FastAPI "Lifespan Events"), the guards and the error
handlers. Request and response shapes are pydantic models (``schemas``), so ``/openapi.json``
documents them, every status included, with this server's bounds (``document``); every error
is a JSON body ``{"error": "..."}`` (unknown routes, 405 and validation errors too) with a 4xx
status saying what was wrong (a bug is a 500 with a one-line body, never a traceback). Hosts,
origins and body sizes are checked before routing (``guards``).
"""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from ..errors import ImageError, RetrievalError
from .guards import BodyGuard, HostGuard, OriginGuard, SecurityHeaders, allowed_hosts, send_error
from .routes import BODIES, K_TEXT, RERANK_TEXT, router
from .schemas import embedding_query, multipart_body
from .service import NotFound, RetrievalService, Settings

log = logging.getLogger(__name__)
access = logging.getLogger("retrieval.serve.access")

# A JSON query body: MAX_QUERIES vectors of up to 4096 numbers at ~64 characters each, with room.
JSON_BODY_BYTES = 4 << 20
DESCRIPTION = ("Top-K image retrieval with a CBAM-ResNet + CGD checkpoint over a FAISS index folder. "
               "Every error is a JSON body {\"error\": \"...\"}.")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class AccessLog:
    """One log line per request (method, path, status, ms), counted; a bug becomes a one-line 500.

    Pure ASGI: BaseHTTPMiddleware reads the body in a task group, which would wrap the body
    guard's 413/408 in an ExceptionGroup on its way to the handler.
    """

    def __init__(self, app, counters: dict):
        self.app, self.counters = app, counters

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        except Exception:  # noqa: BLE001 - a bug: one line in the log, a 500 without traceback for the client
            log.exception("%s %s failed", scope["method"], scope["path"])
            if not status[0]:
                status[0] = 500
                await send_error(send, 500, "internal error (the server log has the details)")
        self.counters["requests"] += 1
        access.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0],
                    1000 * (time.perf_counter() - start))


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    path = request.scope["path"]
    # the app's own routes (the document) and the router's: an included router is one entry of the app's
    methods = {m for r in (*request.app.router.routes, *router.routes) if isinstance(r, Route)
               and r.path_regex.match(path) for m in (r.methods or ())}
    return ", ".join(sorted(methods))


async def _http_error(request: Request, err: StarletteHTTPException):
    if err.status_code == 404 and err.detail == "Not Found":
        return _error(404, f"no route {request.method} {request.url.path}")
    if err.status_code == 405:
        allow = _allowed_methods(request)
        return _error(405, f"{request.method} is not allowed here (allowed: {allow})", {"Allow": allow})
    return _error(err.status_code, str(err.detail), err.headers)


async def _validation_error(request: Request, err: RequestValidationError):
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return _error(422, f"{where}: {first.get('msg', 'invalid request')}")


async def _not_found(request: Request, err: NotFound):
    return _error(404, str(err))


async def _bad_request(request: Request, err: RetrievalError):  # ImageError and every other library refusal
    return _error(400, str(err))


# Starlette takes the handler of the nearest class in the exception's MRO: NotFound's before RetrievalError's.
HANDLERS = {StarletteHTTPException: _http_error, RequestValidationError: _validation_error, NotFound: _not_found,
            ImageError: _bad_request, RetrievalError: _bad_request}


@asynccontextmanager
async def _lifespan(app: FastAPI):
    if app.state.service is None:
        app.state.service = await run_in_threadpool(RetrievalService, app.state.settings)
    yield
    app.state.service.close()


def _add_guards(app: FastAPI, settings: Settings, cors: tuple[str, ...]) -> None:
    """Outermost last: headers on every answer, the access log (refusals too), then Host, then Origin, then the
    body, then routing."""
    def body_limit(kind: str) -> int:
        if kind == "application/json":
            return JSON_BODY_BYTES
        return settings.max_files * (settings.max_upload_bytes + 4096) + 65536  # + multipart framing and labels

    app.add_middleware(BodyGuard, limit=body_limit, timeout_s=settings.body_timeout_s)
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization"])
    app.add_middleware(OriginGuard, trusted_origins=cors)
    app.add_middleware(HostGuard, hosts=allowed_hosts(settings.host, settings.allowed_hosts))
    app.add_middleware(AccessLog, counters=app.state.counters)
    app.add_middleware(SecurityHeaders)


def document(app: FastAPI, settings: Settings) -> dict:
    """The OpenAPI document, with this server's bounds: k up to --max-k, files per upload, the JSON query body,
    the default re-ranking (``routes`` checks the same bounds per request)."""
    if app.openapi_schema is None:
        doc = FastAPI.openapi(app)  # FastAPI's own document (cached on the app), completed here
        for (path, method), (labels, json_query) in BODIES.items():
            content = {"multipart/form-data": {"schema": multipart_body(labels, settings.max_files)}}
            if json_query:  # without nulls, as FastAPI writes the rest of the document
                query = embedding_query(settings.max_k, settings.max_files).model_json_schema()
                content["application/json"] = {"schema": jsonable_encoder(query, exclude_none=True)}
            doc["paths"][path][method]["requestBody"] = {"required": True, "content": content}
        texts = {"k": K_TEXT.format(max_k=settings.max_k), "rerank": RERANK_TEXT.format(rerank=settings.rerank)}
        for operation in (op for ops in doc["paths"].values() for op in ops.values()):
            for param in operation.get("parameters", ()):
                if param["name"] in texts:
                    param["description"] = param["schema"]["description"] = texts[param["name"]]
                if param["name"] == "k":
                    param["schema"]["maximum"] = settings.max_k
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(settings: Settings, service: RetrievalService | None = None, cors_origins: list[str] | None = None
               ) -> FastAPI:
    """The app; ``service`` (tests) or one loaded from ``settings`` when the app starts."""
    # Swagger UI (/docs) loads its script from a CDN: offline it is a blank page, and the CSP
    # (script-src 'self') would block it anyway. The document itself is served at /openapi.json.
    app = FastAPI(title="retrieval-serve", lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description=DESCRIPTION, exception_handlers=HANDLERS)
    app.state.settings, app.state.service, app.state.counters = settings, service, {"requests": 0}
    _add_guards(app, settings, tuple(cors_origins or settings.cors_origins))
    app.include_router(router)
    app.openapi = lambda: document(app, settings)
    return app
