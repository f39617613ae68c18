"""The supervisor loop raised: a bug in bayou. Break the pool and leave nothing behind.

    fail_everything ─▶ pool broken (under the lock) ─▶ every worker SIGKILLed (its
        group), reaped, its socket, pipes, log and pidfd closed ─▶ every future
        the pool made and nobody settled fails with BrokenProcessPool, the bug
        as its __cause__

Written not to trust the supervisor's state: each step is best effort, and
nothing goes through the selector or the workers' sockets.
"""

from __future__ import annotations

import logging
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from ..futures import fail
from .dispatch import Phase

if TYPE_CHECKING:
    from .supervisor import Pool

logger = logging.getLogger("bayou.executor")


def fail_everything(pool: Pool, exc: BaseException) -> None:
    """The supervisor loop raised (a bug in bayou): break the pool, fail everything.

    Written not to trust the supervisor's state: every step is best effort,
    and nothing here goes through the selector or the workers' sockets.
    """
    message = f"the pool's supervisor thread crashed (a bug in bayou): {type(exc).__name__}: {exc}"
    try:
        logger.critical("bayou supervisor thread crashed", exc_info=exc)
    except BaseException:
        pass
    with pool._lock:
        d = pool.dispatch
        if d.broken is None:
            d.broken = message
            pool._broken_cause = exc
        items = [*d.ready, *d.pending]
        d.ready.clear()
        d.pending.clear()
        doomed = list(d.workers)
        for w in doomed:
            if w.item is not None:
                items.append(w.item)
                w.item.worker = None
                w.item = None
        d.idle.clear()
        futures = list(pool._futures)
    pool._logs.keep = True
    for w in doomed:
        w.kill_reason = w.kill_reason or (BrokenProcessPool, message)
        for kill in (os.killpg, os.kill):
            try:
                kill(w.pid, signal.SIGKILL)
                break
            except OSError:
                continue
    for w in doomed:
        try:
            w.popen.wait(timeout=5.0)
        except BaseException:
            pass
        w.phase = Phase.DEAD
        w.process._reaped.set()
        for closable in (w.sock, w.popen.stdout, w.popen.stderr, w.output.log_file):
            try:
                if closable is not None:
                    closable.close()
            except BaseException:
                pass
        if w.pidfd is not None:
            try:
                os.close(w.pidfd)
            except OSError:
                pass
            w.pidfd = None
    with pool._lock:
        pool.dispatch.workers.clear()
        pool.processes.clear()
    for item in items:
        item.release()
    # Every future this pool made and nobody settled, wherever the crash left
    # its item (the supervisor's records may be inconsistent by now).
    for fut in futures:
        try:
            err = BrokenProcessPool(message)
            err.__cause__ = exc
            fail(fut, err)
        except BaseException:
            pass
