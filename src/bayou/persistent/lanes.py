"""The host's side of direct lanes: lending one worker to a client that calls back to back.

Through the host, a call crosses three processes (client, host, worker) on
each way; on a small machine the host's part alone is a third of a round
trip. A client whose calls come one after another asks for a lane, and the
host lends it an idle worker: the client then writes TASK frames to that
worker's socket and reads its RESULTs itself (`lane`), as a local pool does::

    client ── ("lane_open", lease) ──▶ on_open: may it? (the rules below)
                                          └─ a lease item into the pool ─▶ an idle
                                             worker ─▶ Lease.lent: stop reading it
    client ◀─ ("lane", lease, info) + a copy of the worker's socket (SCM_RIGHTS)
       ... the client's calls go straight to the worker and back ...
    client ── ("lane_return", lease, calls) ──▶ give the worker back to the pool
    client ── ("lane_back", lease, task id, label, seconds, calls) ──▶ a call that
              runs long: the pool takes it over as one of its tasks (heartbeat,
              task_timeout, cancel, its answer relayed as any other)
    the worker dies while lent ─▶ ("lane_died", lease, error) ─▶ the client fails
              the call it had on it with that error

The rules: a pool with ``retries`` or ``max_tasks_per_child`` never lends
(those count calls the host would not see), nor one with a memory cap (it
retires a worker that grew past the cap after the call that grew it, which
needs to see each call), nor one of a single worker; at
most ``max_workers - 1`` workers are lent at a time, so the clients without a
lane always have one; and none while tasks wait for a worker. The lease waits
for a worker like a task (the one running the client's last call, usually,
or a new one the pool starts). A client that goes away holding a lane leaves a
worker whose stream may be cut mid-frame: it is killed (and replaced).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from .. import errors
from ..futures import BayouFuture
from ..pool import WorkItem, lending, workers
from ..worker import wire
from .relay import RelayFuture, pickle_exception

if TYPE_CHECKING:
    from ..pool import Pool
    from ..pool.records import WorkerHandle
    from .session import Session

logger = logging.getLogger("bayou.persistent")

LANE_LABEL = "a call on a direct lane"  # the client puts its call's label in its place
HANDBACK_AFTER = 0.05  # s a call runs on a lane before the client hands it to the pool


class Lease:
    """One worker lent (or about to be) to one client.

    asked ─▶ lent ─▶ returned | handed (its call taken over) | ended (died, or the
    session ended)."""

    def __init__(self, session: Session, pool: Pool, lease_id: int) -> None:
        self.session = session
        self.pool = pool
        self.lease_id = lease_id
        self.state = "asked"
        self.worker: WorkerHandle | None = None
        self._lock = threading.Lock()  # state changes: the session's thread vs the pool's
        future: BayouFuture = BayouFuture()
        self.item = WorkItem(
            future=future,
            call_kind=wire.CALL,
            fn_record=(),
            args_blob=b"",
            roots=frozenset(),
            label=LANE_LABEL,
            lease=self,
        )
        self.item.future.add_done_callback(self._ended)

    def lent(self, w: WorkerHandle) -> None:
        """The pool gave the lease its worker (`WorkerHandle.send_task`, any thread)."""
        with self._lock:
            asked = self.state == "asked"
            if asked and lending.lend(self.pool, w):
                self.state, self.worker = "lent", w
                fd = os.dup(w.sock.fileno()) if w.sock is not None else -1
            else:
                self.state = "returned"
        if self.state != "lent" or fd < 0:
            lending.give_back(self.pool, w)
            if asked:
                self.session.notify(("lane_refused", self.lease_id, False))
            return
        handback = HANDBACK_AFTER
        for limit in (self.pool.limits.task_timeout, self.pool.limits.heartbeat_timeout):
            if limit is not None:
                handback = min(handback, limit / 2)
        info = {"pid": w.pid, "who": w.describe(), "spin": self.pool.spin, "handback": handback}
        self.session.host.count_lane()
        self.session.notify(("lane", self.lease_id, info), fds=[fd])

    def _ended(self, fut: Any) -> None:
        """The lease item is done: given back, taken over, or its worker died."""
        with self._lock:
            lost = self.state == "lent"
            if lost:
                self.state = "ended"
        if not lost:
            return
        if fut.cancelled():
            exc: BaseException = errors.WorkerCrashedError(
                f"the persistent pool {self.session.host.name!r} stopped the worker lent "
                f"to this client while running {LANE_LABEL}"
            )
        else:
            exc = fut.exception() or errors.WorkerCrashedError(LANE_LABEL)
        self.session.notify(("lane_died", self.lease_id, pickle_exception(exc)))

    def give_back(self) -> None:
        with self._lock:
            state, self.state = self.state, "returned"
        if state == "lent" and self.worker is not None:  # (still asked: `lent` gives it
            lending.give_back(self.pool, self.worker)  # back when a worker comes)

    def take_over(self, task_id: int, label: str, elapsed: float) -> None:
        """The client hands its running call back: the pool reads its answer."""
        with self._lock:
            if self.state != "lent" or self.worker is None:
                return  # it died first: "lane_died" went (or goes) to the client
            future = RelayFuture(self.session, task_id, True)
            future.set_running_or_notify_cancel()
            lease_future = lending.take_over(
                self.pool, self.worker, task_id, label, future, elapsed
            )
            if lease_future is None:
                return  # dying: its death ends the lease
            self.state = "handed"
        lease_future.set_result(None)
        session = self.session
        with session.lock:
            session.items[task_id] = self.item
        self.item.future.add_done_callback(session._done)  # (take_over made it `future`)

    def abandon(self) -> None:
        """The client went away holding this lease: its worker's stream may be cut
        mid-frame, so the worker is killed (and replaced) rather than trusted."""
        with self._lock:
            state, self.state = self.state, "ended"
        if state == "lent" and self.worker is not None:  # (still asked: see give_back)
            self.item.cancel_requested = True  # its death ends nobody's call
            workers.kill(self.pool, self.worker, None)


def may_lend(pool: Pool) -> tuple[bool, bool]:
    """(whether to lend a worker now, whether never to)."""
    limits = pool.limits
    if (
        limits.retries
        or limits.max_tasks_per_child is not None
        or limits.max_memory is not None
        or limits.max_workers < 2
    ):
        return False, True
    with pool._lock:
        dispatch = pool.dispatch
        if dispatch.broken is not None or dispatch.shutdown_requested:
            return False, True
        if dispatch.pending or dispatch.ready:
            return False, False  # others wait for workers: not now
        lent = sum(1 for w in dispatch.workers if w.lent)
    return lent + 1 < limits.max_workers, False


# -- the client's messages (session.HANDLERS) ------------------------------------------


def on_open(session: Session, message: tuple) -> bool:
    lease_id = message[1]
    pool = session.host.pool
    assert pool is not None  # clients attach once the pool started
    ok, never = may_lend(pool)
    if not ok:
        session.notify(("lane_refused", lease_id, never))
        return True
    lease = Lease(session, pool, lease_id)
    session.leases[lease_id] = lease
    try:
        pool.submit(lease.item)  # an idle worker takes it at once: `Lease.lent`
    except Exception:
        session.leases.pop(lease_id, None)
        session.notify(("lane_refused", lease_id, True))
    return True


def on_return(session: Session, message: tuple) -> bool:
    _, lease_id, calls = message
    session.host.count_served(calls)
    lease = session.leases.pop(lease_id, None)
    if lease is not None:
        lease.give_back()
    return True


def on_back(session: Session, message: tuple) -> bool:
    _, lease_id, task_id, label, elapsed, calls = message
    session.host.count_served(calls)
    lease = session.leases.pop(lease_id, None)
    if lease is not None:
        lease.take_over(task_id, label, elapsed)
    return True


def abandon_all(session: Session) -> None:
    """The session ends: leases its client did not give back are taken back by force,
    but for the one it says it never received (it asked, then detached)."""
    leases = list(session.leases.items())
    session.leases.clear()
    for lease_id, lease in leases:
        if session.detached and lease_id == session.untouched_lease:
            lease.give_back()
        else:
            lease.abandon()


__all__ = ["HANDBACK_AFTER", "LANE_LABEL", "Lease", "abandon_all", "may_lend"]
