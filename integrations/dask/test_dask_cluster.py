"""bayou.dask on a real cluster: `dask scheduler` + two `dask worker`s started from the CLI.

Two envs with conflicting pins (packaging 21.3 and 24.1) are registered with
`EnvPlugin`; one graph mixes tasks in each env and a plain task on the worker.
Each task reports where it ran (sys.prefix, packaging version). Then an env
worker is SIGKILLed mid-task (by the task itself, inside the env) and Dask's
retry reruns it while the dask workers stay up; a task for an env nobody has
fails with `EnvUnavailableError`; a worker that joins later gets both envs.
All processes run with one private BAYOU_HOME: the two workers share a
machine, so each env is built once between them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

import dask  # noqa: E402
from distributed import Client  # noqa: E402

import bayou  # noqa: E402
import bayou.dask  # noqa: E402
from integrations.dask import tasks  # noqa: E402
from integrations.dask.cluster import CliCluster  # noqa: E402
from tests.conftest import cache_root  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OLD = bayou.Env(pip=["packaging==21.3"], name="packaging-old")
NEW = bayou.Env(pip=["packaging==24.1"], name="packaging-new")
WORKERS = ("w1", "w2")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask-cluster")
    pkgs = cache_root() / "pkgs"
    pkgs.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, "BAYOU_HOME": str(root / "bayou-home"), "BAYOU_PKGS_DIR": str(pkgs)}
    with CliCluster(root / "run", environ) as cl:
        address = cl.start_scheduler()
        for name in WORKERS:
            cl.start_worker(name)
        cl.home = Path(environ["BAYOU_HOME"])
        cl.address = address
        yield cl


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.address, timeout=60) as c:
        try:
            c.wait_for_workers(len(WORKERS), timeout=120)
        except Exception:
            pytest.fail(f"workers did not join:\n{cluster.logs()}")
        for env in (OLD, NEW):
            replies = c.register_plugin(bayou.dask.EnvPlugin(env))
            assert all(r["status"] == "OK" for r in replies.values()), (replies, cluster.logs())
        yield c


def env_prefix(cluster, env) -> Path:
    return (cluster.home / "envs" / env.hash).resolve()


def worker_pids(client) -> dict:
    return client.run(os.getpid)


def test_each_env_is_built_once_per_machine_and_advertised(cluster, client):
    status = bayou.dask.status(client)
    workers = client.scheduler_info()["workers"]
    assert len(workers) == len(WORKERS)
    for env in (OLD, NEW):
        states = status[env.name]
        assert sorted(states) == sorted(workers), states
        assert all(s.startswith("ready") for s in states.values()), states
        # Both workers share one store: one built the env, the other found it.
        assert sum(s == "ready (built here)" for s in states.values()) == 1, states
        for info in workers.values():
            assert info["resources"][bayou.dask.resource_name(env.name)] == 1
    assert sorted(p.name for p in (cluster.home / "envs").iterdir()) == sorted(
        [OLD.hash, NEW.hash]
    )


def test_graph_mixes_env_a_env_b_and_plain_tasks(cluster, client):
    with bayou.dask.env(OLD):
        old = dask.delayed(tasks.parse)("2024.1-final-ish")
    with bayou.dask.env(NEW):
        new = dask.delayed(tasks.parse)("2024.1-final-ish")
    result = dask.delayed(tasks.combine)(old, new).compute()

    assert Path(result["old"]["prefix"]).resolve() == env_prefix(cluster, OLD)
    assert result["old"]["packaging"] == "21.3"
    assert result["old"]["parsed"] == "<LegacyVersion('2024.1-final-ish')>"
    assert Path(result["new"]["prefix"]).resolve() == env_prefix(cluster, NEW)
    assert result["new"]["packaging"] == "24.1"
    assert result["new"]["parsed"] == "InvalidVersion"
    # The plain task ran in the dask worker itself, on this repository's venv.
    plain = result["plain"]
    assert Path(plain["prefix"]).resolve() == Path(sys.prefix).resolve()
    assert plain["pid"] in worker_pids(client).values()
    import packaging

    assert plain["packaging"] == packaging.__version__


def test_submit_and_map_with_keyword_arguments(cluster, client):
    fut = client.submit(tasks.probe, "submit", **bayou.dask.env(NEW))
    assert Path(fut.result(timeout=120)["prefix"]).resolve() == env_prefix(cluster, NEW)
    futs = client.map(tasks.probe, ["a", "b", "c"], **bayou.dask.env("packaging-old"))
    for res in client.gather(futs):
        assert res["packaging"] == "21.3"
        assert Path(res["prefix"]).resolve() == env_prefix(cluster, OLD)


def test_env_worker_killed_mid_task_is_retried_and_dask_workers_survive(cluster, client, tmp_path):
    before = worker_pids(client)
    marker = tmp_path / "attempts"
    with bayou.dask.env(OLD, retries=1):
        fut = client.submit(tasks.crash_once, str(marker), pure=False)
    res = fut.result(timeout=300)
    assert res["attempt"] == 2
    assert marker.read_text() == "2"
    assert Path(res["prefix"]).resolve() == env_prefix(cluster, OLD)

    # Without retries the crash is the task's error, a bayou.WorkerCrashedError.
    with bayou.dask.env(NEW):
        doomed = client.submit(tasks.always_crash, pure=False)
    exc = doomed.exception(timeout=300)
    assert isinstance(exc, bayou.WorkerCrashedError), repr(exc)
    assert "SIGKILL" in str(exc) or "-9" in str(exc), str(exc)

    # Same dask worker processes, still serving both envs.
    assert worker_pids(client) == before
    with bayou.dask.env(NEW):
        after = client.submit(tasks.probe, "after-crash", pure=False).result(timeout=120)
    assert after["packaging"] == "24.1"


def test_task_for_an_env_no_worker_has_fails_after_the_timeout(client):
    bayou.dask.watch(client, timeout=2, interval=0.5)
    started = time.monotonic()
    fut = client.submit(tasks.probe, "nowhere", pure=False, **bayou.dask.env("not-registered"))
    exc = fut.exception(timeout=120)
    waited = time.monotonic() - started
    assert isinstance(exc, bayou.dask.EnvUnavailableError), repr(exc)
    assert "'not-registered'" in str(exc) and "register_plugin" in str(exc), str(exc)
    assert "'packaging-old'" in str(exc)  # says what the cluster does offer
    assert waited >= 2


def test_worker_joining_later_gets_both_envs(cluster, client):
    cluster.start_worker("late")
    deadline = time.monotonic() + 300
    late = None
    while time.monotonic() < deadline:
        workers = client.scheduler_info()["workers"]
        late = next((a for a, w in workers.items() if w.get("name") == "late"), None)
        wanted = [bayou.dask.resource_name(e.name) for e in (OLD, NEW)]
        if late and all(workers[late]["resources"].get(r) == 1 for r in wanted):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the late worker never offered both envs:\n{cluster.logs()}")
    for env, version in ((OLD, "21.3"), (NEW, "24.1")):
        res = client.submit(
            tasks.probe, "late", workers=[late], pure=False, **bayou.dask.env(env)
        ).result(timeout=120)
        assert res["packaging"] == version
        assert Path(res["prefix"]).resolve() == env_prefix(cluster, env)
    cluster.stop("late")
