"""The routes of ``retrieval-serve`` on a module-level ``APIRouter`` (``create_app`` in app.py includes it).

Each route takes the service and this server's ``Settings`` from the app's state through a
dependency (``Depends(get_service)``, ``Depends(get_settings)``). What depends on the settings
is checked per request (k up to --max-k, files per request, the bearer token) and stated in
the OpenAPI document by ``app.document``, from ``BODIES`` and the ``k`` / ``rerank``
parameters. Gallery files are served by id only: nothing a request sends becomes a
filesystem path. Work that grows with the request runs in the thread pool, so ``/healthz``
answers while the largest request runs.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import time
from importlib import resources

import numpy as np
import torch
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .schemas import (Added, Explanation, Health, Item, ItemId, ItemList, Removed, SearchResponse, Stats,
                      embedding_query, errors)
from .service import RetrievalService, Settings
from .timing import StageTimer

MAX_NPROBE = 1 << 16
# The request bodies the routes read themselves (request.form / request.body), which the document
# states with this server's bounds: (path, method) → (multipart with labels, also a JSON embedding query).
BODIES = {("/search", "post"): (False, True), ("/explain", "post"): (False, False),
          ("/attention", "post"): (False, False), ("/items", "post"): (True, False)}
# Written into the document by app.document with this server's --max-k and --rerank.
K_TEXT = "results per query (1 … {max_k})"
RERANK_TEXT = ("re-ranking NAME[:k=v,...]: none | aqe | dba | dba_aqe | kreciprocal (docs/reranking.md); default: "
               "the server's --rerank ({rerank})")
KIND = Query("gradcam", pattern="^(gradcam|gates)$", description="gradcam: where the embedding looks "
             "(Grad-CAM); gates: the last attention gate, a gate on a residual term (not where it looks)")
PNG = {200: {"content": {"image/png": {}}, "description": "the picture with the attention map over it"}}

router = APIRouter()


def get_service(request: Request) -> RetrievalService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def require_writer(request: Request, settings: Settings = Depends(get_settings)) -> None:
    """Write endpoints need ``Authorization: Bearer <token>`` when a token is configured."""
    if settings.token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.token.encode()):
        raise HTTPException(401, "this endpoint needs Authorization: Bearer <token> (--token-file)")


class SearchParams:
    """k (1 … --max-k), nprobe and rerank of a search, as query parameters."""

    def __init__(self, k: int = Query(10, ge=1, description=K_TEXT),
                 nprobe: int | None = Query(None, ge=1, le=MAX_NPROBE,
                                            description="IVF lists visited per query (IVF indexes only)"),
                 rerank: str | None = Query(None, max_length=200, description=RERANK_TEXT),
                 settings: Settings = Depends(get_settings)):
        if k > settings.max_k:  # pydantic's own words, as when the bound sat on the parameter
            raise RequestValidationError([{"type": "less_than_equal", "loc": ("query", "k"), "input": k,
                                           "msg": f"Input should be less than or equal to {settings.max_k}",
                                           "ctx": {"le": settings.max_k}}])
        self.k, self.nprobe, self.rerank = k, nprobe, rerank


@functools.lru_cache(maxsize=8)
def _embedding_query(max_k: int, max_files: int) -> type[BaseModel]:
    return embedding_query(max_k, max_files)


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


def _search_response(service: RetrievalService, vectors: np.ndarray, names: list[str], params: SearchParams,
                     k: int, timer: StageTimer | None = None) -> JSONResponse:
    """Search and render the answer (thread pool: its cost grows with queries × k); timer: adds its
    ``search`` and ``json`` stages and sends every stage as ``Server-Timing``."""
    timer = timer or StageTimer()
    with timer.stage("search"):
        hits = service.search(vectors, k, params.nprobe, service.rerank_spec(params.rerank))
    with timer.stage("json"):
        response = JSONResponse({"queries": [{"query": n, "results": h} for n, h in zip(names, hits)]})
    response.headers["Server-Timing"] = timer.header()
    return response


async def _embed_pictures(service: RetrievalService, files: list[tuple[bytes, str]],
                          timer: StageTimer | None = None) -> np.ndarray:
    timer = timer or StageTimer()

    def prepare() -> torch.Tensor:
        with timer.stage("decode"):
            pictures = [service.decode(data, name) for data, name in files]
        with timer.stage("transform"):
            return service.batch(pictures)

    tensors = await run_in_threadpool(prepare)
    future = service.batcher.submit(tensors)
    start = time.perf_counter()
    out = await asyncio.wrap_future(future)
    waited = 1000 * (time.perf_counter() - start)
    forward = min(waited, getattr(future, "forward_ms", waited))
    timer.add("forward", forward)
    timer.add("batcher", waited - forward)  # the queue and the thread hand-offs around the forward pass
    return out


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse(_static("index.html"))


@router.get("/static/app.js", include_in_schema=False)
async def page_script():
    return Response(_static("app.js"), media_type="text/javascript")


@router.get("/static/app.css", include_in_schema=False)
async def page_style():
    return Response(_static("app.css"), media_type="text/css")


@router.get("/healthz", response_model=Health, responses=errors())
async def healthz(service: RetrievalService = Depends(get_service)):
    return Health(status="ok", count=service.gallery.count)


@router.get("/stats", response_model=Stats, responses=errors())
async def stats(request: Request, service: RetrievalService = Depends(get_service)):
    return Stats(**service.stats(), requests=request.app.state.counters["requests"])


@router.post("/search", response_model=SearchResponse, responses=errors(403, 415))
async def search(request: Request, params: SearchParams = Depends(), service: RetrievalService = Depends(get_service),
                 settings: Settings = Depends(get_settings)):
    """Search by uploaded images (multipart ``images``) or by embeddings (JSON ``{"embedding": ...}``)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    k, timer = params.k, StageTimer()
    if kind == "application/json":
        with timer.stage("parse"):
            body = await request.body()
            vectors, body_k = await run_in_threadpool(_vectors, body, _embedding_query(settings.max_k,
                                                                                       settings.max_files),
                                                      settings.max_files)
        names = [f"embedding {i}" for i in range(len(vectors))]
        k = k if body_k is None else body_k
    else:
        with timer.stage("parse"):
            files, _ = await _uploads(request, settings)
        vectors, names = await _embed_pictures(service, files, timer), [name for _, name in files]
    return await run_in_threadpool(_search_response, service, vectors, names, params, k, timer)


