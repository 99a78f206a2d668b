"""The HTTP API and web page of ``retrieval-serve`` (FastAPI), thin over ``RetrievalService``.

State is loaded once in the app's lifespan (FastAPI "Lifespan Events"); request and response
shapes are pydantic models (``schemas``), so ``/openapi.json`` documents them, every status included; every
error is a JSON body ``{"error": "..."}`` (unknown routes, 405 and validation errors too) with a
4xx status saying what was wrong (a bug is a 500 with a one-line body, never a traceback).
Gallery files are served by id only: nothing a request sends becomes a filesystem path.
Hosts, origins and body sizes are checked before routing (``guards``). Work that grows with the
request (parsing vectors, searching, building results) runs in the thread pool, so ``/healthz``
answers while the largest request runs.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from ..errors import ImageError, RetrievalError
from .guards import BodyGuard, HostGuard, OriginGuard, SecurityHeaders, allowed_hosts, send_error
from .schemas import (Added, Explanation, Health, Item, ItemId, ItemList, Removed, SearchResponse, Stats,
                      embedding_query, errors, multipart_body)
from .service import NotFound, RetrievalService, Settings

log = logging.getLogger(__name__)
access = logging.getLogger("retrieval.serve.access")

# A JSON query body: MAX_QUERIES vectors of up to 4096 numbers at ~64 characters each, with room.
JSON_BODY_BYTES = 4 << 20
MAX_NPROBE = 1 << 16


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
    methods = {m for r in request.app.router.routes if isinstance(r, Route) and r.path_regex.match(path)
               for m in (r.methods or ())}
    return ", ".join(sorted(methods))


async def _read_upload(upload: UploadFile, settings: Settings) -> bytes:
    kind = (upload.content_type or "").split(";")[0].strip().lower()
    if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
        raise HTTPException(415, f"{upload.filename}: content type {kind} is not an image")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"{upload.filename}: larger than the {settings.max_upload_bytes:,}-byte upload limit")
    return data


async def _uploads(request: Request, settings: Settings) -> tuple[list[tuple[bytes, str]], list[str]]:
    """(files (bytes, name), labels) of a multipart request; 4xx for anything else."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise HTTPException(415, f"expected multipart/form-data with image files, got {kind or 'no content type'}")
    form = await request.form(max_files=settings.max_files, max_fields=settings.max_files + 8)
    uploads = [v for v in form.getlist("images") if isinstance(v, UploadFile)]
    if not uploads:
        raise HTTPException(422, "no image files: send them as multipart field 'images'")
    files = [(await _read_upload(u, settings), u.filename or f"upload{i}") for i, u in enumerate(uploads)]
    labels = [str(v) for v in form.getlist("labels")]
    return files, labels


def _vectors(body: bytes, model: type[BaseModel], max_queries: int) -> tuple[np.ndarray, int | None]:
    """(queries, dim) float32 and the body's k of a JSON search body; 4xx naming what is wrong."""
    try:
        query = model.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).startswith("list["))
        raise HTTPException(422, f"body{'.' + where if where else ''}: {first['msg']} (expected "
                                 "{\"embedding\": [numbers] or [[numbers], ...], \"k\": optional integer})") from None
    rows = query.embedding if query.embedding and isinstance(query.embedding[0], list) else [query.embedding]
    if not rows or not rows[0]:
        raise HTTPException(400, "embedding: expected at least one vector of numbers")
    if len(rows) > max_queries:
        raise HTTPException(400, f"embedding: at most {max_queries} vectors per request, got {len(rows)}")
    if len({len(r) for r in rows}) != 1:
        raise HTTPException(400, f"embedding: every vector needs the same length; got lengths "
                                 f"{sorted({len(r) for r in rows})}")
    with np.errstate(over="ignore"):  # a number beyond float32 becomes inf, which search refuses (400)
        return np.asarray(rows, dtype=np.float32), query.k


