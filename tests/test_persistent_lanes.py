"""Direct lanes: a persistent pool's client that calls back to back borrows a worker.

Real pools throughout: a detached host, its workers, clients in this process
or in a subprocess. Each test first makes the client take a lane (quick calls
back to back) and checks that it holds one, then does what users do on it:
crash, run long, get cancelled, report progress, return big arrays, overlap
calls, go away holding it.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import bayou
from bayou.persistent.lanes import LANE_LABEL
from tests.executor_tasks import basic

REPO = Path(__file__).resolve().parent.parent
T = 120


def take_lane(ex, within: float = 20.0) -> None:
    """Quick calls back to back until the client holds a lane (the host may say "not
    now" while a task waits for a worker, e.g. one starting after a crash)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert ex.submit(basic.add, 1, 2).result(T) == 3
        if ex._pool.lanes.lane is not None:
            return
    raise AssertionError(f"no lane after {within} s of back-to-back calls: {ex.info()}")


def holds_lane(ex) -> bool:
    return ex._pool.lanes.lane is not None


def test_back_to_back_calls_take_a_lane_and_the_host_counts_every_call(pools):
    ex = bayou.EnvExecutor(2, persistent=True, name="lane-count")
    take_lane(ex)
    before = ex._pool.lanes.lane.calls
    values = [ex.submit(basic.add, i, 1).result(T) for i in range(300)]
    assert values == [i + 1 for i in range(300)]
    assert holds_lane(ex) and ex._pool.lanes.lane.calls == before + 300
    lanes = ex.info()["lanes"]
    assert lanes >= 1
    ex.shutdown()  # gives the lane back, with the number of calls it carried

    with bayou.persistent.attach("lane-count") as again:
        info = again.info()
        assert info["tasks_served"] >= 300 + before  # every call, on the lane or not
        assert len(info["worker_pids"]) == 2  # none was killed for being lent
        pids = set(again.map(basic.pid_and_env, ["X"] * 6, [0.2] * 6))
        assert len(pids) == 2  # the lent worker was given back: both work again


def test_overlapping_calls_give_the_lane_back_and_use_every_worker(pools):
    with bayou.EnvExecutor(2, persistent=True, name="lane-overlap") as ex:
        take_lane(ex)
        futures = [ex.submit(basic.pid_and_env, "X", 0.3) for _ in range(4)]
        pids = {f.result(T)[0] for f in futures}
        assert len(pids) == 2, pids
        assert not holds_lane(ex)
        burst = list(ex.map(basic.add, range(100), range(100), chunksize=1))
        assert burst == [2 * i for i in range(100)]
        take_lane(ex)  # sequential again: a lane again


def test_a_worker_that_dies_on_the_lane_fails_its_call_under_its_own_name(pools):
    with bayou.EnvExecutor(2, persistent=True, name="lane-crash") as ex:
        pids = set(ex.info()["worker_pids"])
        take_lane(ex)
        with pytest.raises(bayou.WorkerCrashedError) as caught:
            ex.submit(basic.exit_with, 3).result(T)
        text = str(caught.value)
        assert "exit_with" in text and LANE_LABEL not in text, text
        assert caught.value.exitcode == 3
        # the pool goes on: a new worker replaces the dead one, calls work, lanes too
        assert [ex.submit(basic.add, i, i).result(T) for i in range(20)] == [
            2 * i for i in range(20)
        ]
        take_lane(ex)
        assert set(ex.info()["worker_pids"]) != pids

        # killed from outside, while its socket stays open in a child it forked:
        # the host's pidfd tells, not the end of the stream
        with pytest.raises(bayou.WorkerCrashedError, match="exit_leaving_a_child"):
            ex.submit(basic.exit_leaving_a_child, 5, 3.0).result(T)
        assert ex.submit(basic.add, 2, 2).result(T) == 4


def test_a_call_that_runs_long_is_handed_to_the_host_and_task_timeout_applies(pools):
    with bayou.EnvExecutor(2, persistent=True, name="lane-long", task_timeout=1.0) as ex:
        take_lane(ex)
        assert ex.submit(basic.sleep_then, 0.3, "slept").result(T) == "slept"
        take_lane(ex)
        start = time.monotonic()
        with pytest.raises(bayou.TaskTimeoutError, match="sleep_then"):
            ex.submit(basic.sleep_then, 60).result(T)
        assert time.monotonic() - start < 30
        assert ex.submit(basic.add, 1, 1).result(T) == 2


def test_cancel_stops_a_call_on_the_lane(pools):
    with bayou.EnvExecutor(2, persistent=True, name="lane-cancel") as ex:
        take_lane(ex)
        pids = ex.info()["worker_pids"]
        fut = ex.submit(basic.wait_for_cancel, 60)
        assert holds_lane(ex) and ex._pool.lanes.carries(fut._key)
        start = time.monotonic()
        assert bayou.cancel(fut, grace=30)
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result(T)
        # it saw bayou.cancel_requested() and returned: not killed after the grace
        assert time.monotonic() - start < 20
        assert ex.submit(basic.add, 1, 1).result(T) == 2
        assert ex.info()["worker_pids"] == pids

        # shutdown(cancel_futures=True) reaches a call on the lane too
        take_lane(ex)
        fut = ex.submit(basic.wait_for_cancel, 60)
        assert ex._pool.lanes.carries(fut._key)
        start = time.monotonic()
        ex.shutdown(wait=True, cancel_futures=True)
        assert fut.cancelled() and time.monotonic() - start < 20


def test_progress_from_a_call_on_the_lane_reaches_the_caller(pools):
    seen = []
    with bayou.EnvExecutor(2, persistent=True, name="lane-progress") as ex:
        take_lane(ex)
        fut = ex.submit(basic.report_steps, 4, 0.15)
        fut.add_progress_callback(lambda f, p: seen.append(p.done))
        assert fut.result(T) == 4
    assert seen and seen[-1] == 4 and seen == sorted(seen), seen


def test_big_arrays_cross_a_lane_both_ways(pools):
    np = pytest.importorskip("numpy")
    with bayou.EnvExecutor(2, persistent=True, name="lane-numpy") as ex:
        take_lane(ex)
        a = np.arange(12_000_000, dtype=np.float64)  # 96 MB: out of band both ways
        out = ex.submit(np.multiply, a, 2.0).result(T)
        assert out.dtype == a.dtype and np.array_equal(out, a * 2.0)
        small = ex.submit(np.add, np.arange(5), 1).result(T)
        assert small.tolist() == [1, 2, 3, 4, 5]


def test_two_clients_calling_back_to_back_share_the_pool(pools):
    with bayou.EnvExecutor(2, persistent=True, name="lane-two") as first:
        second = bayou.persistent.attach("lane-two")
        results: dict[str, list] = {}

        def run(tag, ex):
            results[tag] = [ex.submit(basic.add, i, 1).result(T) for i in range(400)]

        threads = [
            threading.Thread(target=run, args=(t, e)) for t, e in (("a", first), ("b", second))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T)
        assert results == {"a": list(range(1, 401)), "b": list(range(1, 401))}
        # at most max_workers - 1 workers are lent: never both clients at once
        assert not (holds_lane(first) and holds_lane(second))
        second.shutdown()


@pytest.mark.parametrize(
    "workers, options",
    [
        (2, {"retries": 1}),  # a retry needs the host to have seen the call
        (2, {"max_tasks_per_child": 50}),  # so does counting calls
        (2, {"max_memory_per_worker": 2**33}),  # so does retiring after a call
        (1, {}),  # the only worker: other clients would have none
    ],
    ids=["retries", "max_tasks_per_child", "max_memory", "one_worker"],
)
def test_pools_whose_rules_need_every_call_never_lend(pools, workers, options):
    with bayou.EnvExecutor(workers, persistent=True, name="lane-never", **options) as ex:
        for i in range(100):
            assert ex.submit(basic.add, i, 0).result(T) == i
        assert ex.info()["lanes"] == 0 and not holds_lane(ex)
        assert ex._pool.lanes.refused_until == float("inf")  # asked once, told never


def test_a_client_killed_holding_a_lane_costs_one_worker_not_the_pool(pools, tmp_path):
    with bayou.EnvExecutor(2, persistent=True, name="lane-killed") as ex:
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), environ.get("PYTHONPATH")])
        )
        code = textwrap.dedent(
            """
            import sys, time, bayou
            from tests.executor_tasks import basic
            from tests.test_persistent_lanes import take_lane
            ex = bayou.persistent.attach("lane-killed")
            take_lane(ex)
            print("holding", flush=True)
            time.sleep(600)
            """
        )
        client = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=environ,
        )
        try:
            assert client.stdout.readline().strip() == "holding"
            before = set(ex.info()["worker_pids"])
            client.send_signal(signal.SIGKILL)
            client.wait(T)
        finally:
            client.kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = set(ex.info()["worker_pids"])
            if before - now:
                break
            time.sleep(0.1)
        assert len(before - now) == 1, (before, now)  # the lent one was killed, no other
        pids = {p for p, _ in ex.map(basic.pid_and_env, ["X"] * 6, [0.2] * 6)}
        assert len(pids) == 2 and before & now < pids and not pids & (before - now)


