"""Throughput of an EnvExecutor while a killer SIGKILLs its workers, against a calm run.

The run (also used by ``tests/test_chaos.py``):

1. Snapshot this process's children and the entries of ``/dev/shm``.
2. Start ``EnvExecutor(workers, retries=2)`` (its initializer imports numpy,
   so a fresh worker's first task is as short as any), submit ``tasks`` calls of the
   idempotent ``tests.executor_tasks.chaos.work(i)`` (every ``big_every``-th
   one carries a ``big_bytes`` numpy array, filled according to its index,
   and the one halfway between asks for such an array back: those travel
   through shared memory, so segments are in flight when workers die), and
   count each future's done-callbacks.
3. With ``kill=True`` a killer thread sleeps a random 50-200 ms, picks a random
   live bayou worker among this process's children (``psutil``, found by the
   ``_bayou_worker`` bootstrap in its command line: black box, no pool
   internals) and SIGKILLs it, until every future is done.
   With ``callers=k`` the tasks are not submitted at once but by k threads,
   each calling ``submit(...).result()`` in turn: the waiting thread reads
   its worker's result itself (the pool's follower path), while workers die.
4. Wait for every future (bounded: a hang is reported, not waited out), check
   every result against ``expected(i)``, shut down, and report what is left:
   children of this process, bayou's shared-memory segments (memfds named
   ``bayou-*`` still open in this process) and new ``/dev/shm`` entries named
   ``bayou*`` (other programs' entries there, e.g. joblib's or
   multiprocessing's, are none of this run's business).

Throughput is tasks per second from the first submit to the last future done.

    python benchmarks/chaos.py                 # 5000 tasks, 4 workers, calm then chaos
    python benchmarks/chaos.py --quick         # CI smoke: 500 tasks
    python benchmarks/chaos.py --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy  # noqa: E402
import psutil  # noqa: E402

from bayou import EnvExecutor  # noqa: E402
from tests.executor_tasks import chaos as tasks  # noqa: E402

SHM = Path("/dev/shm")
WORKER_MARK = "_bayou_worker"


@dataclass
class ChaosReport:
    """What one run saw. `lost` must be empty; `wrong`, `extra_callbacks`, `hung` zero."""

    tasks: int
    workers: int
    killer: bool
    seconds: float = 0.0
    throughput: float = 0.0  # tasks/s
    kills: int = 0  # SIGKILLs delivered to a live worker
    spared: int = 0  # kills withheld from a worker whose task had no retry left
    retried: int = 0  # "retrying" warnings logged by the pool (one per re-run)
    right: int = 0
    wrong: int = 0
    lost: list[str] = field(default_factory=list)  # futures that ended in an exception
    extra_callbacks: int = 0  # done-callbacks beyond one per future
    hung: int = 0  # futures not done within the deadline
    broken: str | None = None  # the pool's broken message, if it broke
    leftover_processes: list[int] = field(default_factory=list)
    leftover_shm: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.wrong
            and not self.extra_callbacks
            and not self.hung
            and self.right == self.tasks
            and not self.leftover_processes
            and not self.leftover_shm
        )


def bayou_workers(parent: psutil.Process) -> list[int]:
    """Pids of live bayou workers among `parent`'s children."""
    pids = []
    for child in parent.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and any(
                WORKER_MARK in part for part in child.cmdline()
            ):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


