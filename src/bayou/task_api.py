"""The in-task API (`report_progress`, `cancel_requested`) and `cancel` for the caller.

Inside a worker, user code calls `bayou.report_progress(...)`. When the
environment has bayou installed (always true for `env=None`), that is this
module, which forwards to the worker runtime's `_bayou_worker.context` if it
is loaded, i.e. if we run inside a bayou worker. Environments without bayou
get the runtime's stand-in package with the same two functions. Outside a
worker both are harmless: progress is dropped, cancellation is never asked.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future

_CONTEXT = "_bayou_worker.context"


def report_progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Tell the caller how far the running task is (`future.progress`, progress callbacks)."""
    context = sys.modules.get(_CONTEXT)
    if context is not None:
        context.report_progress(done, total, message)


def cancel_requested() -> bool:
    """True once the caller called `bayou.cancel` on the running task's future."""
    context = sys.modules.get(_CONTEXT)
    return bool(context is not None and context.cancel_requested())


def cancel(future: Future, grace: float = 5.0) -> bool:
    """Cancel a task, even a running one.

    A queued task is dropped. A running task is asked to stop
    (`cancel_requested()` turns True in it); if it is still running `grace`
    seconds later its worker is killed and replaced. Either way the future
    ends cancelled. Returns False if the future had already finished. For a
    future that bayou did not create, this is `future.cancel()`.
    """
    from .futures import BayouFuture

    if isinstance(future, BayouFuture):
        return future.cancel_hard(grace)
    return future.cancel()
