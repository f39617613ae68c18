"""`EnvExecutor.map`'s batching: argument tuples in, futures out, results in order.

    map(fn, *iterables) ─▶ MapFeeder.fill ─▶ (kind, future, calls) per task ─▶ results()
        chunksize=1      one task per call (`executor.submit`)
        chunksize=n      a CHUNK task of n calls: ProcessPoolExecutor's semantics
        chunksize=None   ITEMS tasks sized as it goes: each call keeps its own result
                         or exception (chunksize=1 semantics), about `BATCH_SECONDS`
                         of measured work per task, at most `MAX_BATCH` calls
        buffersize=k     at most k calls (tasks, for chunks) submitted ahead of the
                         results consumed; the executor is then held weakly

Per-call seconds measured in the workers size the next batches, and are
remembered per function across maps (`MapExecutor._call_seconds`). The
executor is reached only through the small interface `MapExecutor`.
"""

from __future__ import annotations

import collections
import itertools
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from . import errors
from .futures import BayouFuture
from .worker import wire


class MapExecutor(Protocol):
    """What map's batching needs of an executor."""

    _max_workers: int
    _call_seconds: weakref.WeakKeyDictionary

    def submit(self, fn: Callable, /, *args: Any) -> Future: ...

    def _encode_function(self, fn: Callable) -> tuple[tuple, frozenset]: ...

    def _submit_calls(
        self, fn: Callable, kind: int, calls: list, fn_record: tuple | None, roots: frozenset
    ) -> Future: ...

    def _submit_each(self, fn: Callable, calls: list) -> Sequence[Future]: ...


def _result_or_cancel(fut: Future, timeout: float | None = None) -> Any:
    try:
        try:
            return fut.result(timeout)
        finally:
            fut.cancel()
    finally:
        del fut


SINGLE, CHUNK, BATCH = 0, 1, 2  # what a map future's result is: a value, a list, a batch
BATCH_SECONDS = 0.02  # measured work per automatic batch
MAX_BATCH = 1024  # calls per automatic batch
UNMEASURED_BATCH = 4  # calls per automatic batch until one batch has been timed
EACH_BURST = 256  # chunksize=1 calls queued in one step (`MapExecutor._submit_each`)


