"""Workers that die, hang, overrun or bloat: only their task fails, the pool goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from bayou import errors
from bayou.executor import EnvExecutor
from tests.executor_tasks import basic
from tests.support.processes import is_running

T = 60


@pytest.mark.parametrize(
    "how, expected",
    [("exit", "exit code 3"), ("kill", "SIGKILL"), ("segv", "SIGSEGV")],
)
def test_one_crash_among_twenty_fails_only_that_task(how, expected, tmp_path):
    with EnvExecutor(4, log_dir=tmp_path) as ex:
        fs = [ex.submit(basic.maybe_crash, i, 7, how) for i in range(20)]
        for i, fut in enumerate(fs):
            if i == 7:
                with pytest.raises(errors.WorkerCrashedError, match=expected) as info:
                    fut.result(T)
                assert "maybe_crash" in str(info.value)
                assert info.value.exitcode == {"exit": 3, "kill": -9, "segv": -11}[how]
                assert info.value.pid is not None and info.value.pid not in ex._processes
            else:
                assert fut.result(T) == i * i
        if how == "segv":  # faulthandler's report is in the stderr tail and the log
            assert "Segmentation fault" in str(info.value)
            assert any("Segmentation fault" in line for line in info.value.stderr_tail)
            assert f"Worker log: {tmp_path}" in str(info.value)
        assert ex.submit(basic.add, 20, 1).result(T) == 21
        assert len(ex._processes) <= 4


def test_crash_error_is_a_broken_process_pool():
    from concurrent.futures.process import BrokenProcessPool

    with EnvExecutor(1) as ex, pytest.raises(BrokenProcessPool):
        ex.submit(basic.exit_with, 1).result(T)


def test_gil_holding_task_is_detected_as_hung():
    timeout = 1.0
    with EnvExecutor(1, heartbeat_timeout=timeout) as ex:
        ex.submit(basic.add, 0, 0).result(T)  # worker up
        start = time.monotonic()
        fut = ex.submit(basic.hold_gil, 100)
        with pytest.raises(errors.WorkerHungError, match="heartbeat"):
            fut.result(T)
        elapsed = time.monotonic() - start
        assert elapsed < timeout + 1.0, elapsed
        assert ex.submit(basic.add, 1, 1).result(T) == 2


def test_busy_python_task_is_not_hung():
    # sleeping / pure Python code releases the GIL: heartbeats keep coming
    with EnvExecutor(1, heartbeat_timeout=0.5) as ex:
        assert ex.submit(basic.sleep_then, 1.5, "fine").result(T) == "fine"


def test_task_timeout():
    with EnvExecutor(1, task_timeout=0.5) as ex:
        start = time.monotonic()
        with pytest.raises(errors.TaskTimeoutError, match="task_timeout=0.5"):
            ex.submit(basic.sleep_then, 30).result(T)
        assert time.monotonic() - start < 2.0
        assert ex.submit(basic.add, 1, 1).result(T) == 2


def test_retries_resubmit_after_a_crash(tmp_path):
    with EnvExecutor(1, retries=1) as ex:
        assert ex.submit(basic.flaky, str(tmp_path / "a")).result(T) == "ok"
    with EnvExecutor(1, retries=0) as ex, pytest.raises(errors.WorkerCrashedError, match="code 7"):
        ex.submit(basic.flaky, str(tmp_path / "b")).result(T)
    # a task that always crashes gives up after the retries
    with EnvExecutor(1, retries=2) as ex, pytest.raises(errors.WorkerCrashedError):
        ex.submit(basic.exit_with, 5).result(T)


def test_memory_cap_kills_mid_task():
    cap = 150 * 2**20
    with EnvExecutor(1, max_memory_per_worker=cap) as ex:
        with pytest.raises(errors.MemoryLimitError, match="max_memory_per_worker"):
            ex.submit(basic.allocate, 400 * 2**20, 10).result(T)
        assert ex.submit(basic.add, 1, 1).result(T) == 2


def test_memory_cap_recycles_between_tasks():
    # each task leaves its worker over the cap (a leak): the worker is recycled after
    # the task, which succeeds; a fresh worker is far below the cap
    with EnvExecutor(1) as probe:
        baseline = probe.submit(basic.rss).result(T)
    cap = baseline + 40 * 2**20
    with EnvExecutor(1, max_memory_per_worker=cap) as ex:
        pids = [ex.submit(basic.keep_memory, 80 * 2**20).result(T) for _ in range(3)]
    assert len(set(pids)) == 3


def _run_caller(code: str) -> tuple[subprocess.Popen, list[int]]:
    script = textwrap.dedent(code)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), line
    return proc, [int(p) for p in line.split()[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sleep_then, 60", "hold_gil, 60"])
def test_sigkill_of_caller_leaves_no_worker(task):
    proc, pids = _run_caller(
        f"""
        import time
        from bayou.executor import EnvExecutor
        from tests.executor_tasks import basic
        ex = EnvExecutor(2, heartbeat_timeout=None)
        fs = [ex.submit(basic.{task}) for _ in range(2)]
        while len(ex._processes) < 2 or not all(f.running() for f in fs):
            time.sleep(0.05)
        time.sleep(0.3)
        print("PIDS", *ex._processes, flush=True)
        time.sleep(600)
        """
    )
    assert all(psutil.pid_exists(p) for p in pids)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(is_running(p) for p in pids):
        time.sleep(0.1)
    assert not any(is_running(p) for p in pids)


def test_exit_without_shutdown_finishes_work_and_leaves_nothing():
    proc, pids = _run_caller(
        """
        from bayou.executor import EnvExecutor
        from tests.executor_tasks import basic
        ex = EnvExecutor(2)
        fut = ex.submit(basic.sleep_then, 0.5, "late")
        print("PIDS", *ex._processes, flush=True)
        fut.add_done_callback(lambda f: print("RESULT", f.result(), flush=True))
        """
    )
    out, _ = proc.communicate(timeout=T)
    assert proc.returncode == 0
    assert "RESULT late" in out
    assert not any(is_running(p) for p in pids)


def test_user_subprocesses_die_with_their_worker():
    with EnvExecutor(1) as ex:
        child = ex.submit(_spawn_sleeper).result(T)
        assert psutil.pid_exists(child)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and is_running(child):
        time.sleep(0.05)
    assert not is_running(child)


def _spawn_sleeper():
    return subprocess.Popen(["sleep", "60"]).pid


def _wait_on_worker(ex: EnvExecutor, fut) -> None:
    """Until `fut`'s task runs on a worker (`running()` is True from hand-over on)."""
    deadline = time.monotonic() + T
    while not any(w.item is not None and w.item.future is fut for w in list(ex._pool._workers)):
        assert time.monotonic() < deadline, "the task never reached a worker"
        time.sleep(0.01)


