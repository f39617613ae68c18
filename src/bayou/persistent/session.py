"""One client of a pool host: its connection, its tasks, and the short way back.

A `Session` is one thread per client connection. It reads the client's
messages and hands each to its handler (`HANDLERS`, keyed on the message's
tag), and it carries a quick task's answer back itself::

    client ──submit──▶ session thread ─▶ WorkItem(RelayFuture) ─▶ Pool.submit ─▶ TASK
                       └─ follow: this thread reads the task's worker (`pool.follow`),
                          watching the client's socket too; the RESULT is settled
                          here (relay_settle), which sends the answer first
    client ◀──result── Outbox.send, from this thread, at once
                       └─ when calls come back to back, it then polls the client's
                          socket for a while (`CLIENT_SPIN_FACTOR`) before it sleeps

No thread hop is left on that path: not the supervisor's, not a writer's. A
task the session cannot follow (the client sent something else meanwhile,
all workers busy, a worker that dies) is settled by the supervisor as usual;
its messages go through the `Outbox`'s writer thread, which keeps them in
order with the session's own.

A client marks the futures of its first ``max_workers * (1 + PREFETCH)``
tasks in flight RUNNING itself (`remote`), as a local pool's prefetch
window: for those no "running" message is sent. For the others, "running"
goes out once `Pool.submit` has returned (it is noted under the pool's lock).

Tasks arrive already encoded by the client (its `TaskEncoder`), and results
go back undecoded (`relay_settle`): the host never imports the caller's
modules and never unpickles user objects. Messages are tuples whose first
item is their tag; a new kind of request is one more entry in `HANDLERS`.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import AuthenticationError, connection
from typing import TYPE_CHECKING

from .. import errors, protocol
from ..pool import Pool, WorkItem, follow
from ..worker import wire
from . import lanes
from .link import Link
from .outbox import Outbox
from .registry import version_mismatch, versions
from .relay import RelayFuture, pickle_exception

if TYPE_CHECKING:
    from .host import Host

logger = logging.getLogger("bayou.persistent")

# How long a session polls its client's socket for the next call after answering
# one, in units of the pool's `spin` (`BAYOU_SPIN_US`): the client's turn-around
# (decode the result, return, encode the next call) is longer than a worker's.
CLIENT_SPIN_FACTOR = 2.0


class Session:
    """One client connection, served by one thread (`run`)."""

    def __init__(self, host: Host, conn: connection.Connection, number: int) -> None:
        self.host = host
        self.conn = conn
        self.number = number
        self.client_pid: int | None = None
        self.items: dict[int, WorkItem] = {}
        self.lock = threading.Lock()
        self.link: Link | None = None  # after the handshake
        self.outbox: Outbox | None = None
        self.thread: threading.Thread | None = None
        self.detached = False
        self.answered_at: float | None = None  # when this thread last sent a result
        self.back_to_back = False  # the last call came within `spin` of the answer before
        self._held: list[tuple] | None = None  # "running" messages held during a submit
        self.leases: dict[int, lanes.Lease] = {}  # workers lent to the client, by lease id
        self.untouched_lease: int | None = None

    # -- sending -----------------------------------------------------------------------

    def notify(self, message: tuple, fds: list[int] | None = None) -> None:
        """Send `message` (and `fds`, closed here once sent) to the client: at once
        from this session's thread, else through the writer (no other thread may
        block on this client)."""
        outbox = self.outbox
        if outbox is None:
            if fds:
                wire.close_fds(fds)
            return
        if threading.current_thread() is self.thread:
            outbox.send(message, fds)
        else:
            outbox.post(message, fds)

    def running(self, task_id: int) -> None:
        """A task of ours was handed to a worker (called under the pool's lock)."""
        if self._held is not None and threading.current_thread() is self.thread:
            self._held.append(("running", task_id))  # sent once `Pool.submit` returns
        elif self.outbox is not None:
            self.outbox.post(("running", task_id))

    def answer(self, fut: RelayFuture, message: tuple) -> None:
        """A task's result, before its future is settled (`relay_settle`)."""
        fut.answered = True
        self.notify(message)
        if threading.current_thread() is self.thread:
            self.answered_at = time.monotonic()

    def _done(self, fut: RelayFuture) -> None:
        task_id = fut.task_id
        with self.lock:
            self.items.pop(task_id, None)
        self.host.count_served()
        if fut.answered:
            return
        if fut.cancelled():
            self.notify(("cancelled", task_id))
        else:
            self.notify(("exception", task_id, pickle_exception(fut.exception())))

    # -- the session's thread --------------------------------------------------------

    def run(self) -> None:
        try:
            if not self._authenticate():
                return
            self.thread = threading.current_thread()
            self.link = Link(self.conn)
            self.outbox = Outbox(self.link)
            self._serve(self.link)
        finally:
            self._end()

    def _serve(self, link: Link) -> None:
        poller = select.poll()
        poller.register(link.fileno(), select.POLLIN)
        assert self.host.pool is not None  # clients attach once the pool started
        spin = self.host.pool.spin * CLIENT_SPIN_FACTOR
        while True:
            if self.back_to_back and self.answered_at is not None:
                # calls come back to back: poll for the next one before sleeping, as a
                # worker does (`dispatch`: spin_after); a sleeping thread wakes late
                wire.poll_briefly(poller, spin)
            try:
                message = link.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                return
            if self.answered_at is not None:
                self.back_to_back = time.monotonic() - self.answered_at < spin
                self.answered_at = None
            handler = HANDLERS.get(message[0])
            if handler is None:
                logger.warning("client pid %s sent an unknown %r", self.client_pid, message[0])
                continue
            if not handler(self, message):
                return

    def _authenticate(self) -> bool:
        key = self.host.key
        try:
            connection.deliver_challenge(self.conn, key)
            connection.answer_challenge(self.conn, key)
            kind, hello = self.conn.recv()
        except (AuthenticationError, EOFError, OSError, ValueError, TypeError):
            logger.warning("rejected a connection that failed authentication")
            with contextlib.suppress(OSError):
                self.conn.close()
            return False
        mine = versions()
        theirs = {k: hello.get(k) for k in mine}
        self.client_pid = hello.get("pid")
        if kind != "hello" or theirs != mine:
            text = version_mismatch(self.host.name, mine, theirs, self.host.pid)
            logger.warning("refused client pid %s: %s", self.client_pid, text)
            with contextlib.suppress(OSError):
                self.conn.send(("refused", text))
                self.conn.close()
            return False
        self.conn.send(("welcome", self.host.welcome()))
        logger.info("client pid %s attached (session %d)", self.client_pid, self.number)
        return True

    # -- the client's requests (HANDLERS): each returns False to end the session -------

    def _on_submit(self, message: tuple, pool: Pool | None = None) -> bool:
        """A task for the host's pool, or (`pool`) for one of its actors."""
        pool = pool or self.host.pool
        assert pool is not None  # clients attach once the pool started
        (item,) = self._submit(pool, [message[1:]])
        if item.worker is not None and not item.future.done():
            # Read its worker here: the answer goes back from this thread. A message
            # from the client ends the wait; the supervisor reads the worker then.
            assert self.link is not None  # it sent us this
            follow.follow(pool, item, None, also=self.link.fileno())
        return True

    def _on_submit_many(self, message: tuple) -> bool:
        """Tasks sent together (`map(chunksize=1)`): queued in one step, none followed
        (the supervisor reads their answers, the writer thread sends them)."""
        assert self.host.pool is not None  # clients attach once the pool started
        self._submit(self.host.pool, message[1])
        return True

    def _submit(self, pool: Pool, tasks: list[tuple]) -> list[WorkItem]:
        """Queue the client's `tasks` (the fields of "submit" messages) in `pool`."""
        items, queued = [], []
        for task in tasks:
            task_id, call_kind, fn_record, args_blob, roots, label, buffers, started = task
            item = WorkItem(
                future=RelayFuture(self, task_id, started),
                call_kind=call_kind,
                fn_record=fn_record,
                args_blob=args_blob,
                roots=frozenset(roots),
                label=label,
            )
            with self.lock:
                self.items[task_id] = item
            items.append(item)
            try:
                if buffers:  # the client's big argument buffers (bytes): into shared memory
                    views = [memoryview(b) for b in buffers]
                    item.oob = protocol.stage_buffers(
                        views, pool.segments, private=pool.retries > 0
                    )
            except BaseException as exc:
                self._failed_submit(item, exc)
                continue
            queued.append(item)
        self._held = []
        try:
            if queued:
                pool.submit_many(queued)
        except BaseException as exc:
            for item in queued:
                self._failed_submit(item, exc, pool if pool is not self.host.pool else None)
        finally:
            held, self._held = self._held, None
            for running in held:
                self.notify(running)
        for item in items:
            # after the TASK went out (a future already done gets it called at once)
            item.future.add_done_callback(self._done)
        return items

    def _failed_submit(
        self, item: WorkItem, exc: BaseException, actor: Pool | None = None
    ) -> None:
        item.release()
        error = exc
        if actor is not None and actor.broken is not None:  # it died: as a local actor says
            error = errors.ActorDiedError(f"{actor.broken}: the call {item.label} was not run")
            error.__cause__ = actor.broken_cause
        if self.host.stop_event.is_set():  # raced with a stop: say so, not "shutdown"
            error = BrokenProcessPool(
                f"the persistent pool {self.host.name!r} was stopped ({self.host.stop_reason})"
            )
        fut = item.future
        if not fut.done():
            fut.set_running_or_notify_cancel()
            fut.set_exception(error)

    def _on_cancel(self, message: tuple) -> bool:
        _, task_id, grace = message
        with self.lock:
            item = self.items.get(task_id)
        if item is not None:
            assert self.host.pool is not None  # clients attach once the pool started
            self.host.pool.cancel(item, grace)
        return True

    # -- actors (persistent.actors) ---------------------------------------------------

    def _reply(self, request: int, answer: Callable[[], tuple]) -> bool:
        """Answer a client's `request` (`RemotePool.request`) with ("ok", *answer()),
        or with the error `answer` raised."""
        try:
            self.notify(("reply", request, ("ok", *answer())))
        except Exception as exc:
            self.notify(("reply", request, ("error", pickle_exception(exc))))
        return True

    def _on_actor(self, message: tuple) -> bool:
        _, request, name, label, constructor, roots, max_restarts, env_vars = message

        def create() -> tuple:
            made = self.host.actors.create(
                self.number, name, label, constructor, frozenset(roots), max_restarts, env_vars
            )
            return made.key, made.label

        return self._reply(request, create)

    def _on_actor_find(self, message: tuple) -> bool:
        _, request, key = message

        def find() -> tuple:
            found = self.host.actors.find(key)
            return found.key, found.label

        return self._reply(request, find)

    def _on_actor_info(self, message: tuple) -> bool:
        _, request, key = message
        return self._reply(request, lambda: (self.host.actors.find(key).entry(),))

    def _on_actor_submit(self, message: tuple) -> bool:
        key, task = message[1], message[2:]
        try:
            pool = self.host.actors.find(key).pool
        except errors.ActorDiedError as exc:
            self.notify(("exception", task[0], pickle_exception(exc)))
            return True
        return self._on_submit(("submit", *task), pool)

    def _on_actor_close(self, message: tuple) -> bool:
        _, key, cancel = message
        self.host.actors.close(key, cancel)
        return True

    def _on_info(self, message: tuple) -> bool:
        self.notify(("info", self.host.info()))
        return True

    def _on_detach(self, message: tuple) -> bool:
        self.detached = True
        # a lane the client asked for and never received: it never touched the worker
        self.untouched_lease = message[1] if len(message) > 1 else None
        return False

    # -- the end -------------------------------------------------------------------------

    def _end(self) -> None:
        lanes.abandon_all(self)
        with self.lock:
            leftovers = list(self.items.values())
        if leftovers and not self.detached:
            logger.warning(
                "client pid %s went away with %d task(s) outstanding: cancelling them",
                self.client_pid,
                len(leftovers),
            )
            for item in leftovers:
                with contextlib.suppress(Exception):
                    assert self.host.pool is not None
                    self.host.pool.cancel(item, 1.0)
        if self.client_pid is not None:
            logger.info("client pid %s detached (session %d)", self.client_pid, self.number)
        self.host.actors.session_ended(self.number)  # its unnamed actors: unreachable now
        if self.outbox is not None:
            self.outbox.close()
        self.host.forget(self)

    def close(self, reason: str) -> None:
        """Tell the client the pool is gone, and let the writer flush that (bounded wait)."""
        if self.outbox is not None:
            self.outbox.close(("stopped", reason), timeout=2.0)


HANDLERS: dict[str, Callable[[Session, tuple], bool]] = {
    "submit": Session._on_submit,
    "submit_many": Session._on_submit_many,
    "cancel": Session._on_cancel,
    "info": Session._on_info,
    "detach": Session._on_detach,
    "actor": Session._on_actor,
    "actor_find": Session._on_actor_find,
    "actor_info": Session._on_actor_info,
    "actor_submit": Session._on_actor_submit,
    "actor_close": Session._on_actor_close,
    "lane_open": lanes.on_open,
    "lane_return": lanes.on_return,
    "lane_back": lanes.on_back,
}
