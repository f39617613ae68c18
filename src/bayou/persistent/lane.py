"""A persistent pool client's direct lane: one worker of the host's, lent to it.

A client whose calls come one after another asks the host for a lane
(`lanes`, the host's side) and, while it holds one, sends such calls to that
worker itself and reads their answers itself: two processes per call, as a
local pool, instead of three::

    submit, nothing else in flight ─▶ Lanes.take: TASK frame ─▶ the lent worker
    result() ─▶ follow_turn: poll the worker's socket (and the host's), spinning
                first ─▶ RESULT ─▶ settle here
    anything else (a second call in flight, map's bursts, an actor) ─▶ the host,
        as before; the lane is given back ("lane_return") once it is idle

The host keeps what it must see: a call still running after `handback`
seconds (a few tens of ms) is handed to it ("lane_back") with the socket, and
from then on it is a host task (heartbeat, task_timeout, cancel, its answer
relayed); so is a call `bayou.cancel` asks to stop. When the lent worker
dies, the host says so ("lane_died", with the error its pool made of the
death) and the call on the lane fails with it, under the call's own label.

Who reads: whoever holds the pool's read lock (the reader thread, a
follower) reads the lane too, as it reads the host's connection. Only what
can be decided without reading (take a call, ask for a lane) runs under the
pool's lock alone; giving the lane back needs the read lock, so a thread that
cannot get it leaves the job to the one that holds it (`return_wanted`). A
lane is taken off (given back, dead, handed back) under the pool's lock too,
the one `take` puts a call on it under: no call can go to a worker that was
just given back, whose answer would reach the host and never settle here.
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import select
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import interrupts, protocol
from ..futures import fail, started
from ..pool import WorkItem, lifetime, outcome
from ..worker import wire
from .lanes import LANE_LABEL

if TYPE_CHECKING:
    from .remote import RemotePool

QUICK = 0.01  # s: calls shorter than this, back to back, are worth a lane
BACK_TO_BACK = 0.05  # s between an answer and the next call that counts as back to back
IDLE_RETURN = 0.5  # s a lane may stay unused before it is given back
REFUSED_PAUSE = 0.25  # s before asking again after the host said "not now"


class Lane:
    """The lent worker's socket, and the call on it."""

    def __init__(self, lease_id: int, fd: int, info: dict, pop: Callable[[int], Any]) -> None:
        self.lease_id = lease_id
        self.pop = pop  # the pool's `_pop`: an answered call leaves its table
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)
        self.fd = fd
        self.reader = wire.FrameReader()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.spin: float = info["spin"]
        self.handback: float = info["handback"]
        self.item: WorkItem | None = None
        self.sent_at = 0.0
        self.idle_since = time.monotonic()
        self.calls = 0  # calls answered on it (the host counts them as served)
        self.dead = False  # its worker closed the stream
        self.watched = False  # in the reader thread's epoll
        self.cancel_grace: float | None = None  # `bayou.cancel` asked while on it

    def send(self, parts: list, fds: list[int]) -> bool:
        try:
            wire.send_frame(self.sock, wire.TASK_FDS if fds else wire.TASK, parts, fds)
            return True
        except OSError:
            return False

    def read(self, actions: list, environment: Any) -> None:
        """Read what is waiting, without blocking; answers go into `actions`."""
        while not self.dead and self.poller.poll(0):
            self._receive(actions, environment)

    def finish_frame(self, actions: list, environment: Any) -> None:
        """Read until no frame is half received, so the host can read on from here."""
        while not self.dead and not self.reader.between_frames():
            self._receive(actions, environment)

    def _receive(self, actions: list, environment: Any) -> None:
        """One receive (it blocks until something comes) and the frames it completes."""
        try:
            alive = self.reader.feed_from(self.sock)
        except OSError:
            alive = False
        self._frames(actions, environment)
        if not alive:
            self.dead = True

    def _frames(self, actions: list, environment: Any) -> None:
        frames = self.reader.frames
        while frames:
            kind, payload = frames.popleft()
            item = self.item
            if kind == wire.RESULT or kind == wire.RESULT_FDS:
                fds: list[int] = []
                if kind == wire.RESULT_FDS:
                    payload, fds = payload
                task_id, status, data, seconds = _decode(payload, fds)
                if item is None or item.task_id != task_id:
                    continue
                self.item = None
                self.pop(task_id)
                self.calls += 1
                self.idle_since = time.monotonic()
                actions.append(
                    functools.partial(settle_answer, item, status, data, seconds, environment)
                )
            elif kind == wire.PROGRESS:
                task_id, done, total, message = pickle.loads(payload)
                if item is not None and item.task_id == task_id:
                    actions.append(
                        functools.partial(item.future._set_progress, done, total, message)
                    )

    def close(self) -> None:
        self.reader.close()
        try:
            self.sock.close()
        except OSError:
            pass