def test_sigterm_to_a_worker_is_a_crash():
    with EnvExecutor(1) as ex:
        fut = ex.submit(basic.sleep_then, 30)
        _wait_on_worker(ex, fut)
        time.sleep(0.2)
        next(iter(ex._processes.values())).terminate()
        with pytest.raises(errors.WorkerCrashedError, match="SIGTERM"):
            fut.result(T)
        assert ex.submit(basic.add, 1, 2).result(T) == 3


def test_workers_that_cannot_start_break_the_pool(tmp_path):
    from concurrent.futures.process import BrokenProcessPool
    from pathlib import Path

    from bayou.environment import Environment

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no python here' >&2\nexit 9\n")
    fake.chmod(0o755)
    vi = sys.version_info
    env = Environment(
        prefix=tmp_path, python=Path(fake), hash="fake", python_version=f"{vi[0]}.{vi[1]}.{vi[2]}"
    )
    with EnvExecutor(1, env=env, log_dir=tmp_path / "logs") as ex:
        with pytest.raises(BrokenProcessPool, match="no python here"):
            ex.submit(basic.add, 1, 2).result(T)
        with pytest.raises(BrokenProcessPool):
            ex.submit(basic.add, 1, 2)


# _check_timers: the loop itself; _complete: while settling a result, when the
# item is already off its worker and in no queue (only the pool's futures set has it)
@pytest.mark.parametrize("method", ["_check_timers", "_complete"])
def test_supervisor_crash_fails_every_future_with_the_cause_and_breaks_the_pool(
    method, monkeypatch, caplog
):
    from concurrent.futures.process import BrokenProcessPool

    ex = EnvExecutor(1)
    try:
        pid = ex.submit(basic.getpid).result(T)
        running = ex.submit(basic.sleep_then, 0.3 if method == "_complete" else 60)
        handed_over = ex.submit(basic.sleep_then, 60)
        queued = [ex.submit(basic.sleep_then, 60) for _ in range(3)]
        _wait_on_worker(ex, running)

        def bug(*args: object) -> float:
            raise AttributeError("'WorkerHandle' object has no attribute 'oops'")

        monkeypatch.setattr(ex._pool, method, bug)
        ex._pool._wake()
        for fut in [running, handed_over, *queued]:
            with pytest.raises(BrokenProcessPool, match="supervisor thread crashed") as info:
                fut.result(T)
            assert "AttributeError: 'WorkerHandle' object has no attribute 'oops'" in str(
                info.value
            )
            assert isinstance(info.value.__cause__, AttributeError)
        ex._pool.thread.join(T)
        assert not ex._pool.thread.is_alive()
        assert not is_running(pid)
        assert ex._processes == {}
        with pytest.raises(BrokenProcessPool, match="supervisor thread crashed"):
            ex.submit(basic.add, 1, 2)
        assert ex._broken
    finally:
        ex.shutdown()  # returns at once: nothing left to wait for
    assert any("supervisor thread crashed" in r.getMessage() for r in caplog.records)


