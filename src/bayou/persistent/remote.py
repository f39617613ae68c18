"""`RemotePool`: what a persistent pool's client has in place of a `Pool`.

It relays work items to the pool host over one authenticated connection and
settles the local futures from the host's answers, with the same
leader/follower short cut as a local pool (`pool.follow`)::

    submit ─▶ ("submit", id, fn record, args blob, ...) ─▶ host; the future is
        RUNNING at once within a prefetch window (as a local pool's), else when
        the host says "running"
    result() on that future ─▶ follow: take the read lock, tell the reader
        thread's epoll to stop watching the socket ─▶ poll it here ─▶ the answer
        ─▶ watch again, let go ─▶ settle the future, in this thread
    reader thread: epoll on the socket ─▶ the messages nobody follows (futures
        waited on by `wait`, `as_completed`, callbacks; progress; info; stopped)

Whoever reads (the reader thread or a follower) holds the read lock, handles
each message in stream order (`_take`: bookkeeping only) and runs what
settles futures or calls user code (`actions`) after letting go, so
callbacks run with nothing held. Without epoll (not Linux) the reader thread
reads everything and a waiting thread sleeps on its future as before.
Ctrl-C stops a follower while it polls and waits while it reads
(`interrupts`).

Unlike a local pool's follower, this one sleeps in `poll` at once instead of
spinning first: the host's session and the worker already spin on their
sockets between back-to-back calls (`session`, the worker's `next_task`), and
a third process polling on a small machine takes the CPU they need (measured
on 2 cores: slower, not faster).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import os
import pickle
import queue
import select
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from .. import interrupts
from ..environment import Environment
from ..futures import end_cancelled, fail, started
from ..pool import PREFETCH, SHUTDOWN_GRACE, WorkItem, lifetime
from ..worker import wire
from .lane import Lanes, message_handlers, settle_answer
from .link import Link

if TYPE_CHECKING:
    from ..store import Store

_EPOLL = getattr(select, "epoll", None)


class RemotePool:
    """Stands in for `Pool` inside an executor: relays work items to a pool host."""

    def __init__(self, name: str, store: Store, link: Link, welcome: dict):
        self.name = name
        self.store = store
        self.environment: Environment = welcome["environment"]
        self.max_workers: int = welcome["max_workers"]
        self.host_pid: int = welcome["host_pid"]
        self.broken: str | None = None
        self._shutdown = False
        self.processes: dict = {}  # the workers are the host's children, not ours
        self.segments = None  # no shared memory with the host: buffers travel inline
        self.retries = 0  # retrying is the host pool's business
        self._link = link
        self._fd = link.fileno()
        self._pid = os.getpid()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._items: dict[int, WorkItem] = {}
        self._ids = itertools.count(1)
        self._detached = False
        self._detach_when_idle = False
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._requests: dict[int, queue.SimpleQueue] = {}  # `request`s waiting, by id
        self._request_ids = itertools.count(1)
        self._window = self.max_workers * (1 + PREFETCH)  # as `dispatch`: handed over
        self._ref = weakref.ref(self)  # what our futures' hooks hold
        self._hooks = (  # `BayouFuture.bind`'s, shared by our futures (keyed by task id)
            functools.partial(_cancel_by_ref, self._ref),
            functools.partial(_follow_by_ref, self._ref),
        )
        # Whoever reads the connection holds `_read_lock`; `_poller` (used under it)
        # says whether a message is waiting. The reader thread sleeps in `_epoll`,
        # which a follower tells to stop watching the socket while it reads.
        self._read_lock = threading.Lock()
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        self._epoll = _EPOLL() if _EPOLL is not None else None
        if self._epoll is not None:
            self._epoll.register(self._fd, select.EPOLLIN)
        self.lanes = Lanes(self)  # a worker of the host's lent to us, for quick calls
        self.thread = threading.Thread(
            target=self._read_loop, name=f"bayou-persistent-{name}", daemon=True
        )
        self.thread.start()
        lifetime.register(self)

    # -- called from user threads -------------------------------------------------------

    def submit_many(self, items: Sequence[WorkItem]) -> None:
        """Relay `items` in one message (`map(chunksize=1)`'s bursts)."""
        if len(items) == 1:
            self.submit(items[0])
            return
        self.lanes.release()  # a burst: all the host's workers
        with self._lock:
            lifetime.check_accepting(self.broken, self._shutdown)
            registered = [self._register(item) for item in items]
        tasks = [
            self._task(item, started) for item, started in zip(items, registered, strict=True)
        ]
        if not self._send(("submit_many", tasks)):
            self._break(f"lost the connection to the persistent pool {self.name!r}")

    def submit(self, item: WorkItem, actor: str | None = None) -> None:
        """Relay `item` to the host's pool, or to its actor `actor` (`remote_actor`);
        or send it down our lane (`lane`) when we hold one and nothing else is in flight."""
        if actor is None and self.lanes.take(item):
            return
        with self._lock:
            lifetime.check_accepting(self.broken, self._shutdown)
            alone = not self._items
            started = self._register(item)
        task = self._task(item, started)
        message = ("submit", *task) if actor is None else ("actor_submit", actor, *task)
        if not self._send(message):
            self._break(f"lost the connection to the persistent pool {self.name!r}")
        elif actor is None:
            if alone:
                self.lanes.maybe_open()
            elif self.lanes.lane is not None:
                self.lanes.release()

    def _register(self, item: WorkItem) -> bool:
        """Give `item` its task id (under the lock); whether it is handed over at once:
        as in a local pool's prefetch window, it is RUNNING (beyond Future.cancel();
        bayou.cancel still stops it), so that result() follows the connection. Beyond
        the window, the host's "running" says when."""
        task_id = item.task_id = next(self._ids)
        self._items[task_id] = item
        return len(self._items) <= self._window

    def _task(self, item: WorkItem, started: bool) -> tuple:
        """`item`'s future bound to us, and what the host needs of it (its call is
        dropped here: the future may live long)."""
        fut, task_id = item.future, item.task_id
        fut.bind(task_id, *self._hooks)
        if started:
            fut.set_running_or_notify_cancel()  # nobody else has it yet: PENDING
        else:  # Future.cancel() may end it here: the host must drop it then
            fut.add_done_callback(functools.partial(_local_done, self._ref, task_id))
        task = self._fields(item, started)
        item.release()
        return task

    @staticmethod
    def _fields(item: WorkItem, started: bool) -> tuple:
        """What the host needs of `item` ("submit"'s fields)."""
        oob = getattr(item, "oob", None)  # big argument buffers, inline (segments is None)
        return (
            item.task_id,
            item.call_kind,
            item.fn_record,
            item.args_blob,
            tuple(sorted(item.roots)),
            item.label,
            None if oob is None else list(oob.inline),
            started,
        )

    def cancel(self, task_id: int, grace: float) -> bool:
        """`bayou.cancel` on one of our futures."""
        with self._lock:
            item = self._items.get(task_id)
        if item is None or item.future.done():
            return False
        if self.lanes.cancel(item, grace):
            return True
        if item.future.cancel():
            return True  # still queued here or at the host: _local_done tells the host
        self._send(("cancel", task_id, grace))
        return True

    def follow(self, task_id: int, timeout: float | None) -> float | None:
        """The future's follow hook: read the connection in this thread until the task
        is settled (see the module docstring). Returns what is left of `timeout`."""
        if (
            self._epoll is None
            or threading.current_thread() is self.thread
            or lifetime.pid != self._pid
        ):
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        held = interrupts.HeldInterrupts()  # Ctrl-C waits until our bookkeeping is whole
        held.hold()
        try:
            while not held.caught:
                item = self._items.get(task_id)
                if item is None or item.future.done() or self._detached:
                    break
                if not self._read_lock.acquire(blocking=False):
                    break  # another thread reads: wait on the future as usual
                actions: list[Callable[[], None]] = []
                try:
                    end = self.lanes.follow_turn(deadline, actions, held)
                finally:
                    self._read_lock.release()
                self._run(actions)
                if end is not None:
                    self._ended(end)
                    break
                if not actions:
                    break  # timed out, or interrupted
        finally:
            held.release()  # a Ctrl-C that came meanwhile is raised here
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def request(self, kind: str, *fields: Any, timeout: float = 60.0) -> Any:
        """Ask the host (`kind`, a request id, `fields`) and wait for its "reply"."""
        slot: queue.SimpleQueue = queue.SimpleQueue()
        request = next(self._request_ids)
        self._requests[request] = slot
        try:
            if not self._send((kind, request, *fields)):
                raise BrokenProcessPool(
                    self.broken or f"lost the connection to the persistent pool {self.name!r}"
                )
            try:
                return slot.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"the persistent pool {self.name!r} did not answer") from None
        finally:
            self._requests.pop(request, None)

    def info(self, timeout: float = 10.0) -> dict:
        """The host's current entry (worker pids, tasks served, clients...)."""
        self._send(("info",))
        return self._replies.get(timeout=timeout)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Detach from the host; the pool and its workers keep running."""
        with self._lock:
            self._shutdown = True
            items = list(self._items.items())
        if cancel_futures:
            for task_id, item in items:
                if not item.future.cancel() and not self.lanes.cancel(item, SHUTDOWN_GRACE):
                    self._send(("cancel", task_id, SHUTDOWN_GRACE))
        if not wait:
            with self._lock:
                if self._items:
                    self._detach_when_idle = True
                    return
            self._detach()
            return
        futures = [item.future for _, item in items]
        while futures:
            _, pending = concurrent.futures.wait(futures, timeout=1.0)
            futures = list(pending)
            if self.broken is not None:
                break
        self._detach()

    @property
    def debug_ports(self) -> dict[int, int]:
        from ..debugging import debug_root, listening

        return {w["pid"]: w["port"] for w in listening(debug_root(self.store) / self.name)}

    # -- sending ----------------------------------------------------------------------

    def _send(self, message: tuple) -> bool:
        with self._send_lock:
            if self._detached:
                return False
            try:
                self._link.send(message)
                return True
            except OSError:
                return False

    def _detach(self) -> None:
        if self._read_lock.acquire(timeout=1.0):  # the lane goes back first, if idle
            try:
                self.lanes.close(give_back=True)
            finally:
                self._read_lock.release()
        with self._send_lock:
            if self._detached:
                return
            with contextlib.suppress(OSError):
                self._link.send(("detach", self.lanes.asked))
            self._detached = True
        lifetime.unregister(self)
        if threading.current_thread() is not self.thread:
            self.thread.join(5.0)
        self._link.close()

    # -- reading ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        """The reader thread: every message no follower reads."""
        ep = self._epoll
        end = None
        while end is None:
            if ep is not None:
                try:  # a message or the lane (unless a follower reads), or a hang-up
                    ep.poll(self.lanes.timeout())
                except OSError:
                    break
            actions: list[Callable[[], None]] = []
            with self._read_lock:
                end = self._drain(actions, block=ep is None)
                if end is None:
                    self.lanes.service(actions)
            self._run(actions)
        if ep is not None:
            ep.close()
        self._ended(end or self._lost())

    def _drain(self, actions: list, block: bool) -> str | None:
        """Read and take the messages waiting (one, waiting for it, when `block`);
        why the connection ended, or None."""
        try:
            while block or self._poller.poll(0):
                end = self._take(self._link.recv(), actions)
                if end is not None or block:
                    return end
        except (EOFError, OSError, pickle.UnpicklingError):
            return self._lost()
        return None

    def _take(self, message: tuple, actions: list) -> str | None:
        """One message from the host, in stream order (`MESSAGES`, by its tag):
        bookkeeping here, what calls user code into `actions`. A reason when it
        ends the connection."""
        handler = MESSAGES.get(message[0])
        return None if handler is None else handler(self, message, actions)

    def _on_stopped(self, message: tuple, actions: list) -> str | None:
        return f"the persistent pool {self.name!r} was stopped ({message[1]})"

    def _on_info(self, message: tuple, actions: list) -> str | None:
        self._replies.put(message[1])
        return None

    def _on_reply(self, message: tuple, actions: list) -> str | None:
        slot = self._requests.get(message[1])
        if slot is not None:
            slot.put(message[2])
        return None

    def _on_running(self, message: tuple, actions: list) -> str | None:
        item = self._items.get(message[1])
        if item is not None:
            started(item.future)
        return None

    def _on_progress(self, message: tuple, actions: list) -> str | None:
        item = self._items.get(message[1])
        if item is not None:
            actions.append(functools.partial(item.future._set_progress, *message[2:]))
        return None

    def _on_result(self, message: tuple, actions: list) -> str | None:
        item = self._pop(message[1])
        if item is not None:
            actions.append(functools.partial(self._settle, item, *message[2:5]))
        return None

    def _on_exception(self, message: tuple, actions: list) -> str | None:
        item = self._pop(message[1])
        if item is not None:
            actions.append(functools.partial(_fail_pickled, item.future, message[2]))
        return None

    def _on_cancelled(self, message: tuple, actions: list) -> str | None:
        item = self._pop(message[1])
        if item is not None:
            actions.append(functools.partial(end_cancelled, item.future))
        return None

    def _settle(self, item: WorkItem, status: int, data: Any, seconds: float | None) -> None:
        self.lanes.note_answer(seconds)
        settle_answer(item, status, local_result(status, data), seconds, self.environment)

    @staticmethod
    def _run(actions: list[Callable[[], None]]) -> None:
        for action in actions:
            action()

    def _lost(self) -> str:
        return (
            f"lost the connection to the persistent pool {self.name!r} (host pid {self.host_pid})"
        )

    def _ended(self, reason: str) -> None:
        if not self._detached:
            self._break(reason)

    def _pop(self, task_id: int) -> WorkItem | None:
        with self._lock:
            item = self._items.pop(task_id, None)
            idle = self._detach_when_idle and not self._items
        if idle:
            threading.Thread(target=self._detach, daemon=True).start()
        return item

    def _break(self, message: str) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = message
            items = list(self._items.values())
            self._items.clear()
        self.lanes.close(give_back=False)
        for item in items:
            fail(item.future, BrokenProcessPool(message))
        lifetime.unregister(self)


# The host's messages, by tag: each handler does its bookkeeping, appends what runs
# user code to `actions`, and returns why the connection ends, or None.
MESSAGES: dict[str, Callable[[RemotePool, tuple, list], str | None]] = {
    "running": RemotePool._on_running,
    "progress": RemotePool._on_progress,
    "result": RemotePool._on_result,
    "exception": RemotePool._on_exception,
    "cancelled": RemotePool._on_cancelled,
    "info": RemotePool._on_info,
    "reply": RemotePool._on_reply,
    "stopped": RemotePool._on_stopped,
    **message_handlers(),
}


def _cancel_by_ref(pool_ref, task_id: int, grace: float = 5.0) -> bool:
    pool = pool_ref()
    return pool.cancel(task_id, grace) if pool is not None else False


def _follow_by_ref(pool_ref, task_id: int, timeout: float | None) -> float | None:
    pool = pool_ref()
    return pool.follow(task_id, timeout) if pool is not None else timeout


def _local_done(pool_ref, task_id: int, fut) -> None:
    """A future cancelled here before the host settled it: tell the host to drop the task.

    The host may have handed it to a worker already (its "running" is on the
    way): that task is asked to stop and killed only after `SHUTDOWN_GRACE`, as
    with ``shutdown(cancel_futures=True)``, so that a map left early (whose
    iterator cancels the rest) does not kill workers that are about to answer."""
    pool = pool_ref()
    if pool is None or not fut.cancelled():
        return
    if pool._pop(task_id) is not None:
        pool._send(("cancel", task_id, SHUTDOWN_GRACE))


def _fail_pickled(fut, blob: bytes) -> None:
    fail(fut, pickle.loads(blob))


def local_result(status: int, data: Any) -> Any:
    """Undo `relay.portable_result`: the ``data`` that `Pool._complete` expects."""
    if status == wire.OK:
        blob, buffers = data
        return blob, 0, len(blob), buffers
    if isinstance(data, bytes):
        return pickle.loads(data)  # an exception the host met decoding the result
    return data
