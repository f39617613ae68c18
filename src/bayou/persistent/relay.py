"""What the host sends back for a client's task: its answer undecoded, and its states.

The host's `Pool` settles a client's task through `relay_settle` (its settle
strategy) instead of decoding the worker's answer: the answer is made
portable (`portable_result`) and goes to the client, which unpickles it, so
the host never imports the user's classes. The task's future is a
`RelayFuture`, whose state changes the client hears of (its "running", its
progress); its done-callback (`Session._done`) sends a failure or a
cancellation the pool decided on.
"""

from __future__ import annotations

import contextlib
import pickle
from typing import TYPE_CHECKING, Any

from ..futures import BayouFuture
from ..pool import WorkItem
from ..worker import wire

if TYPE_CHECKING:
    from .session import Session


def relay_settle(item: WorkItem, status: int, data: Any) -> None:
    """The host's settle strategy for its `Pool`: hand results back undecoded.

    A local pool decodes a worker's answer (`outcome.settle`); here it is only
    made portable (`portable_result`) and sent to the client, which unpickles
    it: the host never imports the user's classes. The answer goes out first,
    the host's own bookkeeping (the future's done-callback) follows.
    """
    fut = item.future
    try:
        if item.cancel_requested:
            fut._force_cancel()
            return
        raw = portable_result(status, data)
        del data
    finally:
        item.release()
    if fut.done():
        return
    if isinstance(fut, RelayFuture):  # (not the host's own warm-up tasks)
        # with the call's own duration in the worker, which sizes map's batches
        fut.session.answer(fut, ("result", fut.task_id, status, raw, fut.seconds))
    with contextlib.suppress(Exception):
        fut.set_result(None)


def portable_result(status: int, data: Any) -> Any:
    """A worker's result as `Pool._complete` receives it, in a form that pickles.

    OK results arrive as ``(payload, start, end, out-of-band buffers)`` (views
    that may map shared memory): they travel as ``(pickle bytes, [buffer
    bytes] or None)`` and `remote.local_result` rebuilds the tuple. Failures
    are error records (dicts of builtins) or, for a protocol error, an
    exception, which travels pickled.
    """
    if status == wire.OK:
        payload, start, end, buffers = data
        blob = bytes(memoryview(payload)[start:end])
        return blob, None if buffers is None else [bytes(b) for b in buffers]
    if isinstance(data, BaseException):
        return pickle_exception(data)
    return data


def pickle_exception(exc: BaseException | None) -> bytes:
    try:
        return pickle.dumps(exc, 4)
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"), 4)


class RelayFuture(BayouFuture[Any]):
    """The host-side future of one client task: its state changes go to the client."""

    def __init__(self, session: Session, task_id: int, client_started: bool) -> None:
        super().__init__()
        self.session = session
        self.task_id = task_id
        self.client_started = client_started  # RUNNING at the client already
        self.answered = False  # its result went to the client (`relay_settle`)

    def set_running_or_notify_cancel(self) -> bool:
        started = super().set_running_or_notify_cancel()
        if started and not self.client_started:  # under the pool's lock: never send here
            self.session.running(self.task_id)
        return started

    def _set_progress(self, done: float, total: float | None, message: str | None) -> None:
        self.session.notify(("progress", self.task_id, done, total, message))


__all__ = ["RelayFuture", "pickle_exception", "portable_result", "relay_settle"]
