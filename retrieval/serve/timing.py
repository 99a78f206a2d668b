"""Where a request's time goes: per-stage durations sent back in a ``Server-Timing`` header.

``Server-Timing`` (W3C Server Timing; browsers show it in the network panel) carries
``name;dur=milliseconds`` entries. ``/search`` reports parse (reading the multipart body or the
JSON), decode, transform, forward (the network's pass over the micro-batch this request was
in), batcher (the rest of the wait for it: queue and thread hand-offs), search and json; ``benchmarks/bench_serve.py`` reads them to show what the service adds
to the forward pass. Stages run in different threads one after the other, never concurrently,
so a plain list suffices.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator


class StageTimer:
    """Durations of named stages of one request, in the order they ran."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages.append((name, 1000 * (time.perf_counter() - start)))

    def add(self, name: str, ms: float) -> None:
        """A stage measured elsewhere (the micro-batcher's forward pass)."""
        self.stages.append((name, ms))

    def header(self) -> str:
        """The ``Server-Timing`` value: ``parse;dur=0.81, decode;dur=2.10, ...`` (milliseconds)."""
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self.stages)


def parse_server_timing(value: str) -> dict[str, float]:
    """``Server-Timing`` header → {stage: milliseconds} (entries without ``dur`` are skipped)."""
    out: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, *params = (p.strip() for p in entry.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if key == "dur":
                out[name] = out.get(name, 0.0) + float(number)
    return out
