"""The futures bayou returns, and the only place that settles them.

A `BayouFuture` is a real `concurrent.futures.Future` (``wait``,
``as_completed``, ``asyncio.wrap_future`` work unchanged) with the task's
progress on top. The pool that runs the task gives it, through `bind` and
`record_seconds`::

    follow     result()/exception() on a RUNNING future read the worker's
               socket in the waiting thread (`pool.follow`)
    cancel     `bayou.cancel(future, grace=)` (`cancel_hard`)
    seconds    how long the call ran in the worker (map's batching)

Every outcome goes through `set_result`, `set_exception`, `fail` and
`end_cancelled` here, which never raise: a future the user cancelled
meanwhile keeps its state, and a settling thread never dies of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import _base as futures_base
from typing import Any, NamedTuple, TypeVar

logger = logging.getLogger("bayou.executor")

__all__ = ["BayouFuture", "Progress", "end_cancelled", "fail", "set_exception", "set_result"]

_T = TypeVar("_T")


class Progress(NamedTuple):
    """What a task last reported with `bayou.report_progress`."""

    done: float
    total: float | None
    message: str | None


class BayouFuture(Future[_T]):
    """A `concurrent.futures.Future` that also carries the task's progress."""

    def __init__(self) -> None:
        super().__init__()
        self._progress: Progress | None = None
        # made at the first add_progress_callback: few futures have one, and every
        # object less per task is less for the garbage collector to walk
        self._progress_callbacks: list[Callable[[BayouFuture[_T], Progress], object]] | None = None
        self._follow: Callable[[Any, float | None], float | None] | None = None
        self._cancel: Callable[[Any, float], bool] | None = None
        self._key: Any = None
        self.seconds: float | None = None  # how long the call ran in the worker

    def bind(
        self,
        key: Any,
        cancel: Callable[[Any, float], bool],
        follow: Callable[[Any, float | None], float | None] | None = None,
    ) -> None:
        """The pool queued the task: how to cancel it with a grace, and how the
        thread waiting in `result()` can read the worker itself (saving the
        supervisor's hop). Both are the pool's, shared by its futures, and get
        `key` (the pool's handle on this task) first."""
        self._key, self._cancel, self._follow = key, cancel, follow

    def record_seconds(self, seconds: float | None) -> None:
        self.seconds = seconds

    def cancel_hard(self, grace: float) -> bool:
        """`bayou.cancel`: drop the queued task, or stop the running one (killed after
        `grace` seconds); False if it had already finished."""
        if self._cancel is None:
            return self.cancel()
        return self._cancel(self._key, grace)

    @property
    def progress(self) -> Progress | None:
        return self._progress

    def result(self, timeout: float | None = None) -> _T:
        if self._state == futures_base.RUNNING and self._follow is not None:
            timeout = self._follow(self._key, timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == futures_base.RUNNING and self._follow is not None:
            timeout = self._follow(self._key, timeout)
        return super().exception(timeout)

    def add_progress_callback(self, fn: Callable[[BayouFuture[_T], Progress], object]) -> None:
        """Call `fn(future, progress)` on each update: from bayou's supervisor thread,
        or from the thread waiting in `result()`, which reads its worker itself."""
        with self._condition:
            if self._progress_callbacks is None:
                self._progress_callbacks = []
            self._progress_callbacks.append(fn)

    def _set_progress(self, done: float, total: float | None, message: str | None) -> None:
        progress = Progress(done, total, message)
        with self._condition:
            self._progress = progress
            callbacks = list(self._progress_callbacks or ())
        for fn in callbacks:
            try:
                fn(self, progress)
            except Exception:
                logger.exception("exception calling progress callback for %r", self)

    def _force_cancel(self) -> bool:
        """Mark a *running* future cancelled (after bayou stopped its task)."""
        with self._condition:
            if self._state == futures_base.FINISHED:
                return False
            if self._state != futures_base.CANCELLED_AND_NOTIFIED:
                self._state = futures_base.CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]  # CPython's, not in typeshed
        return True


def set_result(fut: Future[Any], value: Any) -> None:
    """Settle `fut` with `value`, unless it is already done (cancelled meanwhile)."""
    if not fut.done():
        try:
            fut.set_result(value)
        except Exception:  # InvalidStateError: cancelled meanwhile
            pass


def set_exception(fut: Future[Any], exc: BaseException) -> None:
    """Settle `fut` with `exc`, unless it is already done."""
    if not fut.done():
        try:
            fut.set_exception(exc)
        except Exception:
            pass


def started(fut: Future[Any]) -> bool:
    """Make `fut` RUNNING if it is not yet; False if it was cancelled (or ended)
    meanwhile. For an answer that may arrive before its future was started."""
    if fut.running():
        return True
    try:
        return fut.set_running_or_notify_cancel()
    except RuntimeError:  # ended meanwhile
        return False


def fail(fut: Future[Any], exc: BaseException) -> None:
    """Settle `fut` with `exc` whatever its state: one still pending is started first (a
    future takes an outcome once RUNNING); one the user cancelled stays cancelled."""
    if fut.done() and not fut.cancelled():
        return
    if not fut.running():
        try:
            if not fut.set_running_or_notify_cancel():
                return  # cancelled before it started: its waiters are told now
        except RuntimeError:
            return  # cancelled, and its waiters were told already
    set_exception(fut, exc)


def end_cancelled(fut: Future[Any]) -> None:
    """End `fut` cancelled: a pending one as `Future.cancel()` does, a RUNNING one (its
    task was handed to a worker, which bayou stopped) by force."""
    if fut.running():
        if isinstance(fut, BayouFuture):
            fut._force_cancel()
    elif fut.cancel():
        fut.set_running_or_notify_cancel()
