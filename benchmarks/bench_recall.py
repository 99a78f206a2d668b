"""Recall@K / MAP@R of a checkpoint on a data set's protocol, beside the CGD paper's published numbers.

The command lives in the package so it is also the console script ``retrieval-benchmark``:

    python -m benchmarks.bench_recall --checkpoint runs/cub200/best.pt --config configs/cub200.yaml --out runs/bench
"""
from retrieval.cli.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
