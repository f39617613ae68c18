"""Big buffers through shared memory: correct data both ways, and no segment left behind.

Segments are memfds named ``bayou-<caller pid>``: they live in the fd tables
and memory maps of the processes that hold them (``/proc/<pid>/fd``,
``/proc/<pid>/maps``), nowhere else. "Left behind" therefore means: held by
a process that should hold nothing (an idle worker, a caller whose results
are gone, any process at all once the caller is dead).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

import bayou.shm
from bayou import errors
from bayou.executor import EnvExecutor
from tests.executor_tasks import transport

T = 60
BIG = 8 * 2**20  # bytes: through a segment
SMALL = 16 * 2**10  # out of band, inline in the frame

pytestmark = pytest.mark.skipif(not bayou.shm.ENABLED, reason="memfd_create is Linux-only")


def segments_held(pid: int, caller_pid: int | None = None) -> list[str]:
    return bayou.shm.segments_held(pid, caller_pid or os.getpid())


def anywhere(caller_pid: int) -> list[str]:
    """Every process of this user that holds a segment of `caller_pid`."""
    out = []
    for proc in psutil.process_iter(["uids"]):
        if proc.info["uids"] and proc.info["uids"].real == os.getuid():
            out += [f"pid {proc.pid} {h}" for h in segments_held(proc.pid, caller_pid)]
    return out


def wait_until_empty(pid: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        held = segments_held(pid)
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


@pytest.fixture
def no_keep(monkeypatch):
    """Free segments are closed at the pool's next tick instead of kept for reuse."""
    monkeypatch.setattr(bayou.shm, "KEEP_SECONDS", 0.0)


