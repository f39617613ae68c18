"""The worker processes, as the supervisor runs them: started on its thread, their
output pipes read, their deaths accounted for.

    spawn_as_needed ─▶ _spawn_one: process.start, pipes and pidfd into the selector,
                       dispatch.spawned
    on_pipe         ─▶ the worker's `output` (echo, log, stderr tail); EOF closes it
    kill            ─▶ SIGKILL its process group, once, noting why (the error its
                       task gets)
    on_exit         ─▶ its last frames read (`frames.read_last`), socket and pidfd
                       closed, reaped, its pipes drained, then dispatch.exited decides
                       the fate of its task (failed, retried, requeued, cancelled) and
                       whether workers die before READY too often (the pool breaks)

Spawning happens only on the supervisor thread: on Linux a worker asks for
PR_SET_PDEATHSIG, which fires when the *thread* that forked it ends, and the
supervisor lives exactly as long as the pool.
"""

from __future__ import annotations

import itertools
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING

from .. import errors
from ..futures import end_cancelled, set_exception
from . import frames, outcome, process
from .dispatch import Phase
from .output import WorkerOutput
from .records import WorkerHandle, WorkItem

if TYPE_CHECKING:
    from .supervisor import Pool

logger = logging.getLogger("bayou.executor")


def spawn_soon(pool: Pool) -> None:
    """Spawn what is needed: now on the supervisor thread, else ask it (no waiting)."""
    if threading.current_thread() is pool.thread:
        spawn_as_needed(pool)
    else:
        pool._calls.append((lambda: spawn_as_needed(pool), threading.Event()))
        pool._wake()


def spawn_as_needed(pool: Pool) -> None:
    while True:
        with pool._lock:
            if not pool.dispatch._spawn_needed():
                return
        if not _spawn_one(pool):
            return


def _spawn_one(pool: Pool) -> bool:
    used = {w.slot for w in pool._workers}
    slot = next(i for i in itertools.count() if i not in used)
    worker_id = next(pool._worker_ids)
    cmd = [*pool._command, pool.listener.path, str(worker_id), str(os.getpid())]
    environ = pool._environ
    if pool.worker_env is not None:
        try:
            environ = {**environ, **_slot_env(pool.worker_env, slot)}
        except Exception as exc:
            pool._break(f"worker_env({slot}) failed: {type(exc).__name__}: {exc}", exc)
            return False
    try:
        popen = process.start(cmd, environ, pool.listener.key)
    except OSError as exc:
        pool._break(f"cannot start a worker with {pool.environment.python}: {exc}", exc)
        return False
    output = WorkerOutput(pool.output, pool._logs, pool.environment.hash, slot, popen.pid)
    w = WorkerHandle(slot, worker_id, popen, output, pool.environment)
    w.title = pool.title
    for tag, stream in (("out", popen.stdout), ("err", popen.stderr)):
        assert stream is not None  # stdout=PIPE, stderr=PIPE
        os.set_blocking(stream.fileno(), False)
        pool.selector.register(stream, selectors.EVENT_READ, (tag, w))
    w.pidfd = process.open_pidfd(popen.pid)
    if w.pidfd is not None:
        pool.selector.register(w.pidfd, selectors.EVENT_READ, ("pidfd", w))
    with pool._lock:
        pool.dispatch.spawned(w)
        pool.processes[w.pid] = w.process
    return True


def _slot_env(worker_env: Callable[[int], dict[str, str]], slot: int) -> dict[str, str]:
    """`worker_env(slot)`, checked: a mapping of str to str (the error names the slot
    and the offending entry)."""
    env = worker_env(slot)
    if not isinstance(env, dict):
        raise TypeError(f"it returned a {type(env).__name__}, not a dict")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{key!r}: {value!r} is not a str: str pair")
    return env


def kill(pool: Pool, w: WorkerHandle, reason: tuple[type | None, str] | None) -> None:
    if w.dead:
        return
    if w.kill_reason is None:
        w.kill_reason = reason or (errors.WorkerCrashedError, "")
    process.kill_group(w.pid)


