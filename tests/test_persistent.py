"""Persistent pools: started by one process, attached to by another, stopped from the CLI.

Everything here is real: the pool host is a detached process, clients are
separate interpreters, `bayou workers` is the console command.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection
from pathlib import Path

import psutil
import pytest

import bayou
import bayou._version
from bayou.persistent import PoolNotFoundError, PoolVersionError, registry

BAYOU = [sys.executable, "-m", "bayou.cli"]
REPO = Path(__file__).resolve().parent.parent
T = 120


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BAYOU, *args], capture_output=True, text=True, timeout=T)


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (the store comes from BAYOU_HOME)."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def gone(pid: int, create_time: float | None = None, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not registry.process_matches(pid, create_time):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_pool_started_by_one_process_is_used_by_another_then_stopped_from_the_cli(pools, tmp_path):
    starter = python(
        """
        import json, sys, bayou
        env = bayou.Env(pip=["packaging==21.3"])
        ex = bayou.EnvExecutor(2, env=env, persistent=True, name="seg")
        prefix = ex.submit(lambda: sys.prefix).result(120)
        print(json.dumps({"host": ex.host_pid, "prefix": prefix, "env": ex.environment.hash,
                          "env_prefix": str(ex.environment.prefix)}))
        ex.shutdown()   # detaches: the pool stays
        """,
        tmp_path,
    )
    started = json.loads(starter.stdout.splitlines()[-1])
    assert started["prefix"] == started["env_prefix"] != sys.prefix

    # the starter has exited; the host and its workers have not
    entry = registry.find(pools, "seg")
    assert entry.host_pid == started["host"] and entry.is_alive()
    assert entry.data["env_hash"] == started["env"]
    assert len(entry.worker_pids) == 2
    host = psutil.Process(entry.host_pid)
    assert {c.pid for c in host.children()} >= set(entry.worker_pids)

    # private files: 0700 directories, 0600 key, entry and socket
    state = pools.root / "state"
    for directory in (state, state / "pools", entry.directory):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for name in (registry.KEY, registry.ENTRY):
        assert stat.S_IMODE((entry.directory / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(entry.socket).st_mode) == 0o600
    key = (entry.directory / registry.KEY).read_bytes()
    assert len(key) == 32
    assert (
        key.hex() not in " ".join(host.cmdline()) and key not in " ".join(host.cmdline()).encode()
    )

    # a second process attaches, runs tasks in the env (module functions by reference too)
    module = tmp_path / "attached_tasks.py"
    module.write_text("import sys\ndef where(x):\n    return sys.prefix, x * 2\n")
    second = python(
        """
        import json, os, sys, bayou
        import attached_tasks
        ex = bayou.attach("seg")
        assert isinstance(ex, bayou.EnvExecutor)
        print(json.dumps({
            "where": ex.submit(attached_tasks.where, 21).result(120),
            "map": list(ex.map(attached_tasks.where, range(5), chunksize=2)),
            "pids": sorted(set(ex.map(lambda _: os.getpid(), range(20)))),
            "packaging": ex.submit(lambda: __import__("packaging").__version__).result(120),
            "served": ex.info()["tasks_served"],
        }))
        ex.shutdown()
        """,
        tmp_path,
    )
    out = json.loads(second.stdout.splitlines()[-1])
    assert out["where"] == [started["env_prefix"], 42]
    assert [x for _, x in out["map"]] == [0, 2, 4, 6, 8]
    assert set(out["pids"]) <= set(entry.worker_pids)
    assert out["packaging"] == "21.3"
    # tasks, not calls (map may batch): the second process's calls were counted
    assert out["served"] >= entry.data["tasks_served"] + 4

    deadline = time.monotonic() + 30  # the host refreshes its entry every second
    while True:
        listing = cli("workers", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        (row,) = [r for r in json.loads(listing.stdout) if r["name"] == "seg"]
        if row["tasks_served"] >= out["served"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row["host_pid"] == entry.host_pid and row["tasks_served"] >= out["served"]
    assert row["worker_pids"] == entry.worker_pids
    table = cli("workers", "list").stdout
    assert "seg" in table and str(entry.host_pid) in table

    stopped = cli("workers", "stop", "seg")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped seg" in stopped.stdout
    assert gone(entry.host_pid, entry.data["host_create_time"])
    for pid in entry.worker_pids:
        assert gone(pid), f"worker {pid} outlived its pool"
    assert not entry.directory.exists()
    with pytest.raises(PoolNotFoundError, match="no persistent pool named 'seg'"):
        bayou.attach("seg")
    assert cli("workers", "stop", "seg").returncode == 3

    manager_log = (pools.logs_dir / "pools" / "seg" / "manager.log").read_text()
    assert "attached" in manager_log and "stopped after" in manager_log
    assert key.hex() not in manager_log


def test_a_killed_host_is_not_attachable_and_is_pruned(pools):
    ex = bayou.EnvExecutor(1, persistent=True, name="doomed")
    assert ex.submit(abs, -3).result(T) == 3
    entry = registry.find(pools, "doomed")
    workers = entry.worker_pids
    ex.shutdown()

    os.kill(entry.host_pid, signal.SIGKILL)
    assert gone(entry.host_pid, entry.data["host_create_time"])
    for pid in workers:
        assert gone(pid), "a worker outlived its killed host"
    assert entry.directory.exists()  # nobody cleaned up: the entry is stale

    with pytest.raises(PoolNotFoundError, match="its host had died; the entry was pruned"):
        bayou.attach("doomed")
    assert not entry.directory.exists()
    assert "doomed" not in cli("workers", "list").stdout


def test_a_dead_entry_is_pruned_by_listing(pools):
    ex = bayou.EnvExecutor(1, persistent=True, name="listed")
    entry = registry.find(pools, "listed")
    ex.shutdown()
    os.kill(entry.host_pid, signal.SIGKILL)
    assert gone(entry.host_pid, entry.data["host_create_time"])
    assert [e.name for e in bayou.persistent.list_pools(pools)] == []
    assert not entry.directory.exists()


def test_relay_keeps_the_executor_semantics(pools, tmp_path):
    from tests.executor_tasks import basic

    with bayou.EnvExecutor(2, persistent=True, name="relay") as ex:
        # a remote exception comes back as its own type, remote traceback as cause
        with pytest.raises(ZeroDivisionError) as info:
            ex.submit(divmod, 1, 0).result(T)
        assert "Traceback" in str(info.value.__cause__)
        # a worker that dies fails only its task; the pool stays usable
        with pytest.raises(bayou.WorkerCrashedError, match="exit code 7"):
            ex.submit(basic.exit_with, 7).result(T)
        assert ex.submit(basic.add, 2, 3).result(T) == 5
        # progress and cancellation of a running task travel through the host
        seen = []
        fut = ex.submit(_progress_then_wait)
        fut.add_progress_callback(lambda f, p: seen.append(p.done))
        deadline = time.monotonic() + T
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen and fut.running()
        assert bayou.cancel(fut, grace=0.5)
        with pytest.raises(Exception) as cancelled:
            fut.result(T)
        assert fut.cancelled(), cancelled.value
        # unpicklable arguments fail the future at once, naming the culprit
        bad = ex.submit(basic.echo, lambda: None, threading.Lock())
        with pytest.raises(bayou.PicklingError, match="argument 1"):
            bad.result(T)
        assert ex.submit(basic.add, 1, 1).result(T) == 2


def test_map_chunksize_1_relays_its_calls_in_bursts(pools):
    """map(chunksize=1) sends its calls to the host 256 to a message (`submit_many`);
    each is still one task with its own outcome."""
    from bayou import batching
    from tests.executor_tasks import basic, transport

    n = 2 * batching.EACH_BURST + 9
    with bayou.EnvExecutor(2, persistent=True, name="bursts") as ex:
        served = ex._pool.info()["tasks_served"]
        assert list(ex.map(basic.add, range(n), range(n), chunksize=1, timeout=T)) == [
            2 * i for i in range(n)
        ]
        assert ex._pool.info()["tasks_served"] - served == n  # one task per call
        # the first exception comes after the results before it, as in a local pool
        got = []
        with pytest.raises(KeyError):
            for value in ex.map(transport.maybe_fail, range(n), chunksize=1, timeout=T):
                got.append(value)
        assert got == [2 * x for x in range(57)]
        # an argument that cannot be pickled fails its own call, in the caller
        args: list = list(range(n))
        args[300] = threading.Lock()
        results = ex.map(basic.echo, args, chunksize=1, timeout=T)
        assert [next(results) for _ in range(300)] == [((i,), {}) for i in range(300)]
        with pytest.raises(bayou.PicklingError, match="argument 0"):
            next(results)
        assert ex.submit(basic.add, 1, 1).result(T) == 2


def _worker_pids(ex) -> set:
    from tests.executor_tasks import basic

    seen: set = set()
    deadline = time.monotonic() + T
    while len(seen) < 2 and time.monotonic() < deadline:
        futs = [ex.submit(basic.pid_and_env, "HOME", 0.05) for _ in range(4)]
        seen |= {f.result(T)[0] for f in futs}
    return seen


def test_cancelling_a_task_whose_running_message_is_on_the_way_kills_no_worker(pools):
    """A future PENDING here may already run at the host (its "running" not read
    yet, as when map's iterator cancels the rest on `break`): the host gives it a
    grace instead of killing its worker (`remote._local_done`)."""
    from tests.executor_tasks import basic

    with bayou.EnvExecutor(2, persistent=True, name="lag") as ex:
        before = _worker_pids(ex)
        futs = [ex.submit(basic.sleep_then, 0.5, i) for i in range(6)]
        assert futs[3].running() and not futs[4].running()  # the window: 2 x 2
        # Hold the connection (a reader thread that lags) while the host runs the
        # first four and hands the fifth to a worker (at about 1.0 s), then cancel it.
        with ex._pool._read_lock:
            time.sleep(1.2)
            assert futs[4].cancel()  # PENDING here: cancelled, the host is told
        assert [f.result(T) for f in futs[:4] + futs[5:]] == [0, 1, 2, 3, 5]
        time.sleep(1.5)  # a kill at once would have replaced that worker by now
        assert _worker_pids(ex) == before


def test_worker_env_of_a_persistent_pool_may_be_a_closure(pools):
    """worker_env is called in the caller for each slot (`client.SlotTable`): a
    closure works, and the host runs no user code."""
    from tests.executor_tasks import basic

    prefix = "slot-"
    with bayou.EnvExecutor(
        2,
        persistent=True,
        name="slots",
        worker_env=lambda slot: {"BAYOU_TEST_SLOT": prefix + str(slot)},
    ) as ex:
        seen: dict = {}
        deadline = time.monotonic() + T
        while len(seen) < 2 and time.monotonic() < deadline:
            futs = [ex.submit(basic.pid_and_env, "BAYOU_TEST_SLOT", 0.05) for _ in range(4)]
            seen.update({slot: pid for pid, slot in (f.result(T) for f in futs)})
        assert set(seen) == {"slot-0", "slot-1"}


def test_a_failing_worker_env_stops_a_persistent_pool_from_starting_naming_the_slot(pools):
    def bad(slot):
        if slot == 1:
            raise KeyError("no GPU for slot 1")
        return {"N": "0"}

    # the host starts its workers before it says ready: the constructor raises
    with pytest.raises(BrokenProcessPool) as info:
        bayou.EnvExecutor(2, persistent=True, name="badslot", worker_env=bad)
    assert "did not start: BrokenProcessPool: worker_env(1) failed: KeyError" in str(info.value)
    assert "no GPU for slot 1" in str(info.value)
    assert not registry.entries(pools)  # nothing left running


def _progress_then_wait():
    import bayou as in_worker

    for i in range(600):
        in_worker.report_progress(i + 1, 600)
        if in_worker.cancel_requested():
            return "stopped early"
        time.sleep(0.05)
    return "ran to the end"


def test_stopping_fails_the_futures_of_attached_clients(pools):
    from tests.executor_tasks import basic

    ex = bayou.EnvExecutor(1, persistent=True, name="stopme")
    running = ex.submit(basic.sleep_then, 60)
    queued = ex.submit(basic.sleep_then, 60)
    bayou.persistent.stop("stopme", timeout=10)
    for fut in (running, queued):
        with pytest.raises(Exception) as info:
            fut.result(T)
        assert fut.cancelled() or "was stopped" in str(info.value)
    with pytest.raises(BrokenProcessPool, match="was stopped"):
        ex.submit(basic.add, 1, 2)


def test_version_mismatch_is_refused_with_the_fix(pools, monkeypatch):
    ex = bayou.EnvExecutor(1, persistent=True, name="old")
    ex.shutdown()
    host_version = registry.versions()["bayou"]
    monkeypatch.setattr(bayou._version, "__version__", "0.0.1-other")
    with pytest.raises(PoolVersionError) as info:
        bayou.attach("old")
    message = str(info.value)
    assert f"runs bayou {host_version}" in message and "has bayou 0.0.1-other" in message
    assert "`bayou workers stop old`" in message
    # the host checks too (a client that skipped the entry's versions)
    monkeypatch.setattr(bayou._version, "__version__", host_version)
    entry = registry.find(pools, "old")
    conn = connection.Client(
        entry.socket, family="AF_UNIX", authkey=registry.read_key(entry.directory)
    )
    conn.send(("hello", {**registry.versions(), "cloudpickle": "1.0", "pid": os.getpid()}))
    kind, text = conn.recv()
    assert kind == "refused" and "cloudpickle 1.0" in text and "bayou workers stop old" in text
    # a wrong key is rejected before anything else
    with pytest.raises(connection.AuthenticationError):
        connection.Client(entry.socket, family="AF_UNIX", authkey=b"x" * 32)
    # and the pool still serves the right version
    with bayou.attach("old") as again:
        assert again.submit(abs, -1).result(T) == 1


def test_names_and_conflicting_envs(pools):
    import dataclasses

    with pytest.raises(ValueError, match="persistent=True needs name="):
        bayou.EnvExecutor(1, persistent=True)
    with pytest.raises(ValueError, match="invalid persistent pool name"):
        bayou.EnvExecutor(1, persistent=True, name="../escape")
    with pytest.raises(PoolNotFoundError, match="Start one with"):
        bayou.attach("nothing-here")
    first = bayou.EnvExecutor(1, persistent=True, name="shared")
    # the same name and env: the running pool is reused
    second = bayou.EnvExecutor(1, persistent=True, name="shared")
    assert second.host_pid == first.host_pid
    other = dataclasses.replace(first.environment, hash="0123456789abcdef")
    with pytest.raises(ValueError, match="already running another environment"):
        bayou.EnvExecutor(1, env=other, persistent=True, name="shared")
    first.shutdown()
    second.shutdown()


def test_a_pool_that_cannot_start_says_why_and_leaves_nothing(pools):
    with pytest.raises(BrokenProcessPool, match="did not start.*initializer") as info:
        bayou.EnvExecutor(1, persistent=True, name="broken", initializer=int, initargs=("x",))
    assert "bayou logs broken" in str(info.value)
    assert not (pools.root / "state" / "pools" / "broken").exists()
    assert registry.entries(pools) == []


def test_numpy_arrays_big_enough_for_out_of_band_buffers_cross_a_persistent_pool(pools):
    """The client's big buffers reach the host as bytes, which it puts in shared memory
    for its workers; an array of 1 MB failed there with "'bytes' object has no attribute
    'nbytes'"."""
    import numpy as np

    with bayou.EnvExecutor(1, persistent=True, name="arrays") as ex:
        for size in (1 << 10, 1 << 17, 3 << 20):  # inline, over the threshold, big
            array = np.arange(size, dtype=np.float64)
            back = ex.submit(np.negative, array).result(T)
            np.testing.assert_array_equal(back, -array)
        matrix = np.asfortranarray(np.ones((600, 700), dtype=np.int32))
        assert ex.submit(np.sum, matrix).result(T) == 600 * 700
