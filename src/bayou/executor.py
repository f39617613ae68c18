"""`EnvExecutor`: ProcessPoolExecutor's interface, with the work running in an environment.

Data flow::

    submit(fn, *args) ─▶ TaskEncoder (pickle fn and args now, in the caller's
    thread: errors surface on the returned future at once, naming the culprit)
    ─▶ WorkItem ─▶ Pool (pool.py) ─▶ worker ─▶ RESULT ─▶ BayouFuture

`map` batches `chunksize` calls into one task like ProcessPoolExecutor.
`import_module` / `execute` call functions of a module that exists only in
the environment (or a file), by reference, without importing it here.

The constructor takes ProcessPoolExecutor's arguments in its order
(`max_workers, mp_context, initializer, initargs, *, max_tasks_per_child`);
`mp_context` is accepted for compatibility and otherwise unused: workers are
always fresh interpreters of the environment's Python.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import _base as futures_base
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

from . import errors, protocol
from . import pool as pool_module
from .environment import Environment, current_environment
from .pool import OUTPUT_MODES, Pool, WorkItem
from .worker import wire

logger = logging.getLogger("bayou.executor")


class Progress(NamedTuple):
    """What a task last reported with `bayou.report_progress`."""

    done: float
    total: float | None
    message: str | None


class BayouFuture(Future):
    """A `concurrent.futures.Future` that also carries the task's progress."""

    def __init__(self) -> None:
        super().__init__()
        self._progress: Progress | None = None
        self._progress_callbacks: list[Callable[[BayouFuture, Progress], object]] = []

    @property
    def progress(self) -> Progress | None:
        return self._progress

    def add_progress_callback(self, fn: Callable[[BayouFuture, Progress], object]) -> None:
        """Call `fn(future, progress)` (from bayou's supervisor thread) on each update."""
        with self._condition:
            self._progress_callbacks.append(fn)

    def _set_progress(self, done: float, total: float | None, message: str | None) -> None:
        progress = Progress(done, total, message)
        with self._condition:
            self._progress = progress
            callbacks = list(self._progress_callbacks)
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
        self._invoke_callbacks()
        return True


