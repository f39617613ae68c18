"""The pool: worker processes for one environment and the supervisor thread that runs them.

Data flow, in the spirit of CPython's concurrent/futures/process.py::

    EnvExecutor.submit ─▶ Pool.submit ─▶ pending deque ─▶ ready deque ─▶ (idle worker?) send TASK
                                          (future RUNNING, ≤ PREFETCH    (none?) spawn a worker
                                           per worker ahead of time)
    supervisor thread, one selector loop over:
        wakeup pipe        submit/cancel/shutdown asking for attention
        listening socket   new worker connections: CHALLENGE ─▶ AUTH ─▶ WELCOME
        worker sockets     READY, RESULT, PROGRESS, HEARTBEAT frames
        worker pipes       fd 1/2 of user code ─▶ log file, and the caller's sys.stdout/
                           sys.stderr (output="inherit") or logger
                           bayou.worker.<env>.<slot> (output="logging")
        pidfds             a worker died
    and timers: heartbeat_timeout, task_timeout, bayou.cancel and shutdown grace,
    memory cap, start timeout, retiring workers that do not leave.

The way back has a short cut. A thread that calls `result()` on a task that
is already on a worker becomes that worker's reader (`follow`, the
leader/follower pattern). It takes the socket out of the selector, reads the
RESULT, does the supervisor's bookkeeping and settles the future itself. That
saves the supervisor's wake-up and its hand-off to the waiting thread::

    result() ─▶ follow: unregister sock ─▶ poll(sock, pidfd) ─▶ RESULT ─▶ next TASK
           ◀─ settle the future ◀─ register sock again ◀─┘

A dying worker makes its pidfd readable, so the follower steps aside and
`workers.on_exit` runs on the supervisor as usual. A sequential caller and a worker
busy with back-to-back tasks poll for `spin` seconds before they sleep (see
`_spin` and the worker's `next_task`).

Like ProcessPoolExecutor's call queue, only `max_workers * (1 + PREFETCH)`
tasks are handed over (their futures RUNNING, beyond `Future.cancel()`) at a
time; the rest stay pending, so `shutdown(cancel_futures=True)` cancels them.

A task is sent to exactly one idle worker (one TASK frame) and answered by
exactly one RESULT frame; the next task is sent before the finished future's
callbacks run, so workers stay busy. When a worker dies, only the task it was
running fails (`WorkerCrashedError` with exit code or signal and the stderr
tail; `WorkerHungError`, `TaskTimeoutError`, `MemoryLimitError` when we killed
it and why), or is put back at the head of the queue when `retries` allow.
The worker is replaced on demand. An initializer that fails, or workers that
repeatedly die before becoming ready, break the pool like ProcessPoolExecutor:
pending futures fail with `BrokenProcessPool` and `submit` raises it. So does
an exception escaping the supervisor loop itself (a bug in bayou): every
unsettled future fails with a `BrokenProcessPool` whose `__cause__` is that
exception, and the workers are killed (`crash`).

Workers are spawned only from the supervisor thread: on Linux they ask for
PR_SET_PDEATHSIG, which fires when the *thread* that forked them ends, and the
supervisor lives exactly as long as the pool. Each worker leads its own
process group; killing it kills the group, so user subprocesses go too.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import pickle
import selectors
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from .. import protocol, shm
from ..environment import Environment
from ..futures import end_cancelled, fail
from ..worker import deploy, wire
from . import crash, follow, frames, lifetime, outcome, process, welcome, workers
from .connection import Handshakes
from .dispatch import QUIET, TIMER_SLACK, Dispatch, Limits
from .loop_io import LoopIO
from .output import MODES as OUTPUT_MODES
from .output import LogDir
from .process import WorkerProcess
from .records import WorkerHandle, WorkItem, spin_seconds

logger = logging.getLogger("bayou.executor")


class Pool:
    """Worker processes for one environment, driven by one supervisor thread."""

    def __init__(
        self,
        environment: Environment,
        *,
        max_workers: int,
        initializer: bytes | None = None,
        initializer_roots: frozenset = frozenset(),
        max_tasks_per_child: int | None = None,
        heartbeat_timeout: float | None = 10.0,
        task_timeout: float | None = None,
        retries: int = 0,
        max_memory_per_worker: int | None = None,
        log_dir: str | os.PathLike | None = None,
        output: str = "inherit",
        runtime_root: str | os.PathLike | None = None,
        start_timeout: float = 120.0,
        settle: Callable[[WorkItem, int, Any], None] | None = None,
        worker_env: Callable[[int], dict[str, str]] | None = None,
        actor: bytes | None = None,
        max_restarts: int | None = None,
        title: str = "",
    ) -> None:
        """`settle(item, status, data)` turns a worker's answer into the future's
        outcome; by default `outcome.settle` decodes it here (a persistent pool's host
        passes one that keeps it encoded for its client).

        `worker_env(slot)` gives variables for the worker in that slot (0 to
        max_workers - 1), and again for its replacement. `actor` makes this an
        actor's pool (`bayou.actor`): the pickled (class, args, kwargs) its
        one worker builds at start, before READY, and builds again after a
        death while `max_restarts` allow. `title` names its workers in messages
        (default: "worker <slot>")."""
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUT_MODES))}")
        self.environment = environment
        self._settle = settle
        self.output = output
        self.max_workers = max_workers
        self.initializer = initializer
        self.initializer_roots = sorted(initializer_roots)
        self.retries = retries
        self.spin = spin_seconds()  # see `_spin`; the workers get it too
        self._runtime_root = runtime_root
        self._logs = LogDir(log_dir)
        self.worker_env = worker_env
        self.actor = actor
        self.title = title

        self.processes: dict[int, WorkerProcess] = {}
        self._pid = os.getpid()  # a forked child has a copy of this pool, not its workers
        # every decision: queues, workers' phases, deadlines (under self._lock)
        self.limits = Limits(
            max_workers=max_workers,
            max_tasks_per_child=max_tasks_per_child,
            heartbeat_timeout=heartbeat_timeout,
            task_timeout=task_timeout,
            retries=retries,
            max_memory=max_memory_per_worker,
            start_timeout=start_timeout,
            spin=self.spin,
            max_restarts=max_restarts,
            min_workers=max_workers if actor is not None else 0,
        )
        self.dispatch: Dispatch[WorkerHandle] = Dispatch(self.limits)
        self._broken_cause: BaseException | None = None
        self._lock = threading.Lock()
        self._futures: weakref.WeakSet = weakref.WeakSet()  # for a supervisor crash
        self._task_ids = itertools.count(1)
        # what every future of this pool holds of it: `cancel` and `follow` through
        # a weak reference, given the future's own weak reference to its item
        pool_ref = weakref.ref(self)
        self._hooks = (
            functools.partial(_cancel_by_ref, pool_ref),
            functools.partial(follow.by_ref, pool_ref),
        )
        self._worker_ids = itertools.count(1)
        self._calls: collections.deque = collections.deque()
        self._following = 0  # threads in `follow`
        self._timers_due = 0.0  # when `_check_timers` next looks
        self.thread: threading.Thread | None = None
        self._io: LoopIO | None = None  # listener, selector, wakeup pipe: made at start
        self._command: list[str] = []
        self._environ: dict[str, str] = {}
        self._runtime_dir = ""
        # big argument and result buffers (bayou.shm); None where memfds do not exist
        self.segments: shm.SegmentPool | None = shm.SegmentPool() if shm.ENABLED else None

    # set by `_ensure_started`, before the supervisor's loop or any worker exists
    @property
    def selector(self) -> selectors.BaseSelector:
        assert self._io is not None, "the pool is not started"
        return self._io.selector

    @property
    def listener(self) -> protocol.Listener:
        assert self._io is not None, "the pool is not started"
        return self._io.listener

    @property
    def io(self) -> LoopIO:
        assert self._io is not None, "the pool is not started"
        return self._io

    @property
    def handshakes(self) -> Handshakes:
        assert self._io is not None, "the pool is not started"
        return self._io.handshakes

    @property
    def broken(self) -> str | None:
        """Why the pool is unusable (ProcessPoolExecutor's `_broken`), or None."""
        return self.dispatch.broken

    @property
    def broken_cause(self) -> BaseException | None:
        """The exception that broke the pool (an actor's constructor's), if any."""
        return self._broken_cause

    @property
    def served(self) -> int:
        """Tasks answered so far, by all workers."""
        return self.dispatch.served

    @property
    def deaths(self) -> int:
        """Worker deaths counted against `max_restarts` (an actor's pool)."""
        return self.dispatch.deaths

    @property
    def _shutdown(self) -> bool:
        return self.dispatch.shutdown_requested

    @property
    def _workers(self) -> list:
        return self.dispatch.workers

    @property
    def log_dir(self) -> Path | None:
        """Where the workers' logs are (made when the first worker prints)."""
        return self._logs.path

    # -- called from user threads ---------------------------------------------

    def submit(self, item: WorkItem) -> None:
        self.submit_many((item,))

    def submit_many(self, items: Sequence[WorkItem]) -> None:
        """Queue `items` in order under one lock, one check and one scheduling step:
        a burst of single calls (`map(chunksize=1)`) pays them once, not per call."""
        lifetime.check_owner(self._pid)
        # before starting the supervisor (no thread can start at interpreter exit)
        lifetime.check_accepting(self.dispatch.broken, self.dispatch.shutdown_requested)
        self._ensure_started()
        with self._lock:
            lifetime.check_accepting(self.dispatch.broken, self.dispatch.shutdown_requested)
            # weak references: the future must not keep its item (and the pool's
            # records) alive in a cycle once the task is settled
            task_ids, futures, hooks = self._task_ids, self._futures, self._hooks
            for item in items:
                item.task_id = next(task_ids)
                item.future.bind(weakref.ref(item), *hooks)
                futures.add(item.future)
            plan = self.dispatch.submit_many(items, time.monotonic())
        self._send_tasks(plan.sends)
        if plan.spawn:
            self._in_supervisor(lambda: workers.spawn_as_needed(self))

    def cancel(self, item: WorkItem, grace: float) -> bool:
        """`bayou.cancel`: drop a queued task, or ask a running one to stop then kill."""
        fut = item.future
        if lifetime.pid != self._pid:
            return False  # the parent's task, on the parent's worker
        with self._lock:
            decision = self.dispatch.cancel(item, time.monotonic(), grace)
        if decision == "done":
            return False
        if isinstance(decision, str):  # "dropped"
            item.release()
            end_cancelled(fut)
            return True
        decision.send(wire.CANCEL, pickle.dumps(item.task_id, 4))
        self._wake()
        return True

    def start(self) -> None:
        """Start the workers that must live without work (an actor's) now, not at the
        first submit."""
        lifetime.check_accepting(self.dispatch.broken, self.dispatch.shutdown_requested)
        self._ensure_started()
        workers.spawn_soon(self)

    def follow(self, item: WorkItem, timeout: float | None) -> float | None:
        """Wait for a running task by reading its worker in this thread (`follow`)."""
        return follow.follow(self, item, timeout)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop taking work; finish what was submitted, or with `cancel_futures` cancel it.

        With `cancel_futures`, tasks not yet handed to a worker are cancelled,
        as ProcessPoolExecutor does. The few already handed over (running, or
        waiting for their worker: see `dispatch`) are asked to stop
        (`bayou.cancel_requested()` turns True in them); one that ends within
        `SHUTDOWN_GRACE` seconds of the request (or of its start, if later)
        keeps its outcome, one still running then is killed and its future
        ends cancelled.
        """
        if lifetime.pid != self._pid:
            return  # a forked child's copy: the parent's workers are not ours to stop
        with self._lock:
            cancelled, notify = self.dispatch.shutdown(cancel_futures, time.monotonic())
            thread = self.thread
        for item in cancelled:
            item.release()
            end_cancelled(item.future)
        for w, task_id in notify:
            w.send(wire.CANCEL, pickle.dumps(task_id, 4))
        if thread is None:
            return
        self._wake()
        if wait and thread is not threading.current_thread():
            thread.join()

    # -- startup ---------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self.thread is not None:
            return
        with self._lock:
            if self.thread is not None or self._shutdown:
                return
            env = self.environment
            self._runtime_dir = str(deploy.ensure_runtime(self._runtime_root))
            self._command = process.command(
                str(env.python), self._runtime_dir, isolated=not env.is_current
            )
            self._environ = env.environ()
            self._io = LoopIO()
            thread = threading.Thread(
                target=self._run, name=f"bayou-supervisor-{env.hash}", daemon=True
            )
            lifetime.register(self)
            thread.start()
            self.thread = thread

    def _wake(self) -> None:
        if self._io is not None:
            self._io.wake()

    def _in_supervisor(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the supervisor thread and wait for it (spawning must happen there)."""
        if threading.current_thread() is self.thread:
            fn()
            return
        done = threading.Event()
        self._calls.append((fn, done))
        self._wake()
        while not done.wait(1.0):
            if self.thread is None or not self.thread.is_alive():
                return

    # -- carrying out the dispatcher's plans ------------------------------------

    def _send_tasks(self, assignments: list[tuple[WorkerHandle, WorkItem]]) -> None:
        for w, item in assignments:
            w.send_task(item)

    # -- the supervisor thread -------------------------------------------------

    def _run(self) -> None:
        try:
            timeout = 0.0
            while True:
                for key, _ in self.selector.select(timeout):
                    self._dispatch(key)
                self._run_calls()
                timeout = self._check_timers()
                if self._maybe_finish():
                    break
        except BaseException as exc:
            crash.fail_everything(self, exc)
        finally:
            try:
                self._close()
            except BaseException:
                logger.exception("bayou supervisor: error while closing the pool")

    def _run_calls(self) -> None:
        while self._calls:
            fn, done = self._calls.popleft()
            try:
                fn()
            finally:
                done.set()

    def _dispatch(self, key: selectors.SelectorKey) -> None:
        data = key.data
        # One select() batch can hold events of a worker that an earlier event of
        # the same batch already closed (pidfd, then its socket or pipes); its fd
        # number may even belong to a new worker by now. Skip such stale events.
        current = self.selector.get_map().get(key.fd)
        if current is None or current.data is not data:
            return
        tag = data[0]
        if tag == "sock":
            workers.on_socket(self, data[1])
        elif tag in ("out", "err"):
            workers.on_pipe(self, data[1], tag, key.fd)
        elif tag == "pidfd":
            workers.on_exit(self, data[1])
        elif tag == "wake":
            self.io.drain()
        elif tag == "listen":
            self.handshakes.accept()
        elif tag == "conn":
            welcome.on_handshake(self, key.fileobj)

    def _spawn_soon(self) -> None:
        """Start the workers dispatch asks for (`workers.spawn_soon`), from any thread."""
        workers.spawn_soon(self)

    def _worker_config(self) -> dict:
        """What WELCOME tells a worker (`welcome.worker_config`; `DebugPool` adds to it)."""
        return welcome.worker_config(self)

    def _forget_process(self, w: WorkerHandle) -> None:
        """`w` leaves `processes` (ProcessPoolExecutor's view) once retired or dead."""
        if self.processes.get(w.pid) is w.process:
            del self.processes[w.pid]

    def _complete(self, item: WorkItem, status: int, data: Any) -> None:
        """Settle `item` with what its worker answered (`outcome.settle`)."""
        if self._settle is not None:
            self._settle(item, status, data)
        else:
            outcome.settle(item, status, data, self.environment)

    # -- worker processes --------------------------------------------------------

    def _check_timers(self) -> float:
        """Enforce every deadline (`dispatch.timers`); how long the selector may sleep."""
        now = time.monotonic()
        if now < self._timers_due:  # a busy loop looks at most every TIMER_SLACK seconds
            return self._timers_due - now
        self._timers_due = now + TIMER_SLACK
        if self.segments is not None:
            self.segments.trim()
        self.handshakes.expire(time.monotonic())
        for w in list(self.dispatch.workers):
            if not w.exiting and w.pidfd is None and w.popen.poll() is not None:
                workers.on_exit(self, w)  # no pidfd on this platform: poll
        with self._lock:
            kills, nearest = self.dispatch.timers(
                time.monotonic(), lambda w: w.rss(), lambda w: frames.waiting(w.sock)
            )
        for w, reason in kills:
            workers.kill(self, w, reason)
        return max(0.0, nearest - time.monotonic())

    def _break(
        self, message: str, cause: BaseException | None = None, *, init_failed: bool = False
    ) -> None:
        """Make the pool unusable, like a broken ProcessPoolExecutor."""
        with self._lock:
            if self.dispatch.broken is not None:
                return
            pending, to_kill = self.dispatch.break_pool(message)
            self._broken_cause = cause
        self._logs.keep = True
        actor = self.actor is not None
        for item in pending:
            item.release()
            fail(
                item.future,
                outcome.broken_error(message, cause, actor=actor, init_failed=init_failed),
            )
        for w in to_kill:
            workers.kill(self, w, (BrokenProcessPool, message))

    def _maybe_finish(self) -> bool:
        """During shutdown: retire workers once no work is left; True when all are gone."""
        if not self._shutdown:
            return False
        with self._lock:
            to_stop, gone = self.dispatch.finish(time.monotonic())
            for w in to_stop:
                self._forget_process(w)
            done = gone and not self._calls and not self._following
        for w in to_stop:
            if w.ready_at is None or not w.send(wire.SHUTDOWN):
                workers.kill(self, w, QUIET)
        return done

    def _close(self) -> None:
        lifetime.unregister(self)
        if self.segments is not None:
            self.segments.close()
        for _, done in list(self._calls):
            done.set()
        if self._io is not None:
            self._io.close()
        self._logs.close()


def _cancel_by_ref(pool_ref, item_ref, grace: float = 5.0) -> bool:
    """A future's cancel hook (`BayouFuture.bind`): `Pool.cancel` through weak references."""
    pool, item = pool_ref(), item_ref()
    if pool is None or item is None:
        return False  # settled and dropped: too late to cancel
    return pool.cancel(item, grace)