class MapFeeder:
    """Turns map's argument tuples into submitted tasks, eagerly or within a buffer.

    `tasks` holds (kind, future, calls) in submission order. With
    `buffersize`, the executor is held weakly (as CPython 3.14 does): once it
    is gone no more tasks are submitted.
    """

    def __init__(
        self,
        executor: MapExecutor,
        fn: Callable,
        args_iter: Iterator,
        chunksize: int | None,
        buffersize: int | None,
    ) -> None:
        self.fn = fn
        self.args_iter = args_iter
        self.chunksize = chunksize
        self.buffersize = buffersize
        self.tasks: collections.deque = collections.deque()
        self.pending_calls = 0  # calls in `tasks`
        self.exhausted = False
        self.workers = executor._max_workers
        self.submitted = 0  # calls, written by the submitting thread only
        self.completed = 0  # calls, written by done callbacks only
        # seconds per call, measured in workers; a later map of the same function
        # starts from what the last one measured (`MapExecutor._call_seconds`)
        self._hints = executor._call_seconds
        try:
            self.per_call: float | None = self._hints.get(fn)
        except TypeError:  # not weakly referenceable: nothing remembered
            self.per_call = None
        self._executor = executor if buffersize is None else weakref.ref(executor)
        self._fn_record: tuple | None = None
        self._roots: frozenset = frozenset()
        self._fn_error: BaseException | None = None
        if chunksize != 1:
            try:
                self._fn_record, self._roots = executor._encode_function(fn)
            except errors.CrossVersionError:
                raise
            except errors.PicklingError as exc:
                self._fn_error = exc

    def executor(self) -> MapExecutor | None:
        if isinstance(self._executor, weakref.ref):
            return self._executor()
        return self._executor

    def fill(self, limit: int | None) -> None:
        """Submit until the iterables end or `limit` calls (tasks, for chunks) are pending."""
        if self.exhausted:
            return
        executor = self.executor()
        if executor is None:
            self.exhausted = True
            return
        fixed = self.chunksize is not None
        while True:
            room = None
            if limit is not None:
                room = limit - (len(self.tasks) if fixed else self.pending_calls)
                if room <= 0:
                    return
            if self.chunksize == 1:  # single calls: a burst at a time (`_submit_each`)
                calls = list(itertools.islice(self.args_iter, min(room or EACH_BURST, EACH_BURST)))
                if not calls:
                    self.exhausted = True
                    return
                self._submit_each(executor, calls)
                continue
            size = self.chunksize if fixed else self._batch_size(room)
            calls = list(itertools.islice(self.args_iter, size))
            if not calls:
                self.exhausted = True
                return
            self._submit(executor, calls)

    def _batch_size(self, room: int | None) -> int:
        queued = self.submitted - self.completed
        size = 1 + queued // (2 * self.workers)
        per_call = self.per_call
        if per_call is None:
            cap = UNMEASURED_BATCH
        else:
            cap = max(1, int(BATCH_SECONDS / max(per_call, 1e-7)))
        size = min(size, cap, MAX_BATCH)
        return max(1, size if room is None else min(size, room))

    def _submit(self, executor: MapExecutor, calls: list) -> None:
        fn = self.fn
        n = len(calls)
        self.submitted += n
        self.pending_calls += n
        if self.chunksize == 1 or (self.chunksize is None and n == 1):
            self.tasks.append((SINGLE, executor.submit(fn, *calls[0]), 1))
            self._count_when_done(self.tasks[-1][1], 1)
            return
        if self._fn_error is not None:
            fut: Future[Any] = BayouFuture()
            fut.set_exception(self._fn_error)
            self.tasks.append((CHUNK, fut, n))
            return
        kind = wire.CHUNK if self.chunksize is not None else wire.ITEMS

        fut = executor._submit_calls(fn, kind, calls, self._fn_record, self._roots)
        if kind == wire.ITEMS and fut.done() and isinstance(fut.exception(), errors.PicklingError):
            # One argument cannot be pickled: submit the calls one by one, so
            # that only that call fails, at its place (chunksize=1 semantics).
            self.submitted -= n
            self.pending_calls -= n
            for args in calls:
                self._submit(executor, [args])
            return
        self.tasks.append((CHUNK if kind == wire.CHUNK else BATCH, fut, n))
        self._count_when_done(fut, n)

    def _submit_each(self, executor: MapExecutor, calls: list) -> None:
        """chunksize=1: one task per call. Their durations are not recorded: only
        automatic batching sizes by them."""
        futures = executor._submit_each(self.fn, calls)
        self.submitted += len(futures)
        self.pending_calls += len(futures)
        append = self.tasks.append
        for fut in futures:
            append((SINGLE, fut, 1))

    def _count_when_done(self, fut: Future, n: int) -> None:
        ref = weakref.ref(self)

        def done(f: Future, n: int = n) -> None:
            feeder = ref()
            if feeder is None:
                return
            feeder.completed += n
            seconds = getattr(f, "seconds", None)  # the calls' duration in the worker
            if seconds is not None:
                old = feeder.per_call
                feeder.per_call = seconds / n if old is None else 0.5 * (old + seconds / n)
                try:
                    feeder._hints[feeder.fn] = feeder.per_call
                except TypeError:
                    pass

        fut.add_done_callback(done)

    def pop(self) -> tuple[int, list[Future]]:
        """The next task's kind and its future in a box (`_result_or_cancel(box.pop())`
        leaves no reference to the future, hence to its result, in the caller's frame).

        With a buffer, the next tasks are submitted first, as Python 3.14 does:
        once k results are yielded, at most k + buffersize calls (tasks, for
        explicit chunks) have been taken from the iterables.
        """
        kind, fut, n = self.tasks.popleft()
        self.pending_calls -= n
        if self.buffersize is not None:
            self.fill(self.buffersize if self.chunksize is not None else self.buffersize - n + 1)
        return kind, [fut]

    def cancel_all(self) -> None:
        while self.tasks:
            self.tasks.popleft()[1].cancel()


def results(feeder: MapFeeder, end_time: float | None) -> Iterator:
    """Yield results in order, cancelling the rest if the consumer stops (CPython's logic).

    No local variable holds a result while the generator is suspended, and each
    future is popped before it is waited on: the iterator keeps no reference to
    a result it has already yielded (CPython's test_free_reference).
    """
    try:
        while feeder.tasks:
            kind, box = feeder.pop()
            timeout = None if end_time is None else end_time - time.monotonic()
            if kind == SINGLE:
                yield _result_or_cancel(box.pop(), timeout)
            elif kind == CHUNK:
                yield from _pop_each(_result_or_cancel(box.pop(), timeout))
            else:
                yield from _pop_batch(_result_or_cancel(box.pop(), timeout))
    finally:
        feeder.cancel_all()


def _pop_each(values: list) -> Iterator:
    """Yield a chunk's results in order, dropping each as it goes (`_chain_from_iterable_of_lists`)."""
    values.reverse()
    while values:
        yield values.pop()


def _pop_batch(batch: tuple) -> Iterator:
    """An automatic batch: its values, then the exception of the call that raised, if any."""
    values, error = batch
    del batch
    yield from _pop_each(values)
    if error is not None:
        raise error