def _label(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return f"a {type(fn).__name__} object"
    return f"{module}.{name}" if module else name


def _resolve_environment(env: Any) -> Environment:
    if env is None:
        return current_environment()
    if isinstance(env, Environment):
        return env
    from .provision import provision

    return provision(env)


class EnvExecutor(Executor):
    """Run callables in worker processes of an environment, as ProcessPoolExecutor does.

    The positional arguments are ProcessPoolExecutor's. Keyword-only additions:

    env
        The environment the workers run in (an `Env` spec, provisioned on
        first use, or an `Environment`); default: the caller's interpreter.
    heartbeat_timeout, task_timeout, retries, max_memory_per_worker
        Fault handling: see DESIGN.md and `bayou.errors`.
    log_dir
        Where each worker's output log file goes (default: a temporary
        directory, removed at shutdown unless something went wrong).
    output
        What happens to what user code in a worker writes to its stdout and
        stderr (fd 1 and 2; never mixed with bayou's own protocol):

        * ``"inherit"`` (default): written unchanged, as it arrives, to the
          caller's *current* ``sys.stdout`` / ``sys.stderr``, as a
          ProcessPoolExecutor's workers would, and also, line by line, to the
          worker's log file.
        * ``"logging"``: not echoed; each line goes to the logger
          ``bayou.worker.<env hash>.<slot>`` (stdout at INFO, stderr at
          WARNING, with ``worker_pid`` and ``stream`` record attributes) and
          to the worker's log file.

        Either way the last stderr lines of a worker that dies are quoted in
        its `WorkerCrashedError`.

    `shutdown(cancel_futures=True)` cancels the tasks not yet handed to a
    worker; at most one task per worker is handed over ahead of time (like
    ProcessPoolExecutor's call queue). A handed-over task is asked to stop
    (`bayou.cancel_requested()`) and, if still running a second later, is
    killed and its future cancelled.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple = (),
        *,
        max_tasks_per_child: int | None = None,
        env: Any = None,
        heartbeat_timeout: float | None = 10.0,
        task_timeout: float | None = None,
        retries: int = 0,
        max_memory_per_worker: int | None = None,
        log_dir: str | os.PathLike | None = None,
        output: str = "inherit",
    ) -> None:
        if max_workers is None:
            count = getattr(os, "process_cpu_count", os.cpu_count)()
            max_workers = count or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        for name, value in (
            ("heartbeat_timeout", heartbeat_timeout),
            ("task_timeout", task_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUT_MODES))}")

        self.environment = _resolve_environment(env)
        if self.environment.python_xy < (3, 8):
            raise ValueError(
                f"bayou workers need Python >= 3.8; env {self.environment.hash} has "
                f"Python {self.environment.python_version}"
            )
        self._encoder = protocol.TaskEncoder(
            self.environment.python_xy, foreign=not self.environment.is_current
        )
        init_blob, init_roots = None, frozenset()
        if initializer is not None:
            try:
                init_blob, init_roots = self._encoder.dumps((initializer, tuple(initargs)))
            except Exception as exc:
                raise errors.PicklingError(
                    f"cannot pickle the initializer {_label(initializer)} or its initargs: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        self._max_workers = max_workers
        self._mp_context = mp_context or multiprocessing.get_context("spawn")
        self._pool = Pool(
            self.environment,
            max_workers=max_workers,
            initializer=init_blob,
            initializer_roots=init_roots,
            max_tasks_per_child=max_tasks_per_child,
            heartbeat_timeout=heartbeat_timeout,
            task_timeout=task_timeout,
            retries=retries,
            max_memory_per_worker=max_memory_per_worker,
            log_dir=log_dir,
            output=output,
        )
        self._finalizer = weakref.finalize(self, self._pool.shutdown, False, False)

    # -- ProcessPoolExecutor compatibility -------------------------------------------

    @property
    def _processes(self) -> dict:
        return self._pool.processes

    @property
    def _broken(self) -> str | bool:
        return self._pool.broken or False

    @property
    def _executor_manager_thread(self):
        return self._pool.thread

    # -- encoding ------------------------------------------------------------------------

    def _item(
        self, fn: Callable, call_kind: int, payload: Any, *, fn_record: tuple | None = None
    ) -> WorkItem:
        roots: frozenset = frozenset()
        if fn_record is None:
            fn_record, roots = self._encoder.function(fn)
        if call_kind == wire.CALL:
            args_blob, arg_roots = self._encoder.call_args(fn, *payload)
        else:
            args_blob, arg_roots = self._encoder.chunk_args(fn, payload)
        return WorkItem(
            future=BayouFuture(),
            call_kind=call_kind,
            fn_record=fn_record,
            args_blob=args_blob,
            roots=roots | arg_roots,
            label=_label(fn),
        )

    def _submit_item(self, make: Callable[[], WorkItem]) -> BayouFuture:
        if pool_module._global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._pool.broken is not None:
            raise BrokenProcessPool(self._pool.broken)
        if self._pool._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        try:
            item = make()
        except errors.CrossVersionError:
            raise  # can never work: say so at the call, with the fix
        except errors.PicklingError as exc:
            # Like ProcessPoolExecutor, a task that cannot be pickled fails its
            # future (at once, here) rather than raising from submit().
            fut = BayouFuture()
            fut.set_exception(exc)
            return fut
        self._pool.submit(item)
        return item.future

    # -- the Executor interface ---------------------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> BayouFuture:
        return self._submit_item(lambda: self._item(fn, wire.CALL, (args, kwargs)))

    submit.__doc__ = Executor.submit.__doc__

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator:
        """Like ProcessPoolExecutor.map: `chunksize` calls travel as one task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        if chunksize == 1:
            fs = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
            return _results(fs, end_time, chunked=False)
        try:
            fn_record, roots = self._encoder.function(fn)
        except errors.CrossVersionError:
            raise
        except errors.PicklingError as exc:
            fn_record, roots, error = None, frozenset(), exc
        else:
            error = None
        fs = []
        args_iter = zip(*iterables, strict=False)
        while chunk := list(itertools.islice(args_iter, chunksize)):
            if error is not None:
                fut = BayouFuture()
                fut.set_exception(error)
                fs.append(fut)
                continue

            def make(chunk=chunk) -> WorkItem:
                item = self._item(fn, wire.CHUNK, chunk, fn_record=fn_record)
                item.roots = item.roots | roots
                return item

            fs.append(self._submit_item(make))
        return _results(fs, end_time, chunked=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with `cancel_futures`, cancel queued tasks and stop running ones.

        Tasks not yet handed to a worker are cancelled. Each handed-over task
        (running, or next in line for its worker) sees `bayou.cancel_requested()`
        turn True; if it ends within a second its outcome stands, otherwise
        its worker is killed and its future ends cancelled.
        """
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    # -- calling into modules that live in the environment ---------------------------------

    def import_module(self, module: str | os.PathLike) -> ModuleProxy:
        """A proxy whose attributes call functions of `module` in the environment.

        `module` is a dotted name importable in the environment (or among the
        caller's own modules), or the path of a ``.py`` file. The module is
        not imported in the caller.
        """
        return ModuleProxy(self, module)

    def execute(
        self,
        module: str | os.PathLike,
        function: str,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> Any:
        """Call `module.function(*args, **kwargs)` in the environment and return its result."""
        return self.submit_call(module, function, args, kwargs).result()

    def submit_call(
        self,
        module: str | os.PathLike,
        function: str,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> BayouFuture:
        """Like `execute`, returning a future."""
        name, path, roots = _module_reference(module)
        record = (wire.FN_REF, name, function, path)
        label = f"{name}.{function}"

        def make() -> WorkItem:
            stub = _NamedCall(label)
            item = self._item(stub, wire.CALL, (tuple(args), dict(kwargs or {})), fn_record=record)
            item.roots = item.roots | roots
            return item

        return self._submit_item(make)


class _NamedCall:
    """Stands for a function known only by name, for labels and error messages."""

    def __init__(self, label: str) -> None:
        module, _, name = label.rpartition(".")
        self.__module__ = module
        self.__qualname__ = name


def _module_reference(module: str | os.PathLike) -> tuple[str, str | None, frozenset]:
    """(module name, file path or None, extra sys.path roots) for `import_module`."""
    text = os.fspath(module)
    if text.endswith(".py") or os.sep in text or (os.altsep and os.altsep in text):
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such module file: {path}")
        return path.stem, str(path), frozenset()
    roots: frozenset = frozenset()
    if text in sys.modules:
        root = protocol.module_root(text)
        if root is not None:
            roots = frozenset([root])
    return text, None, roots


class ModuleProxy:
    """`ex.import_module(...)`: attribute access gives functions that run in the env."""

    def __init__(self, executor: EnvExecutor, module: str | os.PathLike) -> None:
        self._executor = executor
        self._module = module

    def __getattr__(self, name: str) -> RemoteFunction:
        if name.startswith("__"):
            raise AttributeError(name)
        return RemoteFunction(self._executor, self._module, name)

    def __repr__(self) -> str:
        return f"<bayou module proxy {os.fspath(self._module)!r} in env {self._executor.environment.hash}>"


class RemoteFunction:
    """A function of an environment-side module: call it (blocking) or `submit` it."""

    def __init__(self, executor: EnvExecutor, module: str | os.PathLike, name: str) -> None:
        self._executor = executor
        self._module = module
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._executor.execute(self._module, self._name, args, kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> BayouFuture:
        return self._executor.submit_call(self._module, self._name, args, kwargs)

    def __getattr__(self, name: str) -> RemoteFunction:
        if name.startswith("__"):
            raise AttributeError(name)
        return RemoteFunction(self._executor, self._module, f"{self._name}.{name}")

    def __repr__(self) -> str:
        return f"<bayou remote function {os.fspath(self._module)}:{self._name}>"


def _result_or_cancel(fut: Future, timeout: float | None = None) -> Any:
    try:
        try:
            return fut.result(timeout)
        finally:
            fut.cancel()
    finally:
        del fut


def _results(fs: list[Future], end_time: float | None, *, chunked: bool) -> Iterator:
    """Yield results in order, cancelling the rest if the consumer stops (CPython's logic).

    No local variable holds a result while the generator is suspended, and each
    future is popped before it is waited on: the iterator keeps no reference to
    a result it has already yielded (CPython's test_free_reference).
    """
    try:
        fs.reverse()
        while fs:
            if end_time is None:
                if chunked:
                    yield from _pop_each(_result_or_cancel(fs.pop()))
                else:
                    yield _result_or_cancel(fs.pop())
            elif chunked:
                yield from _pop_each(_result_or_cancel(fs.pop(), end_time - time.monotonic()))
            else:
                yield _result_or_cancel(fs.pop(), end_time - time.monotonic())
    finally:
        for fut in fs:
            fut.cancel()


def _pop_each(values: list) -> Iterator:
    """Yield a chunk's results in order, dropping each as it goes (`_chain_from_iterable_of_lists`)."""
    values.reverse()
    while values:
        yield values.pop()
