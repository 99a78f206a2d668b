"""The HTTP API and web page of ``retrieval-serve`` (FastAPI), thin over ``RetrievalService``.

State is loaded once in the app's lifespan (FastAPI "Lifespan Events"); request and response
shapes are pydantic models, so ``/docs`` documents them; every error is a JSON body
``{"error": "..."}`` with a 4xx status saying what was wrong (a bug is a 500 with a one-line
body, never a traceback). Gallery files are served by id only: nothing a request sends
becomes a filesystem path.
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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from ..errors import ImageError, RetrievalError
from .service import NotFound, RetrievalService, Settings

log = logging.getLogger(__name__)
access = logging.getLogger("retrieval.serve.access")


class Hit(BaseModel):
    rank: int
    id: int
    score: float
    label: str
    path: str


class QueryResult(BaseModel):
    query: str = Field(description="the uploaded file's name, 'embedding N' or 'item N'")
    results: list[Hit]


class SearchResponse(BaseModel):
    queries: list[QueryResult]


class EmbeddingQuery(BaseModel):
    embedding: list[float] | list[list[float]] = Field(description="one vector or a list of vectors (dim numbers each)")
    k: int | None = Field(None, description="results per query (else the k query parameter)")


class Item(BaseModel):
    id: int
    path: str
    label: str
    split: str


class ItemList(BaseModel):
    total: int
    items: list[Item]


class Added(BaseModel):
    ids: list[int]


class Stats(BaseModel):
    count: int
    removed: int
    dim: int
    index_type: str
    checkpoint: str
    checkpoint_sha256: str
    uptime_s: float
    requests: int
    forward_batches: int
    images_embedded: int


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _hits(frame) -> list[Hit]:
    return [Hit(rank=int(r.rank), id=int(r.gallery_id), score=float(r.score), label=str(r.gallery_label),
                path=str(r.gallery_path)) for r in frame.itertuples()]


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
    length = int(request.headers.get("content-length") or 0)
    if length > settings.max_files * (settings.max_upload_bytes + 4096):
        raise HTTPException(413, f"request of {length:,} bytes is over the upload limit")
    form = await request.form(max_files=settings.max_files, max_fields=settings.max_files + 8)
    uploads = [v for v in form.getlist("images") if isinstance(v, UploadFile)]
    if not uploads:
        raise HTTPException(422, "no image files: send them as multipart field 'images'")
    files = [(await _read_upload(u, settings), u.filename or f"upload{i}") for i, u in enumerate(uploads)]
    labels = [str(v) for v in form.getlist("labels")]
    return files, labels


def create_app(settings: Settings, service: RetrievalService | None = None, cors_origins: list[str] | None = None
               ) -> FastAPI:
    """The app; ``service`` (tests) or one loaded from ``settings`` when the app starts."""
    counters = {"requests": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = service or await run_in_threadpool(RetrievalService, settings)
        yield
        app.state.service.close()

    app = FastAPI(title="retrieval-serve", lifespan=lifespan,
                  description="Top-K image retrieval with a CBAM-ResNet + CGD checkpoint over a FAISS index folder.")
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization"])

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

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - a bug: one line in the log, a 500 without traceback for the client
            log.exception("%s %s failed", request.method, request.url.path)
            response = _error(500, "internal error (the server log has the details)")
        counters["requests"] += 1
        access.info("%s %s %d %.1f ms", request.method, request.url.path, response.status_code,
                    1000 * (time.perf_counter() - start))
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return _error(err.status_code, str(err.detail))

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
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz(service: RetrievalService = Depends(svc)):
        return {"status": "ok", "count": service.gallery.count}

    @app.get("/stats", response_model=Stats)
    async def stats(service: RetrievalService = Depends(svc)):
        return Stats(**service.stats(), requests=counters["requests"])

    @app.post("/search", response_model=SearchResponse, openapi_extra={"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "application/json": {"schema": EmbeddingQuery.model_json_schema()}}, "required": True}})
    async def search(request: Request, k: int = Query(10, description="results per query"),
                     nprobe: int | None = Query(None, ge=1, description="IVF lists visited per query"),
                     service: RetrievalService = Depends(svc)):
        """Search by uploaded images (multipart field ``images``) or by embeddings (JSON ``{"embedding": ...}``)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                body = EmbeddingQuery.model_validate_json(await request.body())
            except ValueError as err:
                raise HTTPException(422, f"body: expected {{\"embedding\": [numbers] or [[numbers], ...]}} ({err})")
            vectors = np.asarray(body.embedding if isinstance(body.embedding[0], list) else [body.embedding],
                                 dtype=np.float32) if body.embedding else np.empty((0, 0), np.float32)
            names = [f"embedding {i}" for i in range(len(vectors))]
            k = body.k or k
        else:
            files, _ = await _uploads(request, settings)
            service.check_k(k)  # before the forward pass
            vectors, names = await embed_pictures(service, files), [name for _, name in files]
        frames = await run_in_threadpool(service.search, vectors, k, nprobe)
        return SearchResponse(queries=[QueryResult(query=n, results=_hits(f)) for n, f in zip(names, frames)])

    @app.get("/items", response_model=ItemList)
    async def items(offset: int = Query(0, ge=0), limit: int = Query(24, ge=1, le=500),
                    service: RetrievalService = Depends(svc)):
        total, chosen = service.items(offset, limit)
        return ItemList(total=total, items=[Item(**i) for i in chosen])

    @app.get("/items/{item_id}", response_model=Item)
    async def item(item_id: int, service: RetrievalService = Depends(svc)):
        return Item(**service.item(item_id))

    @app.get("/items/{item_id}/image", response_class=FileResponse)
    async def image(item_id: int, service: RetrievalService = Depends(svc)):
        path = service.item(item_id)["path"]  # by id only: the path comes from the index's own metadata
        try:
            return FileResponse(path)
        except (OSError, RuntimeError):
            raise HTTPException(404, f"item {item_id}: its image file is missing on the server") from None

    @app.get("/items/{item_id}/neighbours", response_model=SearchResponse)
    async def neighbours(item_id: int, k: int = Query(10), nprobe: int | None = Query(None, ge=1),
                         service: RetrievalService = Depends(svc)):
        vector = await run_in_threadpool(service.item_embedding, item_id)
        frames = await run_in_threadpool(service.search, vector, k, nprobe)
        return SearchResponse(queries=[QueryResult(query=f"item {item_id}", results=_hits(frames[0]))])

    def attention_png(service: RetrievalService, data: bytes, name: str) -> bytes:
        from ..viz.overlay import overlay_png

        picture = service.decode(data, name)
        return overlay_png(service.embedder.model, picture, service.preprocess(picture))

    @app.post("/attention", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def attention_upload(request: Request, service: RetrievalService = Depends(svc)):
        """Where the network looks in an uploaded image (CBAM spatial attention, else Grad-CAM), as PNG."""
        files, _ = await _uploads(request, settings)
        return Response(await run_in_threadpool(attention_png, service, *files[0]), media_type="image/png")

    @app.get("/items/{item_id}/attention", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def attention_item(item_id: int, service: RetrievalService = Depends(svc)):
        path = service.item(item_id)["path"]
        data = await run_in_threadpool(lambda: open(path, "rb").read())
        return Response(await run_in_threadpool(attention_png, service, data, path), media_type="image/png")

    @app.post("/items", response_model=Added, status_code=201, dependencies=[Depends(writer)])
    async def add(request: Request, service: RetrievalService = Depends(svc)):
        """Add uploaded images (multipart ``images``, optional ``labels`` one per image); durable on return."""
        files, labels = await _uploads(request, settings)
        if labels and len(labels) != len(files):
            raise HTTPException(422, f"labels: {len(labels)} labels for {len(files)} images (give one per image)")
        return Added(ids=await run_in_threadpool(service.add, files, labels or [""] * len(files)))

    @app.delete("/items/{item_id}", dependencies=[Depends(writer)])
    async def remove(item_id: int, service: RetrievalService = Depends(svc)):
        await run_in_threadpool(service.remove, item_id)
        return {"removed": item_id}

    return app
