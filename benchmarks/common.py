"""Shared helpers of the benchmarks: machine line, timing, writing JSON + Markdown results."""
from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from retrieval.files import atomic_write_text
from retrieval.runtime import machine_info, versions


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def header() -> dict:
    """Date, machine, commit and versions: recorded beside every benchmark number."""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
            "commit": commit(), "versions": versions()}


def machine_line(head: dict) -> str:
    m = head["machine"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ", no GPU"
    return f"{head['date']}, {m['cpu']} ({m['cores']} cores{gpu}), commit {head['commit']}"


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def write_results(out: str | Path, name: str, result: dict, markdown: str) -> None:
    """Write ``name.json`` and ``name.md`` into ``out`` (atomically)."""
    out = Path(out)
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out / f"{name}.md", markdown)
