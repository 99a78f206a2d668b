"""The request and response shapes of ``retrieval-serve``, and the error statuses each route documents.

pydantic models, so the OpenAPI document (``/openapi.json``) states every body; one error
shape, ``ErrorBody`` (``{"error": "..."}``), for every 4xx/5xx.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt

ItemId = Annotated[int, Path(description="the item's id (its row in the index)")]
Number = Annotated[float, Strict()]  # a JSON number (ints too); "0.1" and true are refused, not converted


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong with the request, in one line")


ERRORS = {
    400: "bad input: an image that does not decode, a vector of the wrong size, k beyond --max-k, "
         "too many queries or files, or a Host header this server does not serve",
    401: "a write without the bearer token (when the server has one)",
    403: "a write sent by a page of another site (Origin / Sec-Fetch-Site)",
    404: "no live item with this id, or its image file is missing or not a regular file; unknown routes",
    408: "the request body did not arrive in time",
    413: "the request body or an uploaded file is over the size limit",
    415: "a body or uploaded part of the wrong content type",
    422: "the request does not have the documented shape",
}
COMMON = (400, 408, 413, 422)  # any request: Host check, body guard, parameter validation


def errors(*codes: int) -> dict:
    """The ``responses=`` of a route: each error status with its ``ErrorBody`` and meaning."""
    return {c: {"model": ErrorBody, "description": ERRORS[c]} for c in sorted({*COMMON, *codes})}


def multipart_body(labels: bool, max_files: int) -> dict:
    """OpenAPI requestBody of an upload route: multipart field ``images`` (and optional ``labels``)."""
    fields = {"images": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                         "maxItems": max_files, "description": "image files (JPEG, PNG, WebP, …)"}}
    if labels:
        fields["labels"] = {"type": "array", "items": {"type": "string"},
                            "description": "one label per image, in the same order (optional)"}
    return {"type": "object", "required": ["images"], "properties": fields}


class Hit(BaseModel):
    rank: int
    id: int
    score: float
    label: str
    path: str = Field(description="the file's name (its full server path with --expose-paths)")


class QueryResult(BaseModel):
    query: str = Field(description="the uploaded file's name, 'embedding N' or 'item N'")
    results: list[Hit]


class SearchResponse(BaseModel):
    queries: list[QueryResult]


def embedding_query(max_k: int, max_queries: int) -> type[BaseModel]:
    """The JSON body of ``POST /search``, with this server's bounds (so the document states them)."""

    class EmbeddingQuery(BaseModel):
        model_config = ConfigDict(extra="forbid")
        embedding: list[Number] | list[list[Number]] = Field(
            description=f"one vector or a list of up to {max_queries} vectors (dim numbers each)")
        k: StrictInt | None = Field(None, ge=1, le=max_k, description="results per query (else the k parameter)")

    return EmbeddingQuery


class Explanation(BaseModel):
    """Why a query and a gallery item match (retrieval/explain.py): where each image's share of the score lies."""
    score: float = Field(description="cosine of the two embeddings")
    shares: dict[str, float] = Field(description="the score split by descriptor branch (S, M, G); they sum to it")
    exact: dict[str, bool] = Field(description="per branch: exact decomposition (SPoC) or first-order (GeM, MAC)")
    note: str
    query_map: list[list[float]] = Field(description="(h, w) contributions over the query's last feature map")
    result_map: list[list[float]] = Field(description="(h, w) contributions over the item's last feature map")


class Item(BaseModel):
    id: int
    path: str = Field(description="the file's name (its full server path with --expose-paths)")
    label: str
    split: str


class ItemList(BaseModel):
    total: int
    items: list[Item]


class Added(BaseModel):
    ids: list[int] = Field(description="the ids the new items were written under, in upload order")


class Removed(BaseModel):
    removed: int


class Health(BaseModel):
    status: str
    count: int


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
