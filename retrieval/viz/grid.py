"""Retrieval grid: one row per query, the query then its top-K gallery thumbnails.

Borders: blue = the query; green / red = same / different label as the query when both
labels are known; grey when either is unknown. Captions give rank, score and label. Only
Pillow is needed (no matplotlib).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..errors import ImageError
from ..files import atomic_path

log = logging.getLogger(__name__)

QUERY, HIT, MISS, UNKNOWN = (31, 119, 180), (44, 160, 44), (214, 39, 40), (150, 150, 150)
BORDER, GAP, CAPTION = 4, 6, 30


class Hit(NamedTuple):
    """One retrieved gallery item."""
    path: str
    score: float
    label: str = ""


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _thumbnail(path: str, side: int) -> Image.Image:
    """The image letter-boxed into side×side; a grey tile saying why when it cannot be read."""
    from ..data import load_image

    try:
        image = ImageOps.pad(load_image(path), (side, side), color=(255, 255, 255))
    except ImageError as err:
        log.warning("grid: %s", err)
        image = Image.new("RGB", (side, side), (220, 220, 220))
        ImageDraw.Draw(image).text((4, side // 2 - 6), "unreadable", fill=(90, 90, 90), font=_font())
    return image


def _colour(query_label: str, label: str) -> tuple[int, int, int]:
    if not query_label or not label:
        return UNKNOWN
    return HIT if label == query_label else MISS


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _cell(canvas: Image.Image, x: int, y: int, tile: Image.Image, colour, lines: list[str], side: int) -> None:
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x, y, x + side + 2 * BORDER - 1, y + side + 2 * BORDER - 1], fill=colour)
    canvas.paste(tile, (x + BORDER, y + BORDER))
    chars = max(4, (side + 2 * BORDER) // 6)
    for i, line in enumerate(lines):
        draw.text((x, y + side + 2 * BORDER + 2 + 13 * i), _short(line, chars), fill=(0, 0, 0), font=_font())


def retrieval_grid(queries: Sequence[str], results: Sequence[Sequence[Hit]], query_labels: Sequence[str] | None = None,
                   thumb: int = 112, max_rows: int = 50) -> Image.Image:
    """Grid picture: row i = ``queries[i]`` then ``results[i]`` (best first).

    query_labels: text per query, "" (or None for all) when unknown. At most ``max_rows`` rows.
    """
    if len(queries) != len(results):
        raise ValueError(f"grid: {len(queries)} queries but {len(results)} result lists")
    if len(queries) > max_rows:
        log.warning("grid: showing the first %d of %d queries", max_rows, len(queries))
    rows = min(len(queries), max_rows)
    labels = list(query_labels) if query_labels is not None else [""] * len(queries)
    cols = 1 + max((len(r) for r in results[:rows]), default=0)
    cell_w, cell_h = thumb + 2 * BORDER + GAP, thumb + 2 * BORDER + CAPTION + GAP
    canvas = Image.new("RGB", (GAP + cols * cell_w + GAP, GAP + rows * cell_h), (255, 255, 255))
    for r in range(rows):
        y = GAP + r * cell_h
        query_label = str(labels[r] or "")
        _cell(canvas, GAP, y, _thumbnail(queries[r], thumb), QUERY,
              [f"query {Path(queries[r]).name}", query_label], thumb)
        for c, hit in enumerate(results[r], start=1):
            label = str(hit.label or "")
            _cell(canvas, GAP + c * cell_w + GAP, y, _thumbnail(hit.path, thumb), _colour(query_label, label),
                  [f"#{c}   {hit.score:.3f}", label], thumb)
    return canvas


def save_retrieval_grid(out_path: str | Path, queries: Sequence[str], results: Sequence[Sequence[Hit]],
                        query_labels: Sequence[str] | None = None, thumb: int = 112, max_rows: int = 50) -> Path:
    """Render ``retrieval_grid`` and write it atomically (format from the suffix: .png, .jpg, ...)."""
    out_path = Path(out_path)
    fmt = Image.registered_extensions().get(out_path.suffix.lower())
    if fmt is None:
        raise ValueError(f"grid: {out_path}: unknown image extension '{out_path.suffix}' (use .png or .jpg)")
    image = retrieval_grid(queries, results, query_labels, thumb, max_rows)
    with atomic_path(out_path) as tmp:
        image.save(tmp, format=fmt)
    return out_path
