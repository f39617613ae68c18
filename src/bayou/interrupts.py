"""Hold Ctrl-C back while a caller thread does the supervisor's bookkeeping.

A thread waiting in `Future.result()` reads its worker's RESULT itself
(`Pool.follow`). When that thread is the main thread, Python may raise
KeyboardInterrupt between any two bytecodes. While it only sleeps in `poll`,
that is harmless, and it is what the user wants. But the same thread also
receives frames, marks the worker idle, hands it the next task and settles the
future. Cut off halfway, that would lose a frame or leave a worker neither
busy nor idle, and the pool would then wait for it forever at shutdown.

`HeldInterrupts` swaps SIGINT's Python handler for its own while a follower
runs (main thread only: no other thread runs Python signal handlers)::

    follow ─▶ hold() ─▶ poll ─────────▶ read, bookkeeping, settle ─▶ release()
                        │ SIGINT:              │ SIGINT: noted            │
                        ▼ raise Interrupted    ▼ (nothing raised)         ▼
                        stop following ──────────────────────▶ the original handler runs
                                                               (KeyboardInterrupt)

A signal that lands while the follower sleeps wakes it at once. One that
lands mid-bookkeeping waits until the state is whole again. Either way the
original handler runs exactly once, after the follower let go of everything.
"""

from __future__ import annotations

# The C functions under `signal.signal`/`signal.getsignal`: the Python wrappers
# convert handlers to enums and back, about 7 us of each result() that follows
# (both are CPython's own, and behave the same for the callables used here).
import _signal  # type: ignore[import-not-found]  # (typeshed has no stub)
import signal
import threading
from typing import Any


class Interrupted(BaseException):
    """SIGINT arrived while the follower was polling: stop following at once."""


class HeldInterrupts:
    """SIGINT handling for one `Pool.follow` call; see the module docstring."""

    __slots__ = ("_previous", "_caught", "polling")

    def __init__(self) -> None:
        self._previous: Any = None
        self._caught: tuple | None = None
        self.polling = False  # True only around the follower's blocking poll

    def hold(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = _signal.getsignal(signal.SIGINT)
        if not callable(previous):  # SIG_IGN / SIG_DFL / a C handler: no Python exception
            return
        self._previous = previous
        _signal.signal(signal.SIGINT, self._note)

    @property
    def caught(self) -> bool:
        return self._caught is not None

    def _note(self, signum: int, frame: Any) -> None:
        self._caught = (signum, frame)
        if self.polling:
            raise Interrupted

    def release(self) -> None:
        """Put the original handler back, and run it if SIGINT came meanwhile."""
        previous, self._previous = self._previous, None
        if previous is None:
            return
        _signal.signal(signal.SIGINT, previous)
        caught, self._caught = self._caught, None
        if caught is not None:
            previous(*caught)
