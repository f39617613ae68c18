"""The pool's decisions, as a state machine: events in, instructions out.

Everything the pool decides is here; nothing here touches a socket, a
process, a thread or a clock. The supervisor (`supervisor.Pool`) calls one
method per event, under its lock, with the time (`now`) and what it measured
(a worker's memory, whether it has a frame waiting), and carries out what the
method returns once the lock is released (httpcore's connection pool works
this way). The tests drive it with plain records and a fake clock
(tests/test_dispatch.py).

    event                       instructions
    submit(item)            ─▶  Plan: (worker, item) to send, whether to spawn
    ready(w)                ─▶  Plan
    result(w, over_memory)  ─▶  retire w?, Plan
    exited(w, rc, ...)      ─▶  Exit: the task's fate (requeued, retried, failed,
                                cancelled), whether the env is broken, Plan
    cancel(item, grace)     ─▶  dropped / ask its worker / too late
    shutdown(cancel)        ─▶  items to cancel, (worker, task id) to ask to stop
    timers(now, memory)     ─▶  kills with their reasons, the next deadline
    finish()                ─▶  workers to stop, whether all is done
    broken(message)         ─▶  items to fail, workers to kill

The rules:

* Prefetch. Like ProcessPoolExecutor's call queue (`EXTRA_QUEUED_CALLS`), at
  most ``max_workers * (1 + PREFETCH)`` tasks are handed over at a time
  (their futures RUNNING, beyond `Future.cancel()`), running or next in line;
  the rest stay pending, so `shutdown(cancel_futures=True)` reaches them.
* A worker is spawned when tasks wait and the live workers (not retiring)
  are fewer than ``max_workers`` and cannot take them all.
* A worker is retired after ``max_tasks_per_child`` tasks, or when it is over
  the memory cap after a task.
* Death. The task a dead worker held fails with the error its death stands
  for; a crash or a hang is retried while ``retries`` allow; a task whose
  TASK frame never reached the worker goes back without spending an attempt;
  a task being cancelled ends cancelled. Workers that die before READY break
  the pool after ``MAX_START_FAILURES`` in a row, or ``MAX_START_KILLS`` in a
  row when a signal someone sends killed them (the OOM killer, an admin).
* Restarts (an actor's pool: ``max_restarts`` set). Every death counts but
  that of a worker shutdown stopped, wherever it happens (a call in flight,
  an idle worker, a constructor that crashes the process, a kill while
  shutdown waits for queued calls); the death after ``max_restarts`` of them
  breaks the pool, so queued and later calls fail (`errors.ActorDiedError`).
  Outside kills before READY are then counted only as restarts (not
  ``MAX_START_KILLS``); ``MAX_START_FAILURES`` exits of its own still break. ``min_workers`` keeps that many alive without
  work: an actor is built at once, and rebuilt after a death.
* Deadlines: start timeout, heartbeat timeout, ``task_timeout``, the cancel
  grace (`bayou.cancel`, ``SHUTDOWN_GRACE`` at shutdown), retiring workers
  that do not leave, and the memory cap, which kills only a task found over
  it at two checks in a row.
* Loans. A task whose item has a ``lease`` lends its worker to a persistent
  pool's client (`lending`): it is BUSY like any other, but heartbeat and
  ``task_timeout`` are not checked (the client reads the worker, and hands
  back any call that runs long); its end is a `result`, as an answer's.
"""

from __future__ import annotations

import collections
import enum
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .. import errors

PREFETCH = 1  # tasks per worker handed over ahead of time (CPython: EXTRA_QUEUED_CALLS)
SHUTDOWN_GRACE = 1.0  # s a handed-over task may take to stop after shutdown(cancel_futures)
MEMORY_CHECK_INTERVAL = 0.1  # s between RSS checks of a busy worker
RETIRE_TIMEOUT = 10.0  # s a retired worker has to leave before it is killed
MAX_SELECT = 0.5  # s the supervisor sleeps at most
TIMER_SLACK = 0.001  # s a deadline may pass unnoticed (a busy supervisor's checks)
MAX_START_FAILURES = 3  # consecutive workers that exit or crash before READY: broken env
MAX_START_KILLS = 12  # consecutive workers killed before READY by a signal from outside
OUTSIDE_KILLS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
QUIET: tuple[type | None, str] = (None, "")  # a kill that fails no task by itself

Reason = tuple[type | None, str]


