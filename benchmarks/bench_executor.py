"""asv benchmarks of `bayou.EnvExecutor`: the figures of compare.py, for bayou only.

Every class is parametrised over the environment its 2 workers run in:

* ``caller``     env=None, the interpreter asv runs the benchmarks with;
* ``numpy-env``  ``bayou.Env(pip=["numpy"])``, a uv venv of the same Python X.Y
                 (functions travel by value). It is provisioned in `setup`; the
                 first setup of a fresh store builds it (needs PyPI, hence the
                 long `timeout`), every later one is a cache hit.

What each figure is (see compare.py's docstring for the method in full):

* ``RoundTrip.time_noop``: one ``submit(noop).result()`` on warm workers.
* ``MapThroughput.time_map_10k_tiny``: ``list(map(tiny, range(10_000),
  chunksize=...))``, "default" passing none (automatic batching); throughput
  in tasks/s is 10 000 / this time.
* ``ArrayIdentity.time_identity``: ``submit(identity, arr).result()`` for a 1 MB
  and a 100 MB float64 array, after one untimed call.
* ``ColdStart.time_cold_start_2_workers``: constructor until both workers have
  each finished a 50 ms task (floor 50 ms); one fresh executor per sample,
  shut down in `teardown`, outside the timing. Here the time is the caller's
  wall clock until it holds both results (compare.py uses the workers' own
  finishing stamps; the two differ by one result delivery).
* ``ActorCall.time_actor_call``: one ``a.noop().result()`` on a warm actor,
  ``a = ex.actor(workloads.Model, args=(3,))`` (a process of its own, besides
  the 2 workers); actors.py sets it against the task round trip and a Dask
  actor.
* ``WorkerMemory.track_*``: mean USS per worker in MiB, the workers being the
  new children of the benchmark process (psutil), idle after warm-up, and
  after a 100 MB round trip.

Run with ``asv run --python=same --quick`` against the working tree (about a
minute; the first ``asv`` on a machine needs ``asv machine --yes``), or
``asv run`` / ``asv continuous`` to build commits in virtualenvs (asv.conf.json).
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

import numpy as np
import psutil

import bayou

from . import workloads

# asv imports this package through a meta-path finder, not sys.path. Workers
# of env=None import the functions' module using the caller's sys.path only
# (as ProcessPoolExecutor's spawn workers do), so put the package's parent there.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

WORKERS = 2
MIB = 2**20
ENVS = ["caller", "numpy-env"]
TASKS = 10_000
SIZES = {"1MB": 1 * MIB, "100MB": 100 * MIB}


def _env(kind: str) -> bayou.Env | None:
    if kind == "caller":
        return None
    env = bayou.Env(pip=["numpy"])
    bayou.provision(env)
    return env


def _start(kind: str) -> tuple[bayou.EnvExecutor, list[int]]:
    """A warm executor: every worker has run a task; returns it and its workers' pids."""
    ex = bayou.EnvExecutor(WORKERS, env=_env(kind))
    pids: set[int] = set()
    for _ in range(20):
        futures = [ex.submit(workloads.sleep_stamp, 0.05) for _ in range(WORKERS)]
        pids |= {f.result()[0] for f in futures}
        if len(pids) == WORKERS:
            break
    for _ in range(50):
        ex.submit(workloads.noop).result()
    return ex, sorted(pids)


def _uss_mib(pids: list[int]) -> float:
    return statistics.fmean(psutil.Process(p).memory_full_info().uss for p in pids) / MIB


class _Warm:
    """A 2-worker executor started and warmed up in `setup`, shut down in `teardown`."""

    params: Any = ENVS
    param_names = ["env"]
    timeout = 300.0
    ex: bayou.EnvExecutor

    def setup(self, env: str, *args: Any) -> None:
        self.ex, self.pids = _start(env)

    def teardown(self, env: str, *args: Any) -> None:
        self.ex.shutdown(wait=True)


class RoundTrip(_Warm):
    def time_noop(self, env: str) -> None:
        self.ex.submit(workloads.noop).result()


class MapThroughput(_Warm):
    params = (ENVS, ["default", 1, 100])
    param_names = ["env", "chunksize"]

    def time_map_10k_tiny(self, env: str, chunksize: int | str) -> None:
        kwargs = {} if chunksize == "default" else {"chunksize": chunksize}
        list(self.ex.map(workloads.tiny, range(TASKS), **kwargs))


class ArrayIdentity(_Warm):
    params = (ENVS, list(SIZES))
    param_names = ["env", "size"]

    def setup(self, env: str, size: str) -> None:
        super().setup(env)
        self.arr = np.random.default_rng(0).random(SIZES[size] // 8)
        self.ex.submit(workloads.identity, self.arr).result()

    def time_identity(self, env: str, size: str) -> None:
        self.ex.submit(workloads.identity, self.arr).result()


class ColdStart:
    params = ENVS
    param_names = ["env"]
    timeout = 300.0
    number = 1  # one fresh executor per sample
    repeat = (3, 10, 20.0)
    warmup_time = 0.0

    def setup(self, env: str) -> None:
        self.env = _env(env)  # provisioned here, so the timing sees a cached env
        self.started: list[bayou.EnvExecutor] = []

    def teardown(self, env: str) -> None:
        for ex in self.started:
            ex.shutdown(wait=True)

    def time_cold_start_2_workers(self, env: str) -> None:
        ex = bayou.EnvExecutor(WORKERS, env=self.env)
        self.started.append(ex)
        pids: set[int] = set()
        while len(pids) < WORKERS:
            futures = [ex.submit(workloads.sleep_stamp, 0.05) for _ in range(WORKERS)]
            pids |= {f.result()[0] for f in futures}


class ActorCall:
    """A warm actor's method call (`EnvExecutor.actor`): RoundTrip's figure for actors."""

    params = ENVS
    param_names = ["env"]
    timeout = 300.0

    def setup(self, env: str) -> None:
        self.ex = bayou.EnvExecutor(WORKERS, env=_env(env))
        self.actor = self.ex.actor(workloads.Model, args=(3,))
        if self.actor.predict(2).result() != 6:
            raise RuntimeError("the actor's predict(2) is not 6")
        for _ in range(50):
            self.actor.noop().result()

    def teardown(self, env: str) -> None:
        self.actor.close()
        self.ex.shutdown(wait=True)

    def time_actor_call(self, env: str) -> None:
        self.actor.noop().result()


class WorkerMemory:
    params = ENVS
    param_names = ["env"]
    timeout = 300.0

    def setup(self, env: str) -> None:
        me = psutil.Process()
        before = {p.pid for p in me.children()}
        self.ex, pids = _start(env)
        self.workers = sorted({p.pid for p in me.children()} - before)
        if self.workers != pids:
            raise RuntimeError(f"new children {self.workers} are not the workers {pids}")

    def teardown(self, env: str) -> None:
        self.ex.shutdown(wait=True)

    def track_idle_worker_uss(self, env: str) -> float:
        return _uss_mib(self.workers)

    track_idle_worker_uss.unit = "MiB"  # type: ignore[attr-defined]

    def track_worker_uss_after_100mb(self, env: str) -> float:
        arr = np.random.default_rng(0).random(100 * MIB // 8)
        self.ex.submit(workloads.identity, arr).result()
        del arr
        return _uss_mib(self.workers)

    track_worker_uss_after_100mb.unit = "MiB"  # type: ignore[attr-defined]
