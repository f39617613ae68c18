"""One worker's frames in: what the supervisor (or a follower) does with them.

    socket readable ─▶ receive: FrameReader.feed_from ─▶ each frame:
        READY        the worker may take tasks (dispatch.ready_worker), send them
        RESULT(_FDS) map its out-of-band buffers (`protocol.result_buffers`), tell
                     the dispatcher (retire the worker? what next), send the next
                     tasks, then settle the future, at once or after a follower let
                     go of the socket (`settles`)
        PROGRESS     the future's progress callbacks
        HEARTBEAT    nothing: any frame counts as a sign of life (`last_seen`)
        INIT_FAILED  the initializer (or an actor's constructor) raised: the pool is
                     broken, as ProcessPoolExecutor's

`read_last` handles what a dead worker sent before it died: its pidfd may be
seen before its socket, and a RESULT already sent must not turn into a crash.
"""

from __future__ import annotations

import logging
import pickle
import select
import socket
import time
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..worker import wire
from .dispatch import Phase

if TYPE_CHECKING:
    from .records import WorkerHandle
    from .supervisor import Pool

logger = logging.getLogger("bayou.executor")
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def receive(
    pool: Pool, w: WorkerHandle, sock, settles: list | None = None, nowait: bool = False
) -> bool:
    """One receive from `w` (its `read_lock` held), its frames handled; False on EOF.

    `nowait`: nothing may be there (the supervisor's event may be stale: a follower
    read what it announced), so do not wait for the worker's next frame."""
    assert w.reader is not None  # it authenticated: its socket has a reader
    try:
        alive = w.reader.feed_from(sock, _DONTWAIT if nowait else 0)
    except BlockingIOError:
        return True
    except OSError:
        alive = False
    w.last_seen = time.monotonic()
    _frames(pool, w, settles)
    return alive


def _frames(pool: Pool, w: WorkerHandle, settles: list | None = None) -> None:
    """Handle the frames read from `w`; results are settled at once, or appended
    to `settles` as `_complete` arguments (a follower settles after it let go)."""
    assert w.reader is not None
    frames = w.reader.frames
    while frames and w.phase is not Phase.DEAD:
        kind, payload = frames.popleft()
        if kind == wire.RESULT:
            _on_result(pool, w, payload, [], settles)
        elif kind == wire.RESULT_FDS:
            body, fds = payload
            _on_result(pool, w, body, fds, settles)
        elif kind == wire.HEARTBEAT:
            pass
        elif kind == wire.PROGRESS:
            _on_progress(pool, w, payload)
        elif kind == wire.READY:
            _on_ready(pool, w)
        elif kind == wire.INIT_FAILED:
            _on_init_failed(pool, w, payload)


def _on_ready(pool: Pool, w: WorkerHandle) -> None:
    with pool._lock:
        plan = pool.dispatch.ready_worker(w, time.monotonic())
    pool._send_tasks(plan.sends)


def _on_init_failed(pool: Pool, w: WorkerHandle, payload: bytes) -> None:
    record = pickle.loads(payload)
    cause = protocol.rebuild_exception(record)
    stage = record.get("stage", "initializer")  # or an actor's "constructor"
    if stage == "constructor":  # the actor's calls fail with it: no traceback twice
        message = f"the constructor of {w.describe()} raised {cause!r}"
        logger.warning("%s", message)
    else:
        logger.critical("Exception in initializer of %s:", w.describe(), exc_info=cause)
        message = f"A worker's initializer failed: {cause!r}"
    pool._break(message, cause, init_failed=stage == "constructor")


def _on_progress(pool: Pool, w: WorkerHandle, payload: bytes) -> None:
    task_id, done, total, message = pickle.loads(payload)
    item = w.item
    if item is not None and item.task_id == task_id:
        item.future._set_progress(done, total, message)


def _on_result(
    pool: Pool, w: WorkerHandle, payload: bytearray, fds: list[int], settles: list | None = None
) -> None:
    meta, body = wire.unpack(payload)
    task_id, status, blob_len, desc, released, seconds = meta
    if released and pool.segments is not None:
        pool.segments.worker_released(released)
    item = w.item
    if item is None or item.task_id != task_id:
        wire.close_fds(fds)
        return
    try:
        reply = None
        if item.oob is not None and item.oob.reply is not None:
            item.oob.reply.in_worker = False  # the worker is done with it
            if desc is not None and desc[0] == wire.OOB_REPLY:
                reply = item.oob.take_reply()
        buffers = protocol.result_buffers(payload, body, desc, fds, reply, pool.segments)
        data: Any = (payload, body, body + blob_len, buffers)
        if status != wire.OK:
            data = pickle.loads(memoryview(payload)[body : body + blob_len])
    except Exception as exc:  # a protocol error or no memory to map: fail this task
        status, data = wire.RAISED, exc
        if reply is not None and pool.segments is not None:
            pool.segments.settle(reply)
    cap = pool.limits.max_memory
    over_memory = cap is not None and w.rss() > cap
    with pool._lock:
        retire, plan = pool.dispatch.result(w, time.monotonic(), over_memory)
        if retire:
            pool._forget_process(w)
    pool._send_tasks(plan.sends)
    if retire:
        w.send(wire.SHUTDOWN)
    if plan.spawn:
        pool._spawn_soon()
    item.future.record_seconds(seconds)  # the call's own duration, for map's batching
    if settles is None:
        pool._complete(item, status, data)
    else:
        settles.append((item, status, data))


def read_last(pool: Pool, w: WorkerHandle) -> None:
    """Handle what a dead worker sent before dying: its pidfd may be seen before
    its socket, and a RESULT already sent must not turn into a crash (or a re-run)."""
    assert w.sock is not None and w.reader is not None  # `workers.on_exit` checked
    try:
        w.sock.setblocking(False)
        while w.reader.feed_from(w.sock):
            pass
    except OSError:  # BlockingIOError: nothing more; anything else: it is gone
        pass
    _frames(pool, w)


def waiting(sock) -> bool:
    """Whether a frame from this worker is waiting to be read."""
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False
