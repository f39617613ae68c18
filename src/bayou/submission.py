"""From a call in the caller's thread to a `WorkItem` in a pool: the one path every
task, map chunk and actor call takes.

    submit(pool, make) ─▶ pool accepting? (else raise, as ProcessPoolExecutor)
                       ─▶ make() ─▶ encode_item: function record, arguments pickled
                          now (`boundary.TaskEncoder`), big buffers staged out of band
                          (shared memory, or inline) ─▶ WorkItem with a BayouFuture
                       ─▶ pool.submit(item) ─▶ the item's future

Pickling happens here, in the caller's thread, so a call that cannot be
pickled fails its own future at once, naming the culprit, and a call that
can never work in that env (`CrossVersionError`) raises at the call.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from . import boundary, errors, protocol
from . import pool as pool_module
from .futures import BayouFuture
from .pool import WorkItem
from .shm import SegmentPool
from .worker import wire

#: `batch_item` runs each call as ``methodcaller("__call__")(partial)``: stdlib on both sides.
_RUN_PARTIAL = operator.methodcaller("__call__")


class TargetPool(Protocol):
    """What submitting needs of a pool: a `Pool`, or a persistent pool's `RemotePool`."""

    @property
    def broken(self) -> str | None: ...
    @property
    def segments(self) -> SegmentPool | None: ...
    @property
    def retries(self) -> int: ...
    @property
    def _shutdown(self) -> bool: ...

    def submit(self, item: WorkItem) -> None: ...


class ExecutorPool(TargetPool, Protocol):
    """What an executor uses of its pool: a `Pool`, or a persistent pool's `RemotePool`."""

    @property
    def processes(self) -> dict[int, Any]: ...
    @property
    def thread(self) -> threading.Thread | None: ...

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...

    def submit_many(self, items: Sequence[WorkItem]) -> None: ...


def label(fn: Any) -> str:
    """How messages name a function: ``module.qualname``."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return f"a {type(fn).__name__} object"
    return f"{module}.{name}" if module else name


class NamedCall:
    """Stands for a function known only by name (a module's function in the env, an
    actor's method), for labels and error messages."""

    def __init__(self, label: str) -> None:
        module, _, name = label.rpartition(".")
        self.__module__ = module
        self.__qualname__ = name


def encode_item(
    encoder: boundary.TaskEncoder,
    pool: TargetPool,
    fn: Callable[..., Any],
    call_kind: int,
    payload: Any,
    *,
    fn_record: tuple[Any, ...] | None = None,
) -> WorkItem:
    """The work item for `fn` over `payload` ((args, kwargs) for a CALL, argument
    tuples for a chunk); `fn_record` when the function travels by a record of its own
    (a module's function by name, an actor's method)."""
    roots: frozenset[str] = frozenset()
    if fn_record is None:
        fn_record, roots = encoder.function(fn)
    buffers: list[Any] = []  # big pickle buffers, out of band: shared memory or inline
    if call_kind == wire.CALL:
        args, kwargs = payload
        args_blob, arg_roots = encoder.call_args(fn, args, kwargs, buffers)
    else:
        args_blob, arg_roots = encoder.chunk_args(fn, payload, buffers)
    return WorkItem(
        future=BayouFuture(),
        call_kind=call_kind,
        fn_record=fn_record,
        args_blob=args_blob,
        roots=roots | arg_roots if arg_roots else roots,
        label=label(fn),
        call=(call_kind, payload),
        oob=protocol.stage_buffers(buffers, pool.segments, private=pool.retries > 0)
        if buffers
        else None,
    )


def batch_item(
    encoder: boundary.TaskEncoder,
    pool: TargetPool,
    calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
) -> WorkItem:
    """One CHUNK task running ``(fn, args, kwargs)`` calls in order (`submit_batch`).

    When every call has the same function and the same keyword arguments
    (the usual ``delayed(f)(x, k=1)`` loop), it travels exactly like a `map`
    chunk; otherwise each call travels as a `functools.partial` run by
    `operator.methodcaller`: stdlib, so the env needs only the functions."""
    fn0, _, kwargs0 = calls[0]
    uniform = all(fn is fn0 and _same_kwargs(kw, kwargs0) for fn, _, kw in calls)
    try:
        if uniform:
            target = functools.partial(fn0, **kwargs0) if kwargs0 else fn0
            item = encode_item(encoder, pool, target, wire.CHUNK, [a for _, a, _ in calls])
        else:
            chunk = [(functools.partial(f, *a, **kw),) for f, a, kw in calls]
            item = encode_item(encoder, pool, _RUN_PARTIAL, wire.CHUNK, chunk)
    except errors.PicklingError:
        for fn, args, kwargs in calls:  # raise the error naming the call at fault
            encode_item(encoder, pool, fn, wire.CALL, (args, kwargs))
        raise
    others = len({id(fn) for fn, _, _ in calls}) - 1
    item.label = label(fn0) + (f" and {others} other functions" if others else "")
    item.label += f" (batch of {len(calls)} calls)"
    return item


def _same_kwargs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same keyword arguments, the same objects (no `==`: values may be arrays)."""
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def submit(pool: TargetPool, make: Callable[[], WorkItem]) -> BayouFuture[Any]:
    """Make the item (unless the pool refuses work anyway) and submit it."""
    # before encoding: a task refused anyway is not pickled (the pool checks again)
    pool_module.lifetime.check_accepting(pool.broken, pool._shutdown)
    try:
        item = make()
    except errors.CrossVersionError:
        raise  # can never work: say so at the call, with the fix
    except errors.PicklingError as exc:
        # Like ProcessPoolExecutor, a task that cannot be pickled fails its
        # future (at once, here) rather than raising from submit().
        fut: BayouFuture[Any] = BayouFuture()
        fut.set_exception(exc)
        return fut
    pool.submit(item)
    future: BayouFuture[Any] = item.future
    return future


def submit_each(
    pool: ExecutorPool, make: Callable[[Any], WorkItem], payloads: Iterable[Any]
) -> list[BayouFuture[Any]]:
    """`submit` for many calls at once, one task each (`map(chunksize=1)`): the
    pool queues them in one step, so a burst of tiny tasks is not paid for
    call by call. Each call keeps `submit`'s outcome: one that cannot be
    pickled fails its own future; a `CrossVersionError` raises once the calls
    before it are queued."""
    pool_module.lifetime.check_accepting(pool.broken, pool._shutdown)
    futures: list[BayouFuture[Any]] = []
    items: list[WorkItem] = []
    try:
        for payload in payloads:
            try:
                item = make(payload)
            except errors.CrossVersionError:
                raise
            except errors.PicklingError as exc:
                fut: BayouFuture[Any] = BayouFuture()
                fut.set_exception(exc)
                futures.append(fut)
                continue
            items.append(item)
            futures.append(item.future)
    finally:
        if items:
            pool.submit_many(items)
    return futures
