"""EnvPlugin, env() and EnvWatchdog on an in-process Dask cluster with real bayou workers.

The cluster (scheduler and one worker, `LocalCluster(processes=False)`)
lives in the test process; the env is the caller's own interpreter
(`Env.current()`: nothing to build), so a task routed into it runs in a
bayou worker process, whose pid differs from the dask worker's (this
process). Isolation from the dask worker's packages is checked with real
pip envs in integrations/dask/.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import bayou  # noqa: E402
import bayou.dask  # noqa: E402

pytestmark = pytest.mark.timeout(300)

ENV = bayou.Env.current()


def pid_of(_=None) -> int:
    return os.getpid()


def block_pid(block):
    return np.full_like(block, os.getpid())


def crash_first(marker: str) -> int:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=1, processes=False, threads_per_worker=2, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        replies = c.register_plugin(bayou.dask.EnvPlugin(ENV, max_workers=2))
        assert [r["status"] for r in replies.values()] == ["OK"]
        yield c


def env_pids(client) -> set[int]:
    (w,) = client.cluster.workers.values()
    adapter = w.executors["bayou:current"]
    return {p.pid for p in adapter.env_executor._processes.values()}


def test_plugin_registers_executor_and_resource(client):
    (w,) = client.cluster.workers.values()
    assert isinstance(w.executors["bayou:current"], bayou.dask.DaskEnvExecutor)
    assert w.state.total_resources["bayou:current"] == 2
    assert list(bayou.dask.status(client)["current"].values()) == ["ready"]


def test_submit_map_and_delayed_run_in_env_workers(client):
    with bayou.dask.env(ENV):
        in_env = client.submit(pid_of, 1, pure=False).result()
        delayed = dask.delayed(pid_of)(dask.delayed(pid_of)(0)).compute()
    by_kwargs = client.map(pid_of, range(4), pure=False, **bayou.dask.env("current"))
    plain = client.submit(pid_of, 2, pure=False).result()
    assert plain == os.getpid()
    pids = {in_env, delayed, *client.gather(by_kwargs)}
    assert os.getpid() not in pids
    assert pids <= env_pids(client)


def test_map_blocks_runs_each_block_in_the_env(client):
    x = da.zeros(6, chunks=2)
    with bayou.dask.env(ENV):
        y = x.map_blocks(block_pid)
        pids = set(y.compute().astype(int).tolist())
    assert os.getpid() not in pids and pids <= env_pids(client)
    # Outside the block, dask's low-level fusion would drop the routing; with it
    # switched off (as docs/dask.md says) the annotations hold.
    with dask.config.set({"optimization.fuse.active": False}):
        pids = set(y.compute().astype(int).tolist())
    assert os.getpid() not in pids and pids <= env_pids(client)


def test_env_worker_crash_fails_the_task_or_is_retried(client, tmp_path):
    marker = str(tmp_path / "crashed")
    with bayou.dask.env(ENV):
        fut = client.submit(crash_first, marker, pure=False)
    assert isinstance(fut.exception(timeout=60), bayou.WorkerCrashedError)
    os.remove(marker)
    with bayou.dask.env(ENV, retries=1):
        fut = client.submit(crash_first, marker + "2", pure=False)
    assert fut.result(timeout=60) in env_pids(client)


def test_task_for_unknown_env_fails_with_a_clear_error(client):
    bayou.dask.watch(client, timeout=1, interval=0.2)
    with bayou.dask.env("nobody-has-this"):
        fut = client.submit(pid_of, 3, pure=False)
    exc = fut.exception(timeout=60)
    assert isinstance(exc, bayou.dask.EnvUnavailableError)
    assert "'nobody-has-this'" in str(exc) and "'current'" in str(exc)


def test_unregistering_the_plugin_withdraws_the_env(client):
    plugin = bayou.dask.EnvPlugin(ENV, name="temporary")
    client.register_plugin(plugin)
    (w,) = client.cluster.workers.values()
    adapter = w.executors["bayou:temporary"]
    with bayou.dask.env("temporary"):
        assert client.submit(pid_of, 4, pure=False).result() != os.getpid()
    client.unregister_worker_plugin(plugin.name)
    deadline = time.monotonic() + 30
    while w.state.total_resources.get("bayou:temporary") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "bayou:temporary" not in w.executors
    assert w.state.total_resources["bayou:temporary"] == 0
    assert adapter.env_executor._pool._shutdown
