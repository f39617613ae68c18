"""A worker lent out: its socket read and written by someone else for a while.

A persistent pool's client that calls back to back borrows one worker of the
host's pool (`persistent.lanes`) and talks to it directly, so a call costs
two processes, not three. For the pool the loan is a task like any other, a
`WorkItem` whose ``lease`` is set, so dispatch's rules hold without a new
state::

    submit(lease item) ─▶ dispatch gives it an idle worker (BUSY) ─▶ send_task:
        no TASK: lend() stops the selector watching the socket, the lease hands
        a copy of it to the client
    the client returns it idle      ─▶ give_back(): as if it answered (IDLE, the
                                       next task), the selector watches again
    the client hands a running call back ─▶ take_over(): the lease item becomes
                                       that call, the selector watches again
    the worker dies while lent      ─▶ the lease item fails as a task would, with
                                       the death's error (the client is told)

While lent, nobody in the pool reads the socket (`WorkerHandle.lent`: the
supervisor, a follower and a dead worker's last read step aside) and the
heartbeat and ``task_timeout`` are not checked (`dispatch.timers`): the
client hands back any call that runs longer than a few tens of milliseconds,
and the memory cap and deaths are watched by pid as always.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ..worker import wire

if TYPE_CHECKING:
    from .records import WorkerHandle
    from .supervisor import Pool


def lend(pool: Pool, w: WorkerHandle) -> bool:
    """Stop reading `w` (its lease item was just assigned to it); False when it
    cannot be lent now: it is dying, a frame of it is half read here, or another
    thread is reading it (a supervisor's read under way would take the client's
    first answer)."""
    if w.start_reading():
        try:
            return _stop_watching(pool, w)
        finally:
            w.stop_reading()
    # This thread reads it (the answer that freed it gave it the lease) and reads
    # no more once that answer is handled; any other reader may be mid-read.
    return w.reading_thread == threading.get_ident() and _stop_watching(pool, w)


def _stop_watching(pool: Pool, w: WorkerHandle) -> bool:
    reader = w.reader
    if w.sock is None or w.exiting or reader is None or not reader.between_frames():
        return False
    return pool.io.pause(w.sock)


def give_back(pool: Pool, w: WorkerHandle) -> None:
    """The client is done with `w`, idle: the pool reads it again and gives it work,
    as after a task's answer."""
    with pool._lock:
        if not w.lent or w.exiting:
            return  # it died meanwhile: its death ended the loan
        item = w.item
        w.last_seen = time.monotonic()
        retire, plan = pool.dispatch.result(w, w.last_seen, over_memory=False)
        if retire:
            pool._forget_process(w)
    if w.sock is not None:
        pool.io.resume(w.sock, w.sock_data)
    pool._send_tasks(plan.sends)
    if retire:
        w.send(wire.SHUTDOWN)
    if plan.spawn:
        pool._spawn_soon()
    assert item is not None
    item.release()
    item.future.set_result(None)


def take_over(
    pool: Pool, w: WorkerHandle, task_id: int, label: str, future: Any, elapsed: float
) -> Any:
    """The client hands back the call running on `w` for `elapsed` seconds: the lease
    item takes its task id, label and future, and the pool reads `w` again
    (its answer, heartbeats, task_timeout from the call's start). Returns the
    lease's own future, for the caller to settle (with its locks let go); None
    when `w` is dying (its death fails the loan)."""
    with pool._lock:
        item = w.item
        if item is None or item.lease is None or w.exiting:
            return None
        lease_future = item.future
        item.lease = None
        item.task_id, item.label, item.future = task_id, label, future
        item.future.bind(weakref.ref(item), *pool._hooks)  # as `Pool.submit` binds
        pool._futures.add(item.future)
        item.started = True
        now = time.monotonic()
        w.task_started = now - elapsed
        w.last_seen = now
        w.cancel_deadline = None
    if w.sock is not None:
        pool.io.resume(w.sock, w.sock_data)
    return lease_future


__all__ = ["give_back", "lend", "take_over"]
