"""Benchmarks run alone or from benchmark.py: each module gives rows (dicts) for one table."""
