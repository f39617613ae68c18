"""Two environments with conflicting pins on one Dask cluster, in one graph.

Each worker builds both environments once (`EnvPlugin`); `bayou.dask.env`
sends a task into one of them; a task without it runs on the worker as
usual. packaging 21.3 still parses any string (a LegacyVersion), packaging
24.1 rejects what isn't PEP 440, and the plain task sees the results of both.
Here the cluster is a LocalCluster; with a real one, connect the Client to
its scheduler instead and keep the rest.
"""

import sys

import dask
from distributed import Client, LocalCluster

import bayou
import bayou.dask


def parse(text: str) -> str:
    import packaging
    import packaging.version

    try:
        result = repr(packaging.version.parse(text))
    except packaging.version.InvalidVersion as exc:
        result = f"InvalidVersion: {exc}"
    return f"packaging {packaging.__version__}: {result}"


def report(old: str, new: str) -> str:
    return f"{old}\n{new}\nthe plain task ran in {sys.prefix}"


if __name__ == "__main__":
    old = bayou.Env(pip=["packaging==21.3"], name="packaging-old")
    new = bayou.Env(pip=["packaging==24.1"], name="packaging-new")

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        for env in (old, new):
            client.register_plugin(bayou.dask.EnvPlugin(env))

        with bayou.dask.env(old):
            a = dask.delayed(parse)("2024.1-final-ish")
        with bayou.dask.env(new):
            b = dask.delayed(parse)("2024.1-final-ish")
        print(dask.delayed(report)(a, b).compute())

        # The same with futures, and with keyword arguments instead of a block:
        future = client.submit(parse, "1.0", **bayou.dask.env(new))
        print(future.result())