@router.get("/items", response_model=ItemList, responses=errors())
async def items(offset: int = Query(0, ge=0), limit: int = Query(24, ge=1, le=500),
                service: RetrievalService = Depends(get_service)):
    total, chosen = await run_in_threadpool(service.items, offset, limit)
    return ItemList(total=total, items=[Item(**i) for i in chosen])


@router.get("/items/{item_id}", response_model=Item, responses=errors(404))
async def item(item_id: ItemId, service: RetrievalService = Depends(get_service)):
    return Item(**await run_in_threadpool(service.item, item_id))


@router.get("/items/{item_id}/image", response_class=Response, responses={
    200: {"content": {"image/*": {}}, "description": "the gallery image file"}, **errors(404)})
async def image(item_id: ItemId, service: RetrievalService = Depends(get_service)):
    data, media_type, _ = await run_in_threadpool(service.item_file, item_id)  # by id only: the index's path
    return Response(data, media_type=media_type)


@router.get("/items/{item_id}/neighbours", response_model=SearchResponse, responses=errors(404))
async def neighbours(item_id: ItemId, params: SearchParams = Depends(),
                     service: RetrievalService = Depends(get_service)):
    vector = await run_in_threadpool(service.item_embedding, item_id)
    return await run_in_threadpool(_search_response, service, vector, [f"item {item_id}"], params, params.k)


def _attention_png(service: RetrievalService, data: bytes, name: str, kind: str) -> bytes:
    from ..viz.overlay import overlay_png

    picture = service.decode(data, name)
    try:
        return service.run_model(overlay_png, service.embedder.model, picture, service.preprocess(picture), kind)
    except ValueError as err:  # gates of a model without any
        raise HTTPException(400, str(err)) from None


def _explain_item(service: RetrievalService, query_item: int, item_id: int) -> dict:
    data, _, path = service.item_file(query_item)
    return service.explain(service.preprocess(service.decode(data, path)), item_id)


@router.get("/items/{item_id}/explain", response_model=Explanation, responses=errors(404))
async def explain_items(item_id: ItemId, query_item: int = Query(ge=0, description="the query's item id"),
                        service: RetrievalService = Depends(get_service)):
    """Why gallery item ``query_item`` matches item ``item_id``: a map on each of where the score comes from."""
    return await run_in_threadpool(_explain_item, service, query_item, item_id)


@router.post("/explain", response_model=Explanation, responses=errors(403, 404, 415))
async def explain_upload(request: Request, result: int = Query(ge=0, description="the result's item id"),
                         service: RetrievalService = Depends(get_service), settings: Settings = Depends(get_settings)):
    """Why an uploaded query image (the first file) matches gallery item ``result``."""
    files, _ = await _uploads(request, settings)
    query = await run_in_threadpool(lambda: service.preprocess(service.decode(*files[0])))
    return await run_in_threadpool(service.explain, query, result)


@router.post("/attention", response_class=Response, responses={**PNG, **errors(403, 415)})
async def attention_upload(request: Request, kind: str = KIND, service: RetrievalService = Depends(get_service),
                           settings: Settings = Depends(get_settings)):
    """An uploaded image with a map over it, as PNG: Grad-CAM of the embedding, or the attention gate."""
    files, _ = await _uploads(request, settings)
    return Response(await run_in_threadpool(_attention_png, service, *files[0], kind), media_type="image/png")


@router.get("/items/{item_id}/attention", response_class=Response, responses={**PNG, **errors(404)})
async def attention_item(item_id: ItemId, kind: str = KIND, service: RetrievalService = Depends(get_service)):
    data, _, path = await run_in_threadpool(service.item_file, item_id)
    return Response(await run_in_threadpool(_attention_png, service, data, path, kind), media_type="image/png")


@router.post("/items", response_model=Added, status_code=201, dependencies=[Depends(require_writer)],
             responses=errors(401, 403, 415))
async def add(request: Request, service: RetrievalService = Depends(get_service),
              settings: Settings = Depends(get_settings)):
    """Add uploaded images (multipart ``images``, optional ``labels`` one per image); durable on return."""
    files, labels = await _uploads(request, settings)
    if labels and len(labels) != len(files):
        raise HTTPException(422, f"labels: {len(labels)} labels for {len(files)} images (give one per image)")
    return Added(ids=await run_in_threadpool(service.add, files, labels or [""] * len(files)))


@router.delete("/items/{item_id}", response_model=Removed, dependencies=[Depends(require_writer)],
               responses=errors(401, 403, 404))
async def remove(item_id: ItemId, service: RetrievalService = Depends(get_service)):
    await run_in_threadpool(service.remove, item_id)
    return Removed(removed=item_id)
