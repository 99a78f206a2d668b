"""The benchmarks package sits beside retrieval/ but is not installed: make it importable from any cwd."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
