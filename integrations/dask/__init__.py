"""bayou.dask against a real Dask cluster started from the `dask` CLI."""
