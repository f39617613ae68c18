"""A process forked from one that used the joblib backend gets executors of its own.

The backend caches its `EnvExecutor`s per process (`bayou.joblib._slots`). A
forked child (a worker of joblib's ``"multiprocessing"`` backend, an
`os.fork`) inherits copies of them without their supervisor threads; before
`bayou.joblib._after_fork_in_child` its `Parallel(backend="bayou")` submitted
to such a copy and waited for ever; and a child forked while a lock of the
backend or of a cached pool was held (by another thread of the parent) waited
for it for ever, in `Parallel` or at exit. Each scenario runs in a fresh
interpreter of its own, in a process group killed if it hangs, and prints its
findings as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120


# -- run in the scenario processes (imported by name by the forked children) ----------------


def square(i: int) -> int:
    return i * i


def nested_bayou(_: int) -> dict:
    """In a forked worker of joblib's multiprocessing backend: a bayou Parallel of its own."""
    from joblib import Parallel, delayed

    squares = Parallel(n_jobs=2, backend="bayou")(delayed(square)(j) for j in range(3))
    workers = Parallel(n_jobs=2, backend="bayou")(delayed(os.getpid)() for _ in range(4))
    return {"pid": os.getpid(), "squares": squares, "workers": sorted(set(workers))}


# -- the harness ------------------------------------------------------------------------------


def run_scenario(body: str) -> dict:
    """Run `body` in a new interpreter (repository on its path); the JSON it prints last."""
    script = "import json, os, sys\n" + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a hang is killed whole
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the scenario hung for {TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return json.loads(out.strip().splitlines()[-1])


# -- the tests --------------------------------------------------------------------------------


def test_joblib_bayou_in_forked_multiprocessing_workers_after_the_parent_used_it():
    found = run_scenario(
        """
        from joblib import Parallel, delayed
        import bayou.joblib
        from tests.test_fork_safety import nested_bayou, square

        first = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(4))
        parent_workers = Parallel(n_jobs=2, backend="bayou")(
            delayed(os.getpid)() for _ in range(8)
        )
        nested = Parallel(n_jobs=2, backend="multiprocessing")(
            delayed(nested_bayou)(i) for i in range(2)
        )
        after = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(4))
        after_workers = Parallel(n_jobs=2, backend="bayou")(
            delayed(os.getpid)() for _ in range(8)
        )
        cached = [slot.executor for slot in bayou.joblib._slots]
        print(json.dumps({
            "pid": os.getpid(),
            "first": first,
            "nested": nested,
            "after": after,
            "parent_workers": sorted(set(parent_workers)),
            "after_workers": sorted(set(after_workers)),
            "parent_pool_pids": sorted(pid for ex in cached for pid in ex._processes),
        }))
        """
    )
    assert found["first"] == found["after"] == [0, 1, 4, 9]
    assert [n["squares"] for n in found["nested"]] == [[0, 1, 4], [0, 1, 4]]
    parent_workers = set(found["parent_workers"])
    for child in found["nested"]:
        assert child["pid"] != found["pid"]
        # the child started workers of its own, and never used its parent's
        assert child["workers"] and not set(child["workers"]) & parent_workers
    # the parent's workers were neither used, shut down nor replaced by the children
    assert set(found["after_workers"]) <= parent_workers
    assert parent_workers <= set(found["parent_pool_pids"])


def test_forked_child_uses_the_joblib_backend_while_a_parent_thread_held_its_lock():
    # A thread of the parent inside `configure` (building an environment can take
    # minutes) holds the backend's lock: a child forked then must not wait for it.
    found = run_scenario(
        """
        import threading
        from joblib import Parallel, delayed
        import bayou.joblib
        from tests.test_fork_safety import square

        first = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(3))
        held, release = threading.Event(), threading.Event()

        def hold():
            with bayou.joblib._slots_lock:
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read)
            try:
                got = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(5))
                os.write(write, json.dumps(got).encode())
            finally:
                os._exit(0)
        os.close(write)
        release.set()
        holder.join()
        with os.fdopen(read) as pipe:
            child_result = json.loads(pipe.read() or "null")
        os.waitpid(child, 0)
        again = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(3))
        print(json.dumps({"first": first, "child": child_result, "again": again}))
        """
    )
    assert found == {"first": [0, 1, 4], "child": [0, 1, 4, 9, 16], "again": [0, 1, 4]}


def test_forked_child_exits_normally_while_a_parent_thread_held_a_cached_pool():
    # bayou's supervisor thread takes its pool's lock all the time; a child forked
    # meanwhile must not wait for that lock when it exits (bayou shuts its pools
    # down at interpreter exit, and the parent's are not the child's to shut down).
    found = run_scenario(
        """
        import threading, time
        from joblib import Parallel, delayed
        import bayou.joblib
        from tests.test_fork_safety import square

        first = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(3))
        pool = bayou.joblib._slots[0].executor._pool
        held, release = threading.Event(), threading.Event()

        def hold():
            with pool._lock:
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        child = os.fork()
        if child == 0:
            got = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(4))
            sys.exit(0 if got == [0, 1, 4, 9] else 3)  # an ordinary exit, atexit and all
        release.set()
        holder.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(child, 9)
            os.waitpid(child, 0)
            status = None
        again = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(3))
        print(json.dumps({
            "child_exit": None if status is None else os.waitstatus_to_exitcode(status),
            "first": first,
            "again": again,
        }))
        """
    )
    assert found == {"child_exit": 0, "first": [0, 1, 4], "again": [0, 1, 4]}


def test_a_forked_child_refuses_its_parents_executor_and_makes_its_own():
    found = run_scenario(
        """
        import bayou
        from tests.test_fork_safety import square

        ex = bayou.EnvExecutor(1)
        parent_worker = ex.submit(os.getpid).result(60)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                ex.submit(square, 3)
                refused = None
            except RuntimeError as exc:
                refused = str(exc)
            with bayou.EnvExecutor(1) as own:
                mine = own.submit(os.getpid).result(60), own.submit(square, 4).result(60)
            os.write(write, json.dumps({"refused": refused, "mine": mine}).encode())
            sys.exit(0)  # a normal exit: atexit hooks and finalizers run, and must not hang
        os.close(write)
        seen = json.loads(os.read(read, 65536))
        _, status = os.waitpid(child, 0)
        seen.update(
            status=status,
            parent_worker=parent_worker,
            after=ex.submit(os.getpid).result(60),
            square=ex.submit(square, 5).result(60),
        )
        ex.shutdown()
        print(json.dumps(seen))
        """
    )
    assert found["status"] == 0
    assert "Create an EnvExecutor in the child" in found["refused"]
    assert found["mine"][1] == 16 and found["mine"][0] != found["parent_worker"]
    # the parent's pool is untouched: same worker, still answering
    assert found["after"] == found["parent_worker"] and found["square"] == 25