class Killer(threading.Thread):
    """SIGKILLs a random bayou worker of this process every `interval` seconds (uniform).

    With `spare_pool`, a worker whose task has no retry left is spared (counted
    in `spared`): the pool's lock is held from that check to the kill, so the
    task on the worker cannot change in between. That is the only peek into
    bayou's internals, and it only makes a run deterministic: a random killer
    can, rarely, hit one task `retries + 1` times (see `lost`).
    """

    def __init__(
        self, interval: tuple[float, float] = (0.05, 0.2), seed: int = 0, spare_pool=None
    ) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.interval = interval
        self.rng = random.Random(seed)
        self.kills = 0
        self.spared = 0
        self.spare_pool = spare_pool
        self._stop_event = threading.Event()
        self._parent = psutil.Process()

    def run(self) -> None:
        while not self._stop_event.wait(self.rng.uniform(*self.interval)):
            victims = bayou_workers(self._parent)
            if victims:
                self._kill(self.rng.choice(victims))

    def _kill(self, pid: int) -> None:
        pool = self.spare_pool
        if pool is None:
            self._signal(pid)
            return
        with pool._lock:
            for w in pool._workers:
                if w.pid == pid and w.item is not None and w.item.attempts >= pool.retries:
                    self.spared += 1
                    return
            self._signal(pid)

    def _signal(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
            self.kills += 1
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class _RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.count += 1


def _shm_entries() -> set[str]:
    """bayou's shared memory visible from here: /dev/shm names, memfds open or mapped."""
    import bayou.shm

    found = set(bayou.shm.segments_held(os.getpid()))
    try:
        found.update(f"/dev/shm/{n}" for n in os.listdir(SHM) if "bayou" in n)
    except OSError:
        pass
    return found


def run_chaos(
    tasks_n: int = 5000,
    workers: int = 4,
    *,
    kill: bool = True,
    retries: int = 2,
    interval: tuple[float, float] = (0.05, 0.2),
    seed: int = 0,
    big_every: int = 50,
    big_bytes: int = 2 * 2**20,
    deadline: float = 600.0,
    spare_last_attempt: bool = False,
    callers: int = 0,
) -> ChaosReport:
    """One run; see the module docstring. Never raises for a failed check: read the report."""
    report = ChaosReport(tasks=tasks_n, workers=workers, killer=kill)
    me = psutil.Process()
    children_before = {c.pid for c in me.children(recursive=True)}
    shm_before = _shm_entries()
    counter = _RetryCounter()
    log = logging.getLogger("bayou.executor")
    log.addHandler(counter)
    calls = [0] * tasks_n
    lock = threading.Lock()

    def callback(i: int):
        def done(_fut) -> None:
            with lock:
                calls[i] += 1

        return done

    ex = EnvExecutor(workers, initializer=tasks.warm_up, retries=retries)
    killer = None
    if kill:
        killer = Killer(interval, seed, ex._pool if spare_last_attempt else None)
    try:
        ex.submit(tasks.getpid).result(60)  # the pool is up before the clock starts
        if killer is not None:
            killer.start()
        start = time.perf_counter()
        futures: list = [None] * tasks_n

        def submit(i: int):
            pad = None
            if big_every and i % big_every == 0:
                pad = numpy.full(big_bytes, i % 251, dtype=numpy.uint8)
            reply = big_bytes if big_every and i % big_every == big_every // 2 else 0
            fut = ex.submit(tasks.work, i, pad, reply_bytes=reply)
            fut.add_done_callback(callback(i))
            futures[i] = (i, tasks.digest_of(pad), reply, fut)
            return fut

        if callers:
            end = time.monotonic() + deadline

            def call_in_turn(first: int) -> None:
                for i in range(first, tasks_n, callers):
                    try:
                        submit(i).result(max(0.0, end - time.monotonic()))
                    except Exception:
                        pass  # checked with the others below

            threads = [threading.Thread(target=call_in_turn, args=(k,)) for k in range(callers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for i in range(tasks_n):
                submit(i)
        submitted = [entry for entry in futures if entry is not None]
        report.lost += [f"task {i}: never submitted" for i, e in enumerate(futures) if e is None]
        done, not_done = wait([f for *_, f in submitted], timeout=deadline)
        report.seconds = time.perf_counter() - start
        report.throughput = len(done) / report.seconds
        report.hung = len(not_done)
    finally:
        if killer is not None:
            killer.stop()
            report.kills, report.spared = killer.kills, killer.spared
        report.broken = ex._pool.broken
        ex.shutdown(wait=True, cancel_futures=True)
        log.removeHandler(counter)
    report.retried = counter.count
    for i, pad_digest, reply, fut in submitted:
        if not fut.done():
            continue
        exc = fut.exception()
        if exc is not None:
            report.lost.append(f"task {i}: {type(exc).__name__}: {str(exc)[:300]}")
        elif tasks.comparable(fut.result()) == tasks.expected(i, pad_digest, reply):
            report.right += 1
        else:
            report.wrong += 1
    time.sleep(0.05)  # callbacks run before wait() returns; let any stray one land
    report.extra_callbacks = sum(max(0, c - 1) for c in calls)
    futures.clear()
    del submitted, done, not_done, fut  # results may view shared memory: let them go
    gc.collect()
    report.leftover_processes = _leftover_children(me, children_before)
    report.leftover_shm = _leftover_shm(shm_before)
    return report


def _leftover_children(me: psutil.Process, before: set[int], grace: float = 5.0) -> list[int]:
    end = time.monotonic() + grace
    while True:
        left = [c.pid for c in me.children(recursive=True) if c.pid not in before]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def _leftover_shm(before: set[str], grace: float = 2.0) -> list[str]:
    end = time.monotonic() + grace
    while True:
        left = sorted(_shm_entries() - before)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 tasks (CI smoke)")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--callers", type=int, default=0, help="threads calling submit().result() in turn"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    n = args.tasks or (500 if args.quick else 5000)
    calm = run_chaos(n, args.workers, kill=False, seed=args.seed, callers=args.callers)
    wild = run_chaos(n, args.workers, kill=True, seed=args.seed, callers=args.callers)
    for r in (calm, wild):
        name = "chaos" if r.killer else "calm "
        print(
            f"{name}: {r.tasks} tasks, {r.workers} workers, {r.seconds:.2f} s, "
            f"{r.throughput:.0f} tasks/s, kills {r.kills} (spared {r.spared}), re-runs {r.retried}, "
            f"right {r.right}, lost {len(r.lost)}, wrong {r.wrong}, hung {r.hung}, "
            f"extra callbacks {r.extra_callbacks}, leftover processes "
            f"{len(r.leftover_processes)}, leftover shm {len(r.leftover_shm)}"
        )
        for line in r.lost[:5]:
            print("   lost:", line)
        if r.broken:
            print("   pool broke:", r.broken[:300])
    ratio = wild.throughput / calm.throughput if calm.throughput else 0.0
    print(f"throughput under chaos / calm = {ratio:.2f}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"calm": asdict(calm), "chaos": asdict(wild), "ratio": ratio}, indent=2)
        )
    return 0 if calm.ok and wild.ok else 1


if __name__ == "__main__":
    sys.exit(main())
