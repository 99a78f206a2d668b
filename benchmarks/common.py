"""Shared helpers of the benchmarks: machine line, timing, writing JSON + Markdown results."""
from __future__ import annotations

import json
import time
from pathlib import Path

from retrieval.files import atomic_write_text
from retrieval.provenance import commit, header, machine_line  # noqa: F401  (re-exported for the benchmarks)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def write_results(out: str | Path, name: str, result: dict, markdown: str) -> None:
    """Write ``name.json`` and ``name.md`` into ``out`` (atomically)."""
    out = Path(out)
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out / f"{name}.md", markdown)
