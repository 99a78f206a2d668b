"""Shared helpers of the benchmarks: machine line, timing, writing JSON + Markdown results."""
from __future__ import annotations

import time

# re-exported for the benchmarks; write_results is retrieval-benchmark's writer too
from retrieval.provenance import commit, header, machine_line, write_results  # noqa: F401


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out
