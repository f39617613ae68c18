"""CPython's own ProcessPoolExecutor tests, run against bayou's executor (see README.md)."""