def _search_response(service: RetrievalService, vectors: np.ndarray, names: list[str], k: int,
                     nprobe: int | None, rerank: str | None) -> JSONResponse:
    """Search and render the answer (thread pool: its cost grows with queries × k)."""
    hits = service.search(vectors, k, nprobe, service.rerank_spec(rerank))
    return JSONResponse({"queries": [{"query": n, "results": h} for n, h in zip(names, hits)]})


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def create_app(settings: Settings, service: RetrievalService | None = None, cors_origins: list[str] | None = None
               ) -> FastAPI:
    """The app; ``service`` (tests) or one loaded from ``settings`` when the app starts."""
    counters = {"requests": 0}
    cors = tuple(cors_origins or settings.cors_origins)
    EmbeddingQuery = embedding_query(settings.max_k, settings.max_files)
    K = Query(10, ge=1, le=settings.max_k, description=f"results per query (1 … {settings.max_k})")
    NPROBE = Query(None, ge=1, le=MAX_NPROBE, description="IVF lists visited per query (IVF indexes only)")
    RERANK = Query(None, max_length=200, description="re-ranking NAME[:k=v,...]: none | aqe | dba | dba_aqe | "
                   f"kreciprocal (docs/reranking.md); default: the server's --rerank ({settings.rerank})")
    KIND = Query("gradcam", pattern="^(gradcam|gates)$", description="gradcam: where the embedding looks "
                 "(Grad-CAM); gates: the last attention gate, a gate on a residual term (not where it looks)")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = service or await run_in_threadpool(RetrievalService, settings)
        yield
        app.state.service.close()

    # Swagger UI (/docs) loads its script from a CDN: offline it is a blank page, and the CSP
    # (script-src 'self') would block it anyway. The document itself is served at /openapi.json.
    app = FastAPI(title="retrieval-serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Top-K image retrieval with a CBAM-ResNet + CGD checkpoint over a FAISS index folder. "
                              "Every error is a JSON body {\"error\": \"...\"}.")

    def svc(request: Request) -> RetrievalService:
        return request.app.state.service

    def writer(request: Request) -> None:
        """Write endpoints need ``Authorization: Bearer <token>`` when a token is configured."""
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.token.encode()):
            raise HTTPException(401, "this endpoint needs Authorization: Bearer <token> (--token-file)")

    # Outermost last: headers on every answer, the access log (refusals too), then Host, then Origin,
    # then the body, then routing.
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
    app.add_middleware(AccessLog, counters=counters)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if err.status_code == 404 and err.detail == "Not Found":
            return _error(404, f"no route {request.method} {request.url.path}")
        if err.status_code == 405:
            allow = _allowed_methods(request)
            return _error(405, f"{request.method} is not allowed here (allowed: {allow})", {"Allow": allow})
        return _error(err.status_code, str(err.detail), err.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound):
        return _error(404, str(err))

    @app.exception_handler(ImageError)
    async def bad_image(request: Request, err: ImageError):
        return _error(400, str(err))

    @app.exception_handler(RetrievalError)
    async def bad_request(request: Request, err: RetrievalError):
        return _error(400, str(err))

    async def embed_pictures(service: RetrievalService, files: list[tuple[bytes, str]]) -> np.ndarray:
        tensors = await run_in_threadpool(
            lambda: torch.stack([service.preprocess(service.decode(data, name)) for data, name in files]))
        return await asyncio.wrap_future(service.batcher.submit(tensors))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_static("index.html"))

    @app.get("/static/app.js", include_in_schema=False)
    async def page_script():
        return Response(_static("app.js"), media_type="text/javascript")

    @app.get("/static/app.css", include_in_schema=False)
    async def page_style():
        return Response(_static("app.css"), media_type="text/css")

    @app.get("/healthz", response_model=Health, responses=errors())
    async def healthz(service: RetrievalService = Depends(svc)):
        return Health(status="ok", count=service.gallery.count)

    @app.get("/stats", response_model=Stats, responses=errors())
    async def stats(service: RetrievalService = Depends(svc)):
        return Stats(**service.stats(), requests=counters["requests"])

    @app.post("/search", response_model=SearchResponse, responses=errors(403, 415), openapi_extra={"requestBody": {
        "required": True, "content": {"multipart/form-data": {"schema": multipart_body(False, settings.max_files)},
                                      "application/json": {"schema": EmbeddingQuery.model_json_schema()}}}})
    async def search(request: Request, k: int = K, nprobe: int | None = NPROBE, rerank: str | None = RERANK,
                     service: RetrievalService = Depends(svc)):
        """Search by uploaded images (multipart ``images``) or by embeddings (JSON ``{"embedding": ...}``)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            vectors, body_k = await run_in_threadpool(_vectors, await request.body(), EmbeddingQuery,
                                                      settings.max_files)
            names = [f"embedding {i}" for i in range(len(vectors))]
            k = k if body_k is None else body_k
        else:
            files, _ = await _uploads(request, settings)
            vectors, names = await embed_pictures(service, files), [name for _, name in files]
        return await run_in_threadpool(_search_response, service, vectors, names, k, nprobe, rerank)

    @app.get("/items", response_model=ItemList, responses=errors())
    async def items(offset: int = Query(0, ge=0), limit: int = Query(24, ge=1, le=500),
                    service: RetrievalService = Depends(svc)):
        total, chosen = await run_in_threadpool(service.items, offset, limit)
        return ItemList(total=total, items=[Item(**i) for i in chosen])

    @app.get("/items/{item_id}", response_model=Item, responses=errors(404))
    async def item(item_id: ItemId, service: RetrievalService = Depends(svc)):
        return Item(**await run_in_threadpool(service.item, item_id))

    @app.get("/items/{item_id}/image", response_class=Response, responses={
        200: {"content": {"image/*": {}}, "description": "the gallery image file"}, **errors(404)})
    async def image(item_id: ItemId, service: RetrievalService = Depends(svc)):
        data, media_type, _ = await run_in_threadpool(service.item_file, item_id)  # by id only: the index's path
        return Response(data, media_type=media_type)

    @app.get("/items/{item_id}/neighbours", response_model=SearchResponse, responses=errors(404))
    async def neighbours(item_id: ItemId, k: int = K, nprobe: int | None = NPROBE, rerank: str | None = RERANK,
                         service: RetrievalService = Depends(svc)):
        vector = await run_in_threadpool(service.item_embedding, item_id)
        return await run_in_threadpool(_search_response, service, vector, [f"item {item_id}"], k, nprobe, rerank)

    def attention_png(service: RetrievalService, data: bytes, name: str, kind: str) -> bytes:
        from ..viz.overlay import overlay_png

        picture = service.decode(data, name)
        try:
            return overlay_png(service.embedder.model, picture, service.preprocess(picture), kind)
        except ValueError as err:  # gates of a model without any
            raise HTTPException(400, str(err)) from None

    def explain_item(service: RetrievalService, query_item: int, item_id: int) -> dict:
        data, _, path = service.item_file(query_item)
        return service.explain(service.preprocess(service.decode(data, path)), item_id)

    @app.get("/items/{item_id}/explain", response_model=Explanation, responses=errors(404))
    async def explain_items(item_id: ItemId, query_item: int = Query(ge=0, description="the query's item id"),
                            service: RetrievalService = Depends(svc)):
        """Why gallery item ``query_item`` matches item ``item_id``: a map on each of where the score comes from."""
        return await run_in_threadpool(explain_item, service, query_item, item_id)

    @app.post("/explain", response_model=Explanation, responses=errors(403, 404, 415), openapi_extra={
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": multipart_body(False, settings.max_files)}}}})
    async def explain_upload(request: Request, result: int = Query(ge=0, description="the result's item id"),
                             service: RetrievalService = Depends(svc)):
        """Why an uploaded query image (the first file) matches gallery item ``result``."""
        files, _ = await _uploads(request, settings)
        query = await run_in_threadpool(lambda: service.preprocess(service.decode(*files[0])))
        return await run_in_threadpool(service.explain, query, result)

    png = {200: {"content": {"image/png": {}}, "description": "the picture with the attention map over it"}}

    @app.post("/attention", response_class=Response, responses={**png, **errors(403, 415)}, openapi_extra={
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": multipart_body(False, settings.max_files)}}}})
    async def attention_upload(request: Request, kind: str = KIND, service: RetrievalService = Depends(svc)):
        """An uploaded image with a map over it, as PNG: Grad-CAM of the embedding, or the attention gate."""
        files, _ = await _uploads(request, settings)
        return Response(await run_in_threadpool(attention_png, service, *files[0], kind), media_type="image/png")

    @app.get("/items/{item_id}/attention", response_class=Response, responses={**png, **errors(404)})
    async def attention_item(item_id: ItemId, kind: str = KIND, service: RetrievalService = Depends(svc)):
        data, _, path = await run_in_threadpool(service.item_file, item_id)
        return Response(await run_in_threadpool(attention_png, service, data, path, kind), media_type="image/png")

    @app.post("/items", response_model=Added, status_code=201, dependencies=[Depends(writer)],
              responses=errors(401, 403, 415), openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": multipart_body(True, settings.max_files)}}}})
    async def add(request: Request, service: RetrievalService = Depends(svc)):
        """Add uploaded images (multipart ``images``, optional ``labels`` one per image); durable on return."""
        files, labels = await _uploads(request, settings)
        if labels and len(labels) != len(files):
            raise HTTPException(422, f"labels: {len(labels)} labels for {len(files)} images (give one per image)")
        return Added(ids=await run_in_threadpool(service.add, files, labels or [""] * len(files)))

    @app.delete("/items/{item_id}", response_model=Removed, dependencies=[Depends(writer)],
                responses=errors(401, 403, 404))
    async def remove(item_id: ItemId, service: RetrievalService = Depends(svc)):
        await run_in_threadpool(service.remove, item_id)
        return Removed(removed=item_id)

    return app