def test_arrays_round_trip_exactly_and_writable():
    rng = np.random.default_rng(1)
    cases = [
        rng.random(SMALL // 8),
        rng.random(BIG // 8),
        np.asfortranarray(rng.random((300, 500))),
        rng.integers(0, 255, size=(64, 64, 300), dtype=np.uint8),
        np.zeros(0),
    ]
    with EnvExecutor(2) as ex:
        for arr in cases:
            back = ex.submit(transport.identity, arr).result(T)
            assert back.dtype == arr.dtype and back.shape == arr.shape
            assert np.array_equal(back, arr)
            assert back.flags.writeable  # like the arrays ProcessPoolExecutor returns
            back[...] = 0  # and writing to it is fine
            seen = ex.submit(transport.describe, arr).result(T)
            fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
            assert seen == (arr.shape, str(arr.dtype), fortran, True, float(arr.sum()))


def test_mixed_payload_and_many_buffers():
    arrays = [np.arange(n, dtype=np.int64) for n in (10, 1000, 100_000, 1_000_000)]
    with EnvExecutor(1) as ex:
        doubled, small, medium = ex.submit(transport.several, arrays).result(T)
    assert [a.tolist() == (b * 2).tolist() for a, b in zip(doubled, arrays, strict=True)] == [
        True
    ] * 4
    assert small == b"x" * 10 and medium == bytearray(b"y" * 200_000)


def test_task_writes_stay_in_the_worker():
    arr = np.ones(BIG // 8)
    with EnvExecutor(1) as ex:
        for _ in range(3):  # the segment is reused: no stale values may leak in
            back = ex.submit(transport.add_inplace, arr, 1.0).result(T)
            assert back[0] == 2.0 and back[-1] == 2.0
    assert arr[0] == 1.0 and arr[-1] == 1.0


def test_segments_are_reused_not_multiplied():
    arr = np.ones(BIG // 8)
    with EnvExecutor(2) as ex:
        for _ in range(10):
            back = ex.submit(transport.identity, arr).result(T)
            del back
        assert ex._pool.segments.live() <= 4  # args + reply, once per worker at most
        for pid in ex._processes:
            assert segments_held(pid) == []  # idle workers hold no segment


def test_released_after_normal_completion(no_keep):
    arr = np.ones(BIG // 8)
    with EnvExecutor(1) as ex:
        kept = ex.submit(transport.identity, arr).result(T)
        (worker,) = ex._processes
        assert segments_held(worker) == []
        assert segments_held(os.getpid())  # the result lives in a mapping
        assert kept.sum() == arr.sum()
        del kept
        assert wait_until_empty(os.getpid()) == []
        assert segments_held(worker) == []


def test_released_after_an_exception(no_keep):
    arr = np.ones(BIG // 8)
    with EnvExecutor(1) as ex:
        fut = ex.submit(transport.raise_about, arr)
        with pytest.raises(ValueError, match="sum is"):
            fut.result(T)
        (worker,) = ex._processes
        assert segments_held(worker) == []
        # a result that cannot be pickled, after the worker mapped the argument
        with pytest.raises(errors.PicklingError, match="not today"):
            ex.submit(transport.unpicklable_result, arr).result(T)
        assert segments_held(worker) == []
        del fut
        assert wait_until_empty(os.getpid()) == []


def test_released_after_the_worker_is_killed_mid_task(no_keep):
    arr = np.ones(BIG // 8)
    with EnvExecutor(1) as ex:
        with pytest.raises(errors.WorkerCrashedError, match="SIGKILL"):
            ex.submit(transport.kill_self_holding, arr).result(T)
        assert wait_until_empty(os.getpid()) == []
        # the pool goes on, through shared memory
        assert ex.submit(transport.identity, arr).result(T).sum() == arr.sum()
    assert wait_until_empty(os.getpid()) == []
    assert anywhere(os.getpid()) == []


def test_released_when_the_task_times_out(no_keep):
    arr = np.ones(BIG // 8)
    with EnvExecutor(1, task_timeout=0.5) as ex:
        with pytest.raises(errors.TaskTimeoutError):
            ex.submit(transport.sleep_holding, arr, 30).result(T)
        assert wait_until_empty(os.getpid()) == []
    assert anywhere(os.getpid()) == []


def test_nothing_left_after_shutdown_even_with_results_alive():
    arr = np.ones(BIG // 8)
    with EnvExecutor(2) as ex:
        results = [ex.submit(transport.identity, arr).result(T) for _ in range(3)]
    workers_gone = anywhere(os.getpid())
    assert all(line.startswith(f"pid {os.getpid()} ") for line in workers_gone)
    assert all(r.sum() == arr.sum() for r in results)  # still readable after shutdown
    del results
    assert wait_until_empty(os.getpid()) == []


@pytest.mark.slow
def test_nothing_left_when_the_caller_is_killed():
    script = textwrap.dedent(
        f"""
        import os, time
        import numpy as np
        from bayou.executor import EnvExecutor
        from tests.executor_tasks import transport
        ex = EnvExecutor(1, heartbeat_timeout=None)
        arr = np.ones({BIG // 8})
        ex.submit(transport.identity, arr).result()
        kept = ex.submit(transport.identity, arr).result()
        fut = ex.submit(transport.sleep_holding, arr, 600)
        while not fut.running():
            time.sleep(0.05)
        time.sleep(1.0)
        print("PIDS", os.getpid(), *ex._processes, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("PIDS"), line
        caller, worker = (int(p) for p in line.split()[1:])
        assert segments_held(worker, caller)  # the running task maps its argument
        assert segments_held(caller, caller)
        before = set(os.listdir("/dev/shm"))
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(worker):
        try:
            if psutil.Process(worker).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    assert anywhere(caller) == []
    assert set(os.listdir("/dev/shm")) <= before  # nothing named was ever made


def test_segment_pool_budget_falls_back_to_inline():
    pool = bayou.shm.SegmentPool(max_live=2)
    try:
        buf = memoryview(bytes(200_000))
        staged = [pool.stage([buf]) for _ in range(3)]
        assert staged[0] is not None and staged[1] is not None
        assert staged[2] is None  # over budget: the caller sends the buffers inline
        pool.settle(staged[0][0])
        again = pool.stage([buf])
        assert again is not None and again[0] is staged[0][0]  # the free one, reused
        for seg in (staged[1][0], again[0]):
            pool.settle(seg)
        assert pool.live() == 2
    finally:
        pool.close()
    assert pool.live() == 0
    assert segments_held(os.getpid()) == []


def test_many_results_alive_stay_within_a_descriptor_budget(monkeypatch):
    monkeypatch.setattr(bayou.shm, "MAX_MAPPED_RESULTS", 4)
    arr = np.arange(SMALL * 8, dtype=np.float64)  # 1 MiB: through shared memory
    before = len(os.listdir("/proc/self/fd"))
    with EnvExecutor(1) as ex:
        results = [ex.submit(transport.identity, arr).result(T) for _ in range(40)]
        results += list(ex.map(transport.make, [SMALL] * 20, range(20)))  # worker-made segments
        held = len(segments_held(os.getpid()))
        assert ex._pool.segments.mapped <= 4
    assert all(np.array_equal(r, arr) for r in results[:40])
    assert all(r[0] == i for i, r in enumerate(results[40:]))
    assert all(r.flags.writeable for r in results)
    assert held < 40  # mapped results hold descriptors; copied ones do not
    del results
    assert wait_until_empty(os.getpid()) == []
    assert len(os.listdir("/proc/self/fd")) <= before + 2


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.9", "3.13"])  # 3.9: no mmap.MAP_POPULATE constant
def test_big_arrays_with_a_worker_of_another_python(store, version):
    from bayou import Env
    from tests.conftest import require_interpreter

    require_interpreter(version)
    arr = np.random.default_rng(2).random(BIG // 8)  # numpy 2 pickles name numpy._core
    with EnvExecutor(1, env=Env(python=version, pip=["numpy>=2"])) as ex:
        for _ in range(2):  # the second time through reused segments
            back = ex.submit(transport.identity, arr).result(120)
            assert np.array_equal(back, arr) and back.flags.writeable
            made = ex.submit(transport.make, BIG // 8, 7.0).result(120)
            assert made.shape == (BIG // 8,) and made[0] == 7.0 and made[-1] == 7.0
        small = ex.submit(transport.identity, arr[: SMALL // 8]).result(120)
        assert np.array_equal(small, arr[: SMALL // 8])
        (worker,) = ex._processes
        assert segments_held(worker) == []
    del back, made
    assert wait_until_empty(os.getpid()) == []