def on_socket(pool: Pool, w: WorkerHandle) -> None:
    lock = w.read_lock  # `start_reading`, inlined: this runs for every answer
    if not lock.acquire(False):
        return  # a caller thread follows this worker (an event from before it took over)
    w.reading_thread = get_ident()
    try:
        # An event from before it was lent to a persistent pool's client (who reads
        # it now), or from before a follower took the socket and read what the event
        # announced: then nothing is there, and a blocking read would wait for the
        # worker's next frame (`nowait`).
        item = w.item
        if item is not None and item.lease is not None:  # (`w.lent`)
            return
        alive = frames.receive(pool, w, w.sock, nowait=True)
    finally:
        w.reading_thread = None
        lock.release()
    if not alive:
        on_exit(pool, w)


def on_pipe(pool: Pool, w: WorkerHandle, tag: str, fd: int) -> None:
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        w.output.feed(tag, data)
    else:
        _close_pipe(pool, w, tag)


def _close_pipe(pool: Pool, w: WorkerHandle, tag: str) -> None:
    stream = w.popen.stdout if tag == "out" else w.popen.stderr
    if stream is None or stream.closed:
        return
    w.output.finish(tag)
    try:
        pool.selector.unregister(stream)
    except (KeyError, ValueError):
        pass
    stream.close()


def _drain_pipes(pool: Pool, w: WorkerHandle) -> None:
    for tag, stream in (("out", w.popen.stdout), ("err", w.popen.stderr)):
        if stream is None or stream.closed:
            continue
        while True:
            try:
                data = os.read(stream.fileno(), 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            w.output.feed(tag, data)
        _close_pipe(pool, w, tag)


def on_exit(pool: Pool, w: WorkerHandle) -> None:
    """A worker is gone (EOF on its socket, pidfd, or we killed it): account for it."""
    if w.exiting:
        return
    w.phase = Phase.EXITING
    with w.read_lock:  # a follower polls the pidfd too: it lets go at once
        if w.sock is not None and w.reader is not None and not w.lent:
            frames.read_last(pool, w)  # (a lent worker's last frames are its client's)
        w.phase = Phase.DEAD
    if w.pidfd is not None:
        pool.selector.unregister(w.pidfd)
        os.close(w.pidfd)
        w.pidfd = None
    with w.send_lock:
        if w.sock is not None:
            try:
                pool.selector.unregister(w.sock)
            except (KeyError, ValueError):
                pass
            w.sock.close()
            w.sock = None
    if w.reader is not None:
        w.reader.close()  # descriptors of frames nobody will read
    try:
        rc = w.popen.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        kill(pool, w, None)
        rc = w.popen.wait()
    finally:
        _drain_pipes(pool, w)
    try:
        os.killpg(w.pid, signal.SIGKILL)  # leftovers of its group, if any
    except OSError:
        pass
    w.process._reaped.set()
    w.output.close()

    with pool._lock:
        pool._forget_process(w)
        end = pool.dispatch.exited(
            w, rc, time.monotonic(), lambda item: _exit_error(pool, w, item, rc)
        )
    if end.keep_logs:
        pool._logs.keep = True
    if end.fate == "retried":
        logger.warning("%s; retrying (attempt %d)", end.error, end.item.attempts + 1)
    if end.out_of_restarts:
        restarts = pool.dispatch.limits.max_restarts
        pool._break(
            f"{w.describe()} {process.exit_text(rc)} with no restarts left "
            f"(max_restarts={restarts})" + w.output.tail()
        )
    elif end.start_failed:
        pool._break(
            f"workers of env {pool.environment.hash} ({pool.environment.python}) die "
            f"before they are ready: the last one {process.exit_text(rc)}" + w.output.tail()
        )
    pool._send_tasks(end.plan.sends)
    if end.plan.spawn:
        spawn_as_needed(pool)
    if end.fate == "cancelled":
        end.item.release()
        end_cancelled(end.item.future)
    elif end.fate == "failed":
        end.item.release()
        assert end.error is not None  # a failed task has its error
        set_exception(end.item.future, end.error)


def _exit_error(
    pool: Pool, w: WorkerHandle, item: WorkItem, rc: int
) -> tuple[BaseException, bool]:
    """The exception for a task whose worker died, and whether a retry is allowed."""
    return outcome.exit_error(
        w.describe(),
        item.label,
        w.kill_reason,
        rc,
        w.pid,
        tuple(w.output.err_tail),
        w.output.tail(),
        pool._broken_cause,
    )
