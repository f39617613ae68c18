"""Benchmarks: asv suites (bench_executor.py) and side-by-side scripts (compare.py).

A package so that asv imports the suites as ``benchmarks.*`` and so that the
functions in ``benchmarks.workloads`` are importable in worker processes.
"""
