"""Where a result came from: date, machine, commit and package versions, recorded beside every number;
``write_results`` writes a result's JSON and Markdown (retrieval-benchmark and benchmarks/ alike).

``versions`` needs only ``importlib.metadata``, so the index folder's manifest records them without
importing torch (``import retrieval.index`` stays torch-free); the machine description (``header``)
asks torch about its devices and imports ``runtime`` when called.
"""
from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .files import atomic_write_text

# Distributions a result depends on, by their names on PyPI.
PACKAGES = ("torch", "torchvision", "pytorch-metric-learning", "faiss-cpu", "numpy", "pandas")


def versions() -> dict[str, str]:
    """Versions of python, this package and the packages a result depends on (those installed)."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    out["retrieval"] = __version__
    return out


def commit() -> str:
    """Short hash of the checkout the package runs from ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def header() -> dict:
    """Date, machine, commit and versions."""
    from .runtime import machine_info

    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
            "commit": commit(), "versions": versions()}


def machine_line(head: dict) -> str:
    """One line for a table caption: date, CPU (cores, GPU), commit."""
    m = head["machine"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ", no GPU"
    return f"{head['date']}, {m['cpu']} ({m['cores']} cores{gpu}), commit {head['commit']}"


def write_results(out: str | Path, name: str, result: dict, markdown: str) -> None:
    """Write ``name.json`` and ``name.md`` into ``out`` (atomically)."""
    out = Path(out)
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out / f"{name}.md", markdown)
