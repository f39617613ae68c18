"""The waiting thread reads its own result (leader/follower), and spinning stays bounded.

`Future.result()` on a task that runs on a worker takes the worker's socket
from the supervisor and reads the RESULT itself; these tests pin down that it
does, that it hands the socket back (timeouts, crashes, a dying worker whose
socket stays open), and that the short polling before sleeping costs no CPU
when nothing comes.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import TimeoutError as FuturesTimeoutError
from concurrent.futures import wait

import psutil
import pytest

from bayou import errors
from bayou.executor import EnvExecutor
from tests.executor_tasks import basic

T = 60


def _settling_thread(fut) -> list[str]:
    names: list[str] = []
    fut.add_done_callback(lambda f: names.append(threading.current_thread().name))
    return names


def test_the_thread_in_result_settles_the_future_itself():
    with EnvExecutor(1) as ex:
        ex.submit(basic.add, 0, 0).result(T)
        fut = ex.submit(basic.sleep_then, 0.3, "a")
        names = _settling_thread(fut)
        assert fut.result(T) == "a"
        assert names == [threading.current_thread().name]


def test_without_a_waiter_in_result_the_supervisor_settles_it():
    with EnvExecutor(1) as ex:
        ex.submit(basic.add, 0, 0).result(T)
        fut = ex.submit(basic.sleep_then, 0.3, "b")
        names = _settling_thread(fut)
        done, _ = wait([fut], timeout=T)
        assert done == {fut}
        assert names == [ex._pool.thread.name]


def test_while_tasks_wait_in_the_queue_the_supervisor_reads_the_answers():
    # beyond the prefetch window (1 worker: 2 handed over), a waiter does not follow
    with EnvExecutor(1) as ex:
        ex.submit(basic.add, 0, 0).result(T)
        futures = [ex.submit(basic.sleep_then, 0.2, i) for i in range(5)]
        names = _settling_thread(futures[0])
        assert futures[0].result(T) == 0
        assert names == [ex._pool.thread.name]
        assert [f.result(T) for f in futures] == list(range(5))
        # the queue drained: the last one is followed again
        last = ex.submit(basic.sleep_then, 0.2, "last")
        names = _settling_thread(last)
        assert last.result(T) == "last"
        assert names == [threading.current_thread().name]


def test_a_result_timeout_gives_the_socket_back_to_the_supervisor():
    with EnvExecutor(1) as ex:
        ex.submit(basic.add, 0, 0).result(T)
        fut = ex.submit(basic.sleep_then, 0.5, "late")
        names = _settling_thread(fut)
        with pytest.raises(FuturesTimeoutError):
            fut.result(0.05)
        done, _ = wait([fut], timeout=T)  # only the supervisor can read it now
        assert done == {fut} and fut.result(0) == "late"
        assert names == [ex._pool.thread.name]
        assert ex.submit(basic.add, 2, 3).result(T) == 5


def test_progress_reaches_the_following_thread():
    with EnvExecutor(1) as ex:
        ex.submit(basic.add, 0, 0).result(T)
        fut = ex.submit(basic.report_steps, 4, 0.15)
        seen: list[tuple[float, str]] = []
        fut.add_progress_callback(
            lambda f, p: seen.append((p.done, threading.current_thread().name))
        )
        assert fut.result(T) == 4
        assert seen, "no progress arrived"
        assert seen[-1][0] == 4
        assert {name for _, name in seen} == {threading.current_thread().name}


def test_a_worker_that_dies_while_followed_fails_only_its_task():
    with EnvExecutor(1) as ex:
        pid = ex.submit(basic.getpid).result(T)
        with pytest.raises(errors.WorkerCrashedError, match="exit code 7"):
            ex.submit(basic.exit_with, 7).result(T)
        assert ex.submit(basic.add, 1, 1).result(T) == 2
        assert ex.submit(basic.getpid).result(T) != pid


def test_a_dead_worker_whose_socket_a_child_keeps_open_is_noticed_at_once():
    # The socket never reaches EOF while the forked child lives (30 s): the
    # follower must learn of the death from the worker's pidfd, and the
    # supervisor then kills the child with the worker's process group.
    with EnvExecutor(1) as ex:
        ex.submit(basic.add, 0, 0).result(T)
        start = time.monotonic()
        with pytest.raises(errors.WorkerCrashedError, match="exit code 5"):
            ex.submit(basic.exit_leaving_a_child, 5, 30).result(T)
        assert time.monotonic() - start < 10
        assert ex.submit(basic.add, 2, 2).result(T) == 4


def test_threads_following_different_workers_get_their_own_results():
    with EnvExecutor(2) as ex:
        errors_seen: list[BaseException] = []

        def run(k: int) -> None:
            try:
                for i in range(300):
                    assert ex.submit(basic.add, k, i).result(T) == k + i
            except BaseException as exc:
                errors_seen.append(exc)

        threads = [threading.Thread(target=run, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T)
        assert not errors_seen
        assert not any(t.is_alive() for t in threads)


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def test_polling_before_sleeping_is_bounded():
    with EnvExecutor(2) as ex:
        for _ in range(200):  # tasks back to back: workers and caller poll between them
            ex.submit(basic.add, 1, 2).result(T)
        workers = list(ex._processes)
        me = [psutil.Process().pid]
        before = _cpu_seconds(me + workers)
        # a caller waiting 1 s on a task, then an idle pool for 1 s
        assert ex.submit(basic.sleep_then, 1.0, "x").result(T) == "x"
        time.sleep(1.0)
        used = _cpu_seconds(me + workers) - before
        assert used < 0.3, f"{used:.3f} s of CPU while waiting and idle for 2 s"


def test_spinning_is_configurable(monkeypatch):
    monkeypatch.setenv("BAYOU_SPIN_US", "0")
    with EnvExecutor(1) as ex:
        assert ex.submit(basic.add, 1, 2).result(T) == 3
        assert ex._pool.spin == 0
    monkeypatch.setenv("BAYOU_SPIN_US", "250")
    with EnvExecutor(1) as ex:
        assert ex._pool.spin == pytest.approx(250e-6)
    monkeypatch.setenv("BAYOU_SPIN_US", "fast")
    with pytest.raises(ValueError, match="BAYOU_SPIN_US"):
        EnvExecutor(1)


def test_held_interrupts_defer_ctrl_c_outside_the_poll_and_stop_the_poll():
    import os
    import signal

    from bayou import interrupts

    held = interrupts.HeldInterrupts()
    held.hold()
    os.kill(os.getpid(), signal.SIGINT)  # mid-bookkeeping: noted, nothing raised
    time.sleep(0.01)
    assert held.caught
    with pytest.raises(KeyboardInterrupt):
        held.release()  # the original handler runs once the state is whole
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    held = interrupts.HeldInterrupts()
    held.hold()
    try:
        held.polling = True
        with pytest.raises(interrupts.Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        held.polling = False
    finally:
        with pytest.raises(KeyboardInterrupt):
            held.release()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_result_stops_the_wait_and_the_pool_still_works():
    import os
    import signal

    with EnvExecutor(1) as ex:
        ex.submit(basic.add, 0, 0).result(T)
        slow = ex.submit(basic.sleep_then, 1.0, "slow")
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            slow.result(T)
        assert time.monotonic() - start < 0.9  # not after the task: at once
        assert slow.result(T) == "slow"  # the supervisor got the socket back
        assert ex.submit(basic.add, 2, 3).result(T) == 5
