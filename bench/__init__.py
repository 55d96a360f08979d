"""Reproducible benchmarks (not tests): ``python -m bench --help``. Results go to bench/out/results.json."""