class Phase(enum.Enum):
    """A worker's life: STARTING ─▶ IDLE ⇄ BUSY ─▶ RETIRING ─▶ EXITING ─▶ DEAD.

    Any phase may go to EXITING (it died, or is being reaped) and then DEAD."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"
    EXITING = "exiting"  # its death is being accounted for: no new task
    DEAD = "dead"


@dataclass(eq=False)
class Worker:
    """What the dispatcher knows of one worker (the supervisor's handle extends it)."""

    slot: int
    worker_id: int
    started_at: float
    phase: Phase = Phase.STARTING
    item: Any = None  # the task on it
    ready_at: float | None = None  # when it said READY
    last_seen: float = 0.0  # its last frame
    task_started: float = 0.0
    retired_at: float = 0.0
    tasks_done: int = 0
    last_result_at: float = -1e9
    kill_reason: Reason | None = None  # why we killed it (None: we did not)
    cancel_deadline: float | None = None
    next_memory_check: float = 0.0
    memory_strikes: int = 0  # consecutive checks that found it over the cap
    stopped: bool = False  # asked to leave at shutdown: its death is no restart

    def __post_init__(self) -> None:
        self.last_seen = self.task_started = self.started_at

    @property
    def dead(self) -> bool:
        return self.phase is Phase.DEAD

    @property
    def exiting(self) -> bool:
        return self.phase in (Phase.EXITING, Phase.DEAD)


W = TypeVar("W", bound=Worker)  # the supervisor's workers: `Worker`s with their I/O


@dataclass
class Plan(Generic[W]):
    """Tasks to send to workers now, and whether to start workers."""

    sends: list[tuple[W, Any]] = field(default_factory=list)
    spawn: bool = False


@dataclass
class Exit(Generic[W]):
    """What a worker's death means."""

    item: Any = None  # the task it held
    fate: str = "none"  # none, requeued, retried, failed, cancelled
    error: BaseException | None = None  # for failed (and the retry's log line)
    start_failed: bool = False  # too many workers died before READY: break the pool
    out_of_restarts: bool = False  # `Limits.max_restarts` deaths were spent: break the pool
    keep_logs: bool = False  # something went wrong: keep the workers' logs
    plan: Plan[W] = field(default_factory=Plan)


@dataclass
class Limits:
    """The pool's options that rules depend on."""

    max_workers: int
    max_tasks_per_child: int | None = None
    heartbeat_timeout: float | None = 10.0
    task_timeout: float | None = None
    retries: int = 0
    max_memory: int | None = None
    start_timeout: float = 120.0
    spin: float = 0.0
    max_restarts: int | None = None  # deaths tolerated (None: any number; see Restarts)
    min_workers: int = 0  # workers kept alive with no work


class Dispatch(Generic[W]):
    """Queues, workers and the rules between them (see the module docstring)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.pending: collections.deque[Any] = collections.deque()
        self.ready: collections.deque[Any] = collections.deque()  # handed over
        self.workers: list[W] = []
        self.idle: list[W] = []
        self.broken: str | None = None
        self.shutdown_requested = False
        self.start_failures = 0
        self.start_kills = 0
        self.deaths = 0  # deaths that count against `max_restarts`
        self.served = 0  # tasks answered, all workers together

    # -- events ----------------------------------------------------------------

    def submit(self, item: Any, now: float) -> Plan[W]:
        return self.submit_many((item,), now)

    def submit_many(self, items: Iterable[Any], now: float) -> Plan[W]:
        self.pending.extend(items)
        return self._plan(now)

    def spawned(self, w: W) -> None:
        self.workers.append(w)

    def ready_worker(self, w: W, now: float) -> Plan[W]:
        w.ready_at = now
        self.start_failures = self.start_kills = 0
        if w.phase is Phase.STARTING:
            w.phase = Phase.IDLE
            self.idle.append(w)
        return self._plan(now)

    def result(self, w: W, now: float, over_memory: bool) -> tuple[bool, Plan[W]]:
        """`w` answered its task: (retire it?, what follows)."""
        w.item.worker = None
        w.item = None
        w.tasks_done += 1
        self.served += 1
        w.last_result_at = now
        limit = self.limits.max_tasks_per_child
        # A worker being killed (a cancel's grace ran out as its answer came) gets
        # no next task: the task would die with it.
        killed = w.kill_reason is not None
        retire = (
            w.exiting or killed or (limit is not None and w.tasks_done >= limit) or over_memory
        )
        if retire:
            self.retire(w, now)
        else:
            w.phase = Phase.IDLE
            self.idle.append(w)
        return retire, self._plan(now)

    def retire(self, w: W, now: float) -> None:
        if w in self.idle:
            self.idle.remove(w)
        if not w.exiting:
            w.phase = Phase.RETIRING
        w.retired_at = now

    def exited(
        self,
        w: W,
        rc: int,
        now: float,
        error_for: Callable[[Any], tuple[BaseException, bool]],
    ) -> Exit[W]:
        """`w` is gone with exit code `rc`; `error_for(item)` is (the error its death
        stands for, whether that allows a retry)."""
        out: Exit[W] = Exit()
        w.phase = Phase.DEAD
        self.workers.remove(w)
        if w in self.idle:
            self.idle.remove(w)
        item, w.item = w.item, None
        out.item = item
        if item is not None:
            item.worker = None
            if item.cancel_requested or item.stop_requested:
                out.fate = "cancelled"
            elif item.undelivered and self.broken is None:
                out.fate = "requeued"  # it never ran: no attempt is spent
                item.requeued()
                self.ready.appendleft(item)
            else:
                out.error, retryable = error_for(item)
                out.keep_logs = True
                if retryable and item.attempts < self.limits.retries and self.broken is None:
                    item.attempts += 1
                    out.fate = "retried"
                    item.requeued()
                    self.ready.appendleft(item)
                else:
                    out.fate = "failed"
        elif w.ready_at is None and w.kill_reason is None and not self.shutdown_requested:
            if -rc in OUTSIDE_KILLS:
                self.start_kills += 1
            else:
                self.start_failures += 1
            out.keep_logs = True
        restarts = self.limits.max_restarts
        out.start_failed = self.start_failures >= MAX_START_FAILURES or (
            # outside kills of an actor being built are its restarts' business
            restarts is None and self.start_kills >= MAX_START_KILLS
        )
        if restarts is not None and not w.stopped and self.broken is None:
            self.deaths += 1
            out.out_of_restarts = self.deaths > restarts
        out.plan = self._plan(now)
        out.plan.spawn = out.plan.spawn and not (out.start_failed or out.out_of_restarts)
        return out

    def cancel(self, item: Any, now: float, grace: float) -> W | str:
        """`bayou.cancel`: "dropped" (it was queued), "done" (too late), or the worker
        to ask to stop (it is killed when `grace` runs out)."""
        if item.future.done():
            return "done"
        w = item.worker
        if w is None:
            for queue in (self.pending, self.ready):
                try:
                    queue.remove(item)
                    return "dropped"
                except ValueError:
                    continue
            return "done"
        item.cancel_requested = True
        deadline = now + max(0.0, grace)
        if w.cancel_deadline is None or deadline < w.cancel_deadline:
            w.cancel_deadline = deadline
        return w

    def shutdown(self, cancel_futures: bool, now: float) -> tuple[list[Any], list[tuple[W, int]]]:
        """(queued items to cancel, (worker, task id) to ask to stop)."""
        self.shutdown_requested = True
        if not cancel_futures:
            return [], []
        cancelled = list(self.pending)
        self.pending.clear()
        deadline = now + SHUTDOWN_GRACE
        for item in self.ready:
            item.stop_requested = True
        notify: list[tuple[W, int]] = []
        for w in self.workers:
            item = w.item
            if item is not None and not item.stop_requested:
                item.stop_requested = True
                if w.cancel_deadline is None or deadline < w.cancel_deadline:
                    w.cancel_deadline = deadline
                notify.append((w, item.task_id))
        return cancelled, notify

    def finish(self, now: float) -> tuple[list[W], bool]:
        """During shutdown: (workers to stop now, whether no worker is left)."""
        if not self.shutdown_requested:
            return [], False
        if self.pending or self.ready or any(w.item is not None for w in self.workers):
            return [], False
        to_stop = [w for w in self.workers if w.phase in (Phase.STARTING, Phase.IDLE)]
        for w in to_stop:
            w.stopped = True
            self.retire(w, now)
        return to_stop, not self.workers

    def break_pool(self, message: str) -> tuple[list[Any], list[W]]:
        """The pool is unusable: (queued items to fail, workers to kill); None when it
        was broken already."""
        if self.broken is not None:
            return [], []
        self.broken = message
        items = [*self.ready, *self.pending]
        self.pending.clear()
        self.ready.clear()
        return items, list(self.workers)

    def timers(
        self,
        now: float,
        memory: Callable[[W], int],
        answered: Callable[[W], bool],
    ) -> tuple[list[tuple[W, Reason]], float]:
        """Every deadline: (workers to kill and why, when to look again).

        When the memory cap is due to be checked, `memory(w)` measures a busy
        worker's RSS, and `answered(w)` says whether its result is already
        waiting to be read (a task that finished is not killed)."""
        limits = self.limits
        kills: list[tuple[W, Reason]] = []
        nearest = now + MAX_SELECT
        ht, tt = limits.heartbeat_timeout, limits.task_timeout
        for w in self.workers:
            if w.exiting or w.kill_reason is not None:
                continue
            if w.phase is Phase.STARTING:
                if now - w.started_at > limits.start_timeout:
                    kills.append((w, (errors.WorkerCrashedError, "did not start in time")))
                else:
                    nearest = min(nearest, w.started_at + limits.start_timeout)
                continue
            if w.phase is Phase.RETIRING:
                if now - w.retired_at > RETIRE_TIMEOUT:
                    kills.append((w, QUIET))
                continue
            # A worker lent to a persistent pool's client: the client reads it, and
            # hands a call that runs long back to the pool (`lending`), whose
            # heartbeat and task_timeout then apply.
            item = w.item
            lent = item is not None and getattr(item, "lease", None) is not None
            if ht is not None and not lent:
                if now - w.last_seen > ht:
                    kills.append((w, _hung(now - w.last_seen, ht)))
                    continue
                nearest = min(nearest, w.last_seen + ht)
            if w.phase is not Phase.BUSY:
                continue
            if tt is not None and not lent:
                if now - w.task_started > tt:
                    reason = f"it ran longer than task_timeout={tt} s"
                    kills.append((w, (errors.TaskTimeoutError, reason)))
                    continue
                nearest = min(nearest, w.task_started + tt)
            if w.cancel_deadline is not None:
                if now >= w.cancel_deadline:
                    kills.append((w, QUIET))
                    continue
                nearest = min(nearest, w.cancel_deadline)
            if limits.max_memory is not None:
                if now >= w.next_memory_check:
                    rss = memory(w)
                    over = rss > limits.max_memory and not answered(w)
                    # A task is killed when it stays over the cap for a whole check
                    # interval: one that crosses the cap just before it returns (a
                    # leak) stands, and its worker is recycled after it.
                    w.memory_strikes = w.memory_strikes + 1 if over else 0
                    if w.memory_strikes >= 2:
                        reason = (
                            f"it used {rss} bytes of memory, over "
                            f"max_memory_per_worker={limits.max_memory}"
                        )
                        kills.append((w, (errors.MemoryLimitError, reason)))
                        continue
                    w.next_memory_check = now + MEMORY_CHECK_INTERVAL
                nearest = min(nearest, w.next_memory_check)
        return kills, nearest

    # -- scheduling ----------------------------------------------------------------

    def _plan(self, now: float) -> Plan[W]:
        return Plan(self._assign(now), self._spawn_needed())

    def _fill_ready(self) -> None:
        """Hand queued tasks over (their futures turn RUNNING) while the window has room."""
        if not self.pending:
            return
        room = self.limits.max_workers * (1 + PREFETCH) - len(self.ready)
        for w in self.workers:
            if w.item is not None:
                room -= 1
        while room > 0 and self.pending:
            item = self.pending.popleft()
            if not item.started:
                if not item.future.set_running_or_notify_cancel():
                    item.release()  # cancelled by the user while queued
                    continue
                item.started = True
            self.ready.append(item)
            room -= 1

    def _assign(self, now: float) -> list[tuple[W, Any]]:
        out: list[tuple[W, Any]] = []
        self._fill_ready()
        while self.ready and self.idle:
            item = self.ready.popleft()
            w = self.idle.pop()
            w.phase = Phase.BUSY
            w.item = item
            w.task_started = now
            w.cancel_deadline = now + SHUTDOWN_GRACE if item.stop_requested else None
            w.next_memory_check = now + MEMORY_CHECK_INTERVAL
            w.memory_strikes = 0
            # Tasks come back to back (this one within `spin` of the worker's last
            # result): the next one will likely come as quickly, so the worker should
            # poll for it rather than sleep. The caller judges this, not the worker:
            # the worker would see its own wake-up latency in the gap. Not while more
            # tasks wait in the queue (a map's): each worker's next one is sent when
            # its result is read, and workers polling meanwhile take the CPU the
            # caller needs for that (2 cores, map(chunksize=1): 13.8k tasks/s with
            # polling, 20.7k without; PPE 15.8k).
            item.spin_after = not self.pending and now - w.last_result_at < self.limits.spin
            item.worker = w
            out.append((w, item))
        if out:
            self._fill_ready()
        return out

    def _spawn_needed(self) -> bool:
        if self.broken is not None:
            return False
        live = starting = 0  # counted in one loop: this runs at every submit and result
        for w in self.workers:
            phase = w.phase
            if phase is Phase.STARTING:
                starting += 1
                live += 1
            elif phase is Phase.IDLE or phase is Phase.BUSY:
                live += 1
        if live < self.limits.min_workers and not self.shutdown_requested:
            return True
        queued = len(self.ready) + len(self.pending)
        if not queued:
            return False
        return live < self.limits.max_workers and queued > starting + len(self.idle)


def _hung(silent: float, timeout: float) -> Reason:
    return (
        errors.WorkerHungError,
        f"no heartbeat for {silent:.1f} s (heartbeat_timeout={timeout}); a task stuck in "
        f"code that holds the GIL looks like this",
    )


__all__ = ["Dispatch", "Exit", "Limits", "Phase", "Plan", "Worker"]
