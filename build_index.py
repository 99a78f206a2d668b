#!/usr/bin/env python
"""Thin entry point; the command lives in retrieval/cli/build_index.py (also the console script retrieval-build-index)."""
from retrieval.cli.build_index import main

if __name__ == "__main__":
    raise SystemExit(main())