def _decode(payload: bytearray, fds: list[int]) -> tuple:
    """(task id, status, data, seconds) of a RESULT, as `frames` reads one."""
    meta, body = wire.unpack(payload)
    task_id, status, blob_len, desc, _released, seconds = meta
    try:
        buffers = protocol.result_buffers(payload, body, desc, fds, None, None)
        data: Any = (payload, body, body + blob_len, buffers)
        if status != wire.OK:
            data = pickle.loads(memoryview(payload)[body : body + blob_len])
    except Exception as exc:  # a protocol error or no memory to map: fail this call
        status, data = wire.RAISED, exc
    return task_id, status, data, seconds


def settle_answer(item: WorkItem, status: int, data: Any, seconds: float | None, env: Any) -> None:
    """Settle a client's call from its worker's answer (read on the lane, or relayed
    by the host), with the call's own duration, which sizes map's batches."""
    if started(item.future):
        item.future.record_seconds(seconds)
        outcome.settle(item, status, data, env)


class Lanes:
    """A client's lane, if it holds one, and when to ask for one or give it back."""

    def __init__(self, pool: RemotePool) -> None:
        self.pool = pool
        self.enabled = pool._epoll is not None  # the reader thread must watch the lane
        self.lane: Lane | None = None
        self.asked: int | None = None  # the lease id asked for, not yet answered
        self.refused_until = 0.0
        self.return_wanted = False
        self.handed: tuple[int, WorkItem] | None = None  # (lease, call) handed back last
        self._lease_ids = itertools.count(1)
        self._last_answer = -1e9
        self._last_quick = False

    # -- from user threads (the pool's lock, never the read lock) ---------------------

    def take(self, item: WorkItem) -> bool:
        """Send `item` down the lane, when there is one and nothing else is in flight."""
        lane, pool = self.lane, self.pool
        if lane is None:
            return False
        with pool._lock:
            lifetime.check_accepting(pool.broken, pool._shutdown)
            if lane is not self.lane or lane.item is not None or lane.dead or pool._items:
                return False  # calls overlap: the host (`RemotePool.submit` releases us)
            pool._register(item)
            lane.item = item
        item.future.bind(item.task_id, *pool._hooks)
        item.future.set_running_or_notify_cancel()  # nobody else has it yet: PENDING
        # The worker is not asked to poll for the next call (spin_after False), only
        # we poll for its answer. It runs in the host's session, so in another
        # scheduler autogroup than ours: when a wake-up puts both on one CPU, its
        # sched_yield does not yield to us and each call waits for a preemption
        # (compare.py's interleaved blocks, 2 cores: 85-89 us a round trip with
        # both polling, 45-46 us with only us; apart on two CPUs, 38 against 46).
        parts, fds = protocol.encode_task(
            item.task_id, item.call_kind, item.fn_record, item.args_blob, item.roots,
            item.oob, False,
        )  # fmt: skip
        lane.sent_at = time.monotonic()
        if not lane.send(parts, fds):  # its worker is gone and never had the call
            with pool._lock:
                ours = lane.item is item  # (else "lane_died" failed it meanwhile)
                lane.item = None
                lane.dead = True
            if ours and not pool._send(("submit", *pool._fields(item, True))):  # the host's
                pool._break(f"lost the connection to the persistent pool {pool.name!r}")
        item.release()
        return True

    def release(self) -> None:
        """Calls overlap (a burst, a second call in flight): give the lane back as soon as
        it is idle, so the host has all its workers for them."""
        if self.lane is None:
            return
        self.return_wanted = True
        self._service_if_free()

    def _service_if_free(self) -> None:
        """`service` now if no other thread reads; else the reader does it soon."""
        if self.pool._read_lock.acquire(blocking=False):
            actions: list = []
            try:
                self.service(actions)
            finally:
                self.pool._read_lock.release()
            self.pool._run(actions)

    def note_answer(self, seconds: float | None) -> None:
        """A call answered through the host: was it quick (a lane would pay)?"""
        self._last_answer = time.monotonic()
        self._last_quick = seconds is not None and seconds < QUICK

    def maybe_open(self) -> None:
        """After a call went to the host with nothing else in flight: ask for a lane
        when the calls come back to back and are quick."""
        now = time.monotonic()
        if (
            not self.enabled
            or self.lane is not None
            or self.asked is not None
            or not self._last_quick
            or now - self._last_answer > BACK_TO_BACK
            or now < self.refused_until
        ):
            return
        self.asked = next(self._lease_ids)
        self.pool._send(("lane_open", self.asked))

    def cancel(self, item: WorkItem, grace: float) -> bool:
        """`bayou.cancel` on a call on the lane: it is handed to the host, which stops it."""
        lane = self.lane
        if lane is None or lane.item is not item:
            return False
        lane.cancel_grace = grace
        self._service_if_free()
        return True

    def carries(self, task_id: int) -> bool:
        lane = self.lane
        return lane is not None and lane.item is not None and lane.item.task_id == task_id

    # -- with the read lock held --------------------------------------------------------

    def timeout(self) -> float:
        """How long the reader may sleep before the lane needs it (s; -1: for ever)."""
        lane = self.lane
        if lane is None or lane.dead:
            return -1
        if lane.item is not None:
            due = lane.sent_at + lane.handback
        else:
            due = lane.idle_since + IDLE_RETURN
        return max(0.0, due - time.monotonic())

    def service(self, actions: list) -> None:
        """Read the lane; hand a long (or cancelled) call to the host; give an idle lane
        back when it is no longer wanted."""
        lane = self.lane
        if lane is None:
            return
        lane.read(actions, self.pool.environment)
        if lane.dead:
            self._unwatch(lane)  # EOF stays readable: the reader thread would spin
        now = time.monotonic()
        if lane.item is not None:
            if lane.cancel_grace is not None or now - lane.sent_at >= lane.handback:
                self._hand_back(lane, actions)
        elif lane.dead:
            self._drop(lane, only_idle=True)  # its death reaches the host: lease over
        elif self.return_wanted or now - lane.idle_since >= IDLE_RETURN:
            self.give_back()

    def give_back(self) -> bool:
        """Give the lane back if it is idle; whether it was."""
        lane = self.lane
        if lane is None or not self._drop(lane, only_idle=True, close=False)[0]:
            return False  # a call went on it meanwhile
        actions: list = []
        lane.finish_frame(actions, self.pool.environment)  # (heartbeats, nothing more)
        lane.close()
        if not lane.dead:
            self.pool._send(("lane_return", lane.lease_id, lane.calls))
        return True

    def _hand_back(self, lane: Lane, actions: list) -> None:
        lane.finish_frame(actions, self.pool.environment)
        if lane.dead or lane.item is None:
            return  # dead: "lane_died" settles its call; or answered meanwhile
        _, item = self._drop(lane)
        assert item is not None  # (only a reader, and we are it, takes a call off)
        self.handed = (lane.lease_id, item)
        elapsed = time.monotonic() - lane.sent_at
        self.pool._send(
            ("lane_back", lane.lease_id, item.task_id, item.label, elapsed, lane.calls)
        )
        if lane.cancel_grace is not None:
            self.pool._send(("cancel", item.task_id, lane.cancel_grace))

    def _drop(
        self, lane: Lane, only_idle: bool = False, close: bool = True
    ) -> tuple[bool, WorkItem | None]:
        """Stop using `lane`, under the pool's lock so that `take` cannot put a call on
        it meanwhile: (whether dropped, the call that was on it). With `only_idle`, a
        lane with a call on it is kept."""
        with self.pool._lock:
            item = lane.item
            if only_idle and item is not None:
                return False, None
            lane.item = None
            if self.lane is lane:
                self.lane = None
                self.return_wanted = False
        self._unwatch(lane)
        if close:
            lane.close()
        return True, item

    def _unwatch(self, lane: Lane) -> None:
        ep = self.pool._epoll
        if ep is not None and lane.watched:
            lane.watched = False
            try:
                ep.unregister(lane.fd)
            except (OSError, ValueError, KeyError):
                pass

    def follow_turn(self, deadline: float | None, actions: list, held: Any) -> str | None:
        """One follower turn (the read lock held): poll the host's connection and the
        lane, spinning first when the call is on the lane, until something gives
        actions to run; why the connection ended, or None."""
        pool = self.pool
        ep = pool._epoll
        assert ep is not None  # `follow` checked
        lane = self.lane
        paused = [pool._fd] + ([lane.fd] if lane is not None and not lane.dead else [])
        try:
            for fd in paused:
                ep.modify(fd, 0)  # the reader thread: sleep on
        except (OSError, ValueError):  # closed: detached meanwhile
            return None
        poller = pool._poller
        spin = False
        if lane is not None and not lane.dead:
            poller = select.poll()
            poller.register(pool._fd, select.POLLIN)
            poller.register(lane.fd, select.POLLIN)
            spin = lane.item is not None
        try:
            while not held.caught:
                wait = -1.0 if deadline is None else (deadline - time.monotonic()) * 1000
                if deadline is not None and wait <= 0:
                    return None
                if self.lane is lane and lane is not None and not lane.dead:
                    lane_wait = self.timeout() * 1000
                    wait = lane_wait if wait < 0 else min(wait, lane_wait)
                held.polling = True  # nothing is half done: Ctrl-C may stop the poll
                try:
                    events = wire.poll_briefly(poller, lane.spin) if spin and lane else []
                    spin = False
                    if not events:
                        events = poller.poll(wait)
                except interrupts.Interrupted:
                    return None
                finally:
                    held.polling = False
                for fd, _ in events:
                    if fd == pool._fd:
                        end = pool._take(pool._link.recv(), actions)
                        if end is not None:
                            return end
                if lane is not None:
                    if self.lane is lane:
                        self.service(actions)
                    if self.lane is not lane or lane.dead:  # handed or given back, dead
                        try:
                            poller.unregister(lane.fd)
                        except (KeyError, ValueError):
                            pass
                        lane = None
                if actions:
                    return None
            return None
        except (EOFError, OSError, pickle.UnpicklingError):
            return pool._lost()
        finally:
            for fd in paused:
                try:
                    ep.modify(fd, select.EPOLLIN)
                except (OSError, ValueError):
                    pass  # the lane was given back meanwhile, or detached

    # -- the host's messages (remote.MESSAGES) -----------------------------------------

    def on_lane(self, message: tuple, actions: list) -> None:
        _, lease_id, info = message
        fds = self.pool._link.recv_fds()
        pool = self.pool
        if not fds or lease_id != self.asked or pool._shutdown or pool.broken is not None:
            wire.close_fds(fds)
            pool._send(("lane_return", lease_id, 0))
            return
        self.asked = None
        wire.close_fds(fds[1:])
        os.set_inheritable(fds[0], False)  # a process we fork must not hold the worker
        lane = Lane(lease_id, fds[0], info, pool._pop)
        ep = pool._epoll
        assert ep is not None  # only asked for with epoll
        ep.register(lane.fd, select.EPOLLIN)
        lane.watched = True
        self.lane = lane

    def on_refused(self, message: tuple, actions: list) -> None:
        _, lease_id, never = message
        if lease_id == self.asked:
            self.asked = None
            self.refused_until = float("inf") if never else time.monotonic() + REFUSED_PAUSE

    def on_died(self, message: tuple, actions: list) -> None:
        _, lease_id, blob = message
        item = None
        lane = self.lane
        if lane is not None and lane.lease_id == lease_id:
            _, item = self._drop(lane)  # (under the lock: no call slips on meanwhile)
        elif self.handed is not None and self.handed[0] == lease_id:
            item = self.handed[1]
        if item is None or self.pool._pop(item.task_id) is None:
            return
        exc = pickle.loads(blob)
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (exc.args[0].replace(LANE_LABEL, item.label), *exc.args[1:])
        actions.append(functools.partial(fail, item.future, exc))

    def close(self, give_back: bool) -> None:
        """The client detaches (`give_back`: the lane goes back if idle) or breaks."""
        lane = self.lane
        if lane is None:
            return
        if not give_back or lane.dead or not self.give_back():
            self._drop(lane)  # its call, if any, fails with the rest (`_break`)


def message_handlers() -> dict[str, Callable[[RemotePool, tuple, list], str | None]]:
    """`remote.MESSAGES`' entries for the lane's messages."""

    def handler(method: Callable[[Lanes, tuple, list], None]) -> Callable:
        def handle(pool: RemotePool, message: tuple, actions: list) -> str | None:
            method(pool.lanes, message, actions)
            return None

        return handle

    return {
        "lane": handler(Lanes.on_lane),
        "lane_refused": handler(Lanes.on_refused),
        "lane_died": handler(Lanes.on_died),
    }


__all__ = ["Lane", "Lanes", "message_handlers"]
