"""Benchmarks: long runs and speed ratios (never part of the timed test suite)."""
