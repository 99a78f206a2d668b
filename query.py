#!/usr/bin/env python
"""Thin entry point; the command lives in retrieval/cli/query.py (also the console script retrieval-query)."""
from retrieval.cli.query import main

if __name__ == "__main__":
    raise SystemExit(main())
