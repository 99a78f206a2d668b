#!/usr/bin/env python
"""Thin entry point; the command lives in retrieval/cli/train.py (also the console script retrieval-train)."""
from retrieval.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