def test_calls_waited_on_without_a_follower_are_read_by_the_reader_thread(pools):
    with bayou.EnvExecutor(2, persistent=True, name="lane-wait") as ex:
        take_lane(ex)
        for i in range(50):
            fut = ex.submit(basic.add, i, 1)
            done, _ = concurrent.futures.wait([fut], timeout=T)  # no follower: a waiter
            assert done and fut.result() == i + 1
        assert holds_lane(ex)


@pytest.mark.slow
def test_threads_mixing_lane_calls_maps_crashes_long_calls_and_cancels_lose_nothing(pools):
    """Three threads of one client, each a random mix: quick calls (the lane), maps
    (the host, the lane given back), crashes, calls long enough to be handed back,
    cancels, pauses long enough for an idle lane to go back. Every call gets its
    own outcome and nothing hangs."""
    import random

    problems: list[str] = []

    def run(tag: int, ex) -> None:
        rnd = random.Random(tag)
        try:
            for i in range(150):
                r = rnd.random()
                if r < 0.03:
                    burst = list(ex.map(basic.add, range(50), range(50), chunksize=1))
                    assert burst == [2 * k for k in range(50)]
                elif r < 0.05:
                    with pytest.raises(bayou.WorkerCrashedError, match="exit_with"):
                        ex.submit(basic.exit_with, 3).result(T)
                elif r < 0.08:
                    assert ex.submit(basic.sleep_then, 0.08, i).result(T) == i
                elif r < 0.10:
                    fut = ex.submit(basic.wait_for_cancel, 30)
                    time.sleep(rnd.random() * 0.05)
                    bayou.cancel(fut, grace=5)
                    with pytest.raises(concurrent.futures.CancelledError):
                        fut.result(T)
                else:
                    assert ex.submit(basic.add, i, tag).result(T) == i + tag
                if rnd.random() < 0.01:
                    time.sleep(0.6)
        except BaseException as exc:  # noqa: BLE001 (reported below, with the thread)
            problems.append(f"thread {tag}: {exc!r}")

    ex = bayou.EnvExecutor(2, persistent=True, name="lane-mix")
    try:
        threads = [threading.Thread(target=run, args=(k, ex)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        assert problems == []  # (a call whose answer got lost times out: a problem)
        assert ex.info()["lanes"] >= 1
    finally:
        ex.shutdown(wait=False, cancel_futures=True)  # a lost call must not hang us


def test_a_lane_given_back_while_a_call_is_put_on_it_loses_no_call(pools, monkeypatch):
    """The reader thread gives an idle lane back while a user thread puts a call on
    it: one of them must win. With no idle time allowed, the reader gives the lane
    back whenever it is idle and the client asks for it again at once, so the two
    meet thousands of times; a call sent to a worker already given back would be
    answered to the host and never settle here."""
    from bayou.persistent import lane as lane_module

    monkeypatch.setattr(lane_module, "IDLE_RETURN", 0.0)
    monkeypatch.setattr(lane_module, "REFUSED_PAUSE", 0.0)
    ex = bayou.EnvExecutor(2, persistent=True, name="lane-race")
    try:
        lanes = 0
        for i in range(3000):
            assert ex.submit(basic.add, i, 1).result(30) == i + 1
            lanes += holds_lane(ex)
        assert lanes > 100 and ex.info()["lanes"] > 10  # it did take lanes, and gave them back
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
