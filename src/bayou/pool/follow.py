"""The leader/follower read: the thread waiting in `result()` reads its own worker.

Instead of the supervisor thread reading the RESULT and waking the waiting
thread (two thread switches, on a machine where each costs tens of
microseconds), the thread blocked in `result()` takes the worker's socket out
of the supervisor's selector and reads it itself::

    result() ─▶ follow: unregister sock ─▶ poll(sock, pidfd) ─▶ RESULT ─▶ next TASK
           ◀─ settle the future ◀─ register sock again ◀─┘

It handles every frame the worker sends meanwhile exactly as the supervisor
would (`frames.receive`: heartbeats, progress, the result and the scheduling
that follows it) and gives the socket back before it settles the future, so
done-callbacks run with nothing held. A dying worker makes its pidfd
readable, so the follower steps aside and the supervisor accounts for the
death as usual. A sequential caller polls for `Pool.spin` seconds before it
sleeps (`_spin`). Ctrl-C stops it while it sleeps and waits while it does
bookkeeping (`interrupts`). A bug in here is handed to the supervisor as if
its loop had raised it (`crash.fail_everything`).

While tasks wait in the queue beyond the prefetch window, nobody follows: the
supervisor is busy with the answers anyway.

A persistent pool's host follows too: the session thread of the client that
submitted the task (`persistent.session`), with that client's socket as
`also`: a message from the client ends the wait, and the supervisor reads
the worker again.
"""

from __future__ import annotations

import functools
import select
import threading
import time
from typing import TYPE_CHECKING

from .. import interrupts
from ..worker import wire
from . import frames, lifetime

if TYPE_CHECKING:
    from .records import WorkerHandle, WorkItem
    from .supervisor import Pool

FOLLOW_SLICE = 0.25  # s a follower polls before it looks again (pidfd-less platforms)


def by_ref(pool_ref, item_ref, timeout: float | None) -> float | None:
    """A future's follow hook (`BayouFuture.bind`): `follow` through weak references."""
    pool, item = pool_ref(), item_ref()
    if pool is None or item is None:
        return timeout
    return follow(pool, item, timeout)


def follow(
    pool: Pool, item: WorkItem, timeout: float | None, also: int | None = None
) -> float | None:
    """Wait for a running task by reading its worker's socket in this thread.

    When it cannot take the socket (another thread reads it, the task is not
    on a worker yet, this is a forked child) it does nothing and the caller
    waits on the future as before. It also stops waiting when the descriptor
    `also` turns readable. Returns what is left of `timeout`.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    w = item.worker
    if w is None or w.exiting or threading.current_thread() is pool.thread:
        return timeout
    if pool.dispatch.pending:
        # Tasks wait beyond the prefetch window (a map's): the supervisor is awake
        # reading answers and sending the next tasks anyway, and taking sockets from
        # it costs more than the wake-up it saves (2 cores, map(chunksize=1),
        # interleaved: 19.4k, 18.5k and 19.6k tasks/s following, 21.1k, 19.9k and
        # 21.7k not)
        return timeout
    if lifetime.pid != pool._pid:
        return timeout
    held = interrupts.HeldInterrupts()  # Ctrl-C waits until our bookkeeping is whole
    held.hold()
    try:
        _follow(pool, w, item, deadline, held, also)
    finally:
        held.release()  # a Ctrl-C that came meanwhile is raised here
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _follow(pool: Pool, w: WorkerHandle, item: WorkItem, deadline, held, also: int | None) -> None:
    lock = w.read_lock  # `start_reading`, inlined: this runs for every wait
    if not lock.acquire(False):
        return
    w.reading_thread = threading.get_ident()
    settles: list = []
    with pool._lock:
        pool._following += 1  # the supervisor ends only after we settled (shutdown)
    try:
        try:
            sock = w.sock
            if item.worker is not w or sock is None or w.exiting:
                return
            if not pool.io.pause(sock):
                return  # closing, or not registered (yet): the supervisor reads
            try:
                _read_as_follower(pool, w, item, sock, deadline, settles, held, also)
            finally:
                if w.sock is sock and not w.dead and not w.lent:  # (lent meanwhile: a
                    pool.io.resume(sock, w.sock_data)  # client reads it now, `lending`)
        finally:
            w.reading_thread = None
            lock.release()
        for settled in settles:
            pool._complete(*settled)
    except Exception as exc:
        # A bug in bayou, as if the supervisor loop had raised it: the supervisor
        # breaks the pool and fails every unsettled future (`crash`).
        pool._calls.append((functools.partial(_reraise, exc), threading.Event()))
        pool._wake()
    finally:
        with pool._lock:
            pool._following -= 1
        if pool.dispatch.shutdown_requested:
            pool._wake()


def _spin(pool: Pool, poller, w: WorkerHandle) -> list:
    """Poll without sleeping for up to `pool.spin` seconds, when `w` runs the only
    task in flight: a sequential caller then gets a tiny task's result without
    its CPU going idle and being woken (the wake-up is most of a round trip on a
    virtual machine). With other tasks in flight their workers need the CPU
    more, so it sleeps at once."""
    if pool.dispatch.pending or pool.dispatch.ready:
        return []
    for x in pool._workers:
        if x.item is not None and x is not w:
            return []
    return wire.poll_briefly(poller, pool.spin)


def _read_as_follower(
    pool: Pool,
    w: WorkerHandle,
    item: WorkItem,
    sock,
    deadline,
    settles: list,
    held,
    also: int | None = None,
) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if w.pidfd is not None:
        poller.register(w.pidfd, select.POLLIN)
    if also is not None:
        poller.register(also, select.POLLIN)
    sock_fd = sock.fileno()
    spin = pool.spin > 0
    while not settles and w.item is item and not item.future.done() and not held.caught:
        wait = FOLLOW_SLICE
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return
        held.polling = True  # nothing is half done while we sleep: Ctrl-C may stop it
        try:
            events = _spin(pool, poller, w) if spin else None
            spin = False  # once per wait: a task still running after it is not tiny
            if not events:
                events = poller.poll(wait * 1000)
        except interrupts.Interrupted:
            return
        finally:
            held.polling = False
        if w.exiting:
            return
        if not any(fd == sock_fd for fd, _ in events):
            if events:
                return  # the pidfd (it died: the supervisor takes over), or `also`
            continue
        if not frames.receive(pool, w, sock, settles):
            return  # EOF: the supervisor sees it too once the socket is back


def _reraise(exc: BaseException) -> None:
    raise exc
