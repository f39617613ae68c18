"""What a process running pools must do once, for all of them: at interpreter exit,
and in a forked child.

* At interpreter exit (`threading._register_atexit`, which runs before
  ``atexit`` callbacks and before non-daemon threads are joined, as CPython's
  concurrent.futures.process does), every live pool, local or a persistent
  pool's client, refuses new work and finishes what was submitted. A script
  ending on an uncaught Ctrl-C cancels queued work and stops running tasks
  instead (`shutdown(cancel_futures=True)`), rather than keeping the user
  waiting.
* In a forked child, the parent's pools exist as copies without their
  supervisor threads, maybe with their locks held by a parent thread: the
  child forgets them (it must not wait for them at its exit, nor write to the
  parent's wake pipe or workers). Each pool also refuses use from another
  process (`Pool.submit`).

`check_accepting` is the one submit guard: new work is refused once the interpreter
exits, the pool is broken or it was shut down.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol


class _Stoppable(Protocol):
    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...


_live: weakref.WeakSet[_Stoppable] = weakref.WeakSet()
_exiting = False
pid = os.getpid()  # this process's, kept current across forks (getpid is a system call)


def register(pool: _Stoppable) -> None:
    """`pool` is running: stop it at interpreter exit."""
    _live.add(pool)


def unregister(pool: _Stoppable) -> None:
    _live.discard(pool)


def check_accepting(broken: str | None, shutdown: bool) -> None:
    """Raise what ProcessPoolExecutor raises for new work it cannot take: the one submit
    guard of the executor (before encoding) and of local and remote pools (under their
    locks)."""
    if _exiting:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")
    if broken is not None:
        raise BrokenProcessPool(broken)
    if shutdown:
        raise RuntimeError("cannot schedule new futures after shutdown")


def check_owner(owner_pid: int) -> None:
    """A pool made in process `owner_pid` takes work only there, not in a forked child."""
    if pid != owner_pid:
        raise RuntimeError(
            f"this executor was created in process {owner_pid}, and process "
            f"{os.getpid()} is a fork of it: its workers and supervisor thread belong to "
            "that process. Create an EnvExecutor in the child instead."
        )


def _python_exit() -> None:
    global _exiting
    _exiting = True
    interrupted = not hasattr(sys, "ps1") and isinstance(
        getattr(sys, "last_value", None), KeyboardInterrupt
    )
    for pool in list(_live):
        with contextlib.suppress(Exception):
            pool.shutdown(wait=True, cancel_futures=interrupted)


def _after_fork_in_child() -> None:
    global _live, pid
    _live = weakref.WeakSet()
    pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

try:
    threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover
    import atexit

    atexit.register(_python_exit)