def test_shutdown_cancel_futures_cancels_queued_and_lets_handed_over_tasks_finish():
    ex = EnvExecutor(2)
    ex.submit(basic.add, 0, 0).result(T)
    fs = [ex.submit(basic.sleep_then, 0.2, i) for i in range(20)]
    ex.shutdown(wait=True, cancel_futures=True)
    done = [f for f in fs if not f.cancelled()]
    # at most one task per worker waits handed over ahead of its worker
    assert 1 <= len(done) <= 4
    assert [f.result(0) for f in done] == [fs.index(f) for f in done]
    assert all(f.cancelled() for f in fs[len(done) :])


def test_shutdown_cancel_futures_asks_running_tasks_to_stop_and_kills_the_rest():
    ex = EnvExecutor(2)
    pids = {ex.submit(basic.getpid).result(T) for _ in range(4)}
    cooperative = ex.submit(basic.wait_for_cancel, 60)
    stubborn = ex.submit(basic.sleep_then, 60)
    _wait_on_worker(ex, cooperative)
    _wait_on_worker(ex, stubborn)
    start = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - start < 10
    assert cooperative.result(0) == "stopped"  # ended within the grace: its outcome stands
    assert stubborn.cancelled()
    assert not any(is_running(p) for p in pids)


def test_exit_without_shutdown_prints_worker_output_and_nothing_on_stderr():
    script = textwrap.dedent(
        """
        import atexit
        from bayou.executor import EnvExecutor
        from tests.executor_tasks import basic

        @atexit.register
        def late():
            try:
                ex.submit(basic.add, 1, 2)
            except RuntimeError as exc:
                print("late:", exc)

        ex = EnvExecutor(2)
        ex.submit(basic.sleep_then, 0.5)
        ex.submit(basic.write_raw, "apple\\n")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=T,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [
        "apple",
        "late: cannot schedule new futures after interpreter shutdown",
    ]
