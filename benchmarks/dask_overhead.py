"""Per-task overhead of bayou.dask's env route against plain Dask tasks, on one cluster.

One process starts a `LocalCluster` (one worker process with its nanny, one
thread: tasks run one at a time on both routes, so the comparison is of
cost, not of parallelism), registers `EnvPlugin(Env(pip=["packaging==24.1"]),
max_workers=1)` (a uv venv of the caller's Python X.Y, built before anything
is timed), then, interleaved over `--repeats` rounds:

Three routes: ``plain`` (no restriction), ``plain+res`` (a plain task that
requires a worker resource, ``{"slot": 1}``, exactly like an env task does)
and ``env``. Resource-restricted tasks skip the scheduler's queuing of root
tasks (``worker-saturation``), which changes throughput by itself; so the
env route's own cost is ``env`` minus ``plain+res``, reported as overhead.
Figures, per route:

* round trip: ``client.submit(noop, i).result()`` one after another, plain
  and with ``**bayou.dask.env(env)``; median and 90th percentile, ms.
* throughput: ``client.gather(client.map(noop, range(N)))``, all N in
  flight; tasks per second, and the time per task (1 / throughput).

Every task
returns its process id; the env route is checked to have run outside the
dask worker, the plain route inside it, so a misrouted run cannot pass as
a fast one.

    .venv/bin/python benchmarks/dask_overhead.py            # ~1 minute
    .venv/bin/python benchmarks/dask_overhead.py --quick    # CI smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from distributed import Client, LocalCluster

import bayou
import bayou.dask


def noop(i: int) -> int:
    return os.getpid()


def round_trips(client: Client, n: int, route: dict) -> tuple[list[float], set[int]]:
    times, pids = [], set()
    for i in range(n):
        t0 = time.perf_counter()
        pids.add(client.submit(noop, i, pure=False, **route).result())
        times.append(time.perf_counter() - t0)
    return times, pids


def throughput(client: Client, n: int, route: dict) -> tuple[float, set[int]]:
    t0 = time.perf_counter()
    pids = set(client.gather(client.map(noop, range(n), pure=False, **route)))
    return n / (time.perf_counter() - t0), pids


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few tasks (CI smoke)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    calls, tasks = (30, 100) if args.quick else (300, 1000)
    repeats = args.repeats or (2 if args.quick else 5)

    env = bayou.Env(pip=["packaging==24.1"], name="bench")
    t0 = time.perf_counter()
    bayou.provision(env)
    print(f"env provisioned (or found) in {time.perf_counter() - t0:.1f} s")

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            resources={"slot": 1},
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(bayou.dask.EnvPlugin(env, max_workers=1))
        (worker_pid,) = client.run(os.getpid).values()
        routes = {
            "plain": {},
            "plain+res": {"resources": {"slot": 1}},
            "env": dict(bayou.dask.env(env)),
        }
        for route in routes.values():  # warm-up: env worker started, functions cached
            round_trips(client, 5, route)
        rt: dict[str, list[float]] = {name: [] for name in routes}
        tp: dict[str, list[float]] = {name: [] for name in routes}
        for _ in range(repeats):
            for name, route in routes.items():
                times, pids = round_trips(client, calls, route)
                rate, more = throughput(client, tasks, route)
                pids |= more
                inside = pids == {worker_pid}
                if inside != (name != "env"):
                    print(f"FAILED: {name} tasks ran in {pids}, dask worker is {worker_pid}")
                    return 1
                rt[name].extend(times)
                tp[name].append(rate)

    print(f"\n{calls} sequential round trips x {repeats}, {tasks} tasks in flight x {repeats}")
    print(f"{'':28}{'plain':>10}{'plain+res':>10}{'env':>10}{'overhead':>10}")
    rows = [
        ("round trip median (ms)", {k: statistics.median(v) * 1e3 for k, v in rt.items()}),
        ("round trip p90 (ms)", {k: p90(v) * 1e3 for k, v in rt.items()}),
        ("throughput (tasks/s)", {k: statistics.median(v) for k, v in tp.items()}),
        ("time per task (ms)", {k: 1e3 / statistics.median(v) for k, v in tp.items()}),
    ]
    for label, row in rows:
        diff = "" if "tasks/s" in label else f"{row['env'] - row['plain+res']:+10.2f}"
        print(f"{label:28}{row['plain']:10.2f}{row['plain+res']:10.2f}{row['env']:10.2f}{diff}")
    print("overhead = env - plain+res (same scheduling path; see the module docstring)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
