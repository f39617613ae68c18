"""bayou run against real peers (CPython's concurrent.futures tests, joblib, Dask)."""
