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

import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from . import actor as actor_module
from . import batching, executor_setup, protocol, submission
from .actor import Actor
from .environment import Environment
from .futures import BayouFuture as BayouFuture  # bayou.executor.BayouFuture still works
from .futures import Progress as Progress  # re-exported too
from .pool import Pool, WorkItem
from .remote_modules import ModuleProxy as ModuleProxy  # bayou.executor.ModuleProxy still works
from .remote_modules import RemoteFunction as RemoteFunction
from .remote_modules import module_reference
from .worker import wire

if TYPE_CHECKING:
    pass

logger = logging.getLogger("bayou.executor")

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _constructor_signature(init: Callable[..., Any]) -> inspect.Signature:
    """`init`'s signature without `self`: what calling the class takes."""
    sig = inspect.signature(init)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


class EnvExecutor(Executor):
    """Run callables in worker processes of an environment, as ProcessPoolExecutor does.

    The positional arguments are ProcessPoolExecutor's. Keyword-only additions:

    env
        The environment the workers run in (an `Env` spec, provisioned on
        first use, or an `Environment`); default: the caller's interpreter.
    allow_current
        When the caller's own interpreter already satisfies a pip-only `env`
        spec, run the workers there and build nothing (`bayou.provision`).
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
    persistent, name
        ``persistent=True, name="seg"``: the workers live in a detached pool
        host and outlive this process; `bayou.attach("seg")` connects later
        processes, ``bayou workers stop seg`` ends it (docs/persistent.md).
        A `name` alone keeps the worker logs under the store (``bayou logs``).
    debug
        Each worker listens with debugpy; `debug_ports` and ``bayou debug
        NAME`` tell where (docs/debugging.md).
    worker_env
        ``worker_env(slot) -> dict``: variables for the worker in that slot
        (0 to max_workers - 1), and for its replacement in the same slot, e.g.
        ``lambda slot: {"CUDA_VISIBLE_DEVICES": str(slot)}`` to give each
        worker its own GPU. An actor takes ``env_vars=`` instead.

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
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        env: Any = None,
        allow_current: bool = False,
        heartbeat_timeout: float | None = 10.0,
        task_timeout: float | None = None,
        retries: int = 0,
        max_memory_per_worker: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        output: str = "inherit",
        persistent: bool = False,
        name: str | None = None,
        debug: bool = False,
        worker_env: Callable[[int], dict[str, str]] | None = None,
    ) -> None:
        if name is not None:
            from .persistent.registry import check_name

            check_name(name)
        max_workers = executor_setup.check_arguments(
            max_workers,
            mp_context,
            initializer,
            max_tasks_per_child=max_tasks_per_child,
            heartbeat_timeout=heartbeat_timeout,
            task_timeout=task_timeout,
            retries=retries,
            worker_env=worker_env,
            output=output,
        )
        self.environment, self._env_hold = executor_setup.resolve_and_hold(env, allow_current)
        if self.environment.python_xy < (3, 8):
            raise ValueError(
                f"bayou workers need Python >= 3.8; env {self.environment.hash} has "
                f"Python {self.environment.python_version}"
            )
        self._encoder = protocol.TaskEncoder(
            self.environment.python_xy, foreign=not self.environment.is_current
        )
        init_blob, init_roots = executor_setup.encode_initializer(
            self._encoder, initializer, tuple(initargs)
        )
        self._max_workers = max_workers
        options = dict(
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
            worker_env=worker_env,
        )
        self._options = options
        self._pool = self._make_pool(self.environment, options, name=name, debug=debug)
        self._actors: weakref.WeakSet[Actor] = weakref.WeakSet()
        # per-call seconds of the functions `map` batched, so the next map of one
        # starts with batches of the right size (`batching`)
        self._call_seconds: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._finalizer = weakref.finalize(self, self._pool.shutdown, False, False)
        if self._env_hold is not None:
            weakref.finalize(self, self._env_hold.release)

    def __new__(cls, *args: Any, persistent: bool = False, **kwargs: Any) -> EnvExecutor:
        """``persistent=True`` makes a `bayou.persistent.PersistentExecutor` (docs/persistent.md)."""
        if persistent and cls is EnvExecutor:
            if kwargs.get("name") is None:
                raise ValueError(
                    "persistent=True needs name=...: later processes attach to the pool "
                    "by that name (bayou.attach(name))"
                )
            assert EnvExecutor._persistent_class is not None  # `import bayou` registered it
            cls = EnvExecutor._persistent_class
        return super().__new__(cls)

    # `bayou.persistent.PersistentExecutor`, set when that module is imported (always
    # by `import bayou`): executor does not import persistent, which builds on it
    _persistent_class: type[EnvExecutor] | None = None

    # help(), IDEs and inspect.signature show __init__'s parameters, not __new__'s
    __signature__ = _constructor_signature(__init__)

    def _make_pool(
        self, environment: Environment, options: dict[str, Any], *, name: str | None, debug: bool
    ) -> submission.ExecutorPool:
        """The pool behind this executor (`PersistentExecutor` returns a remote one).

        ``debug=True``: workers listen with debugpy (docs/debugging.md).
        ``name``: worker logs are kept under the store (docs/logs.md).
        """
        if name is not None and options["log_dir"] is None:
            from . import logs

            directory = logs.pool_log_dir(name)
            logs.prune_worker_logs(directory)
            options["log_dir"] = directory / logs.WORKERS
        if debug:
            from .debugging import DebugPool, new_debug_id

            return DebugPool(environment, debug_id=new_debug_id(name), **options)
        return Pool(environment, **options)

    @property
    def debug_ports(self) -> dict[int, int]:
        """``debug=True``: {worker pid: port} of the workers listening for a debugger."""
        return dict(getattr(self._pool, "debug_ports", {}))

    # -- ProcessPoolExecutor compatibility -------------------------------------------

    @property
    def _processes(self) -> dict[int, Any]:
        return self._pool.processes

    @property
    def _broken(self) -> str | bool:
        return self._pool.broken or False

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        return self._pool.thread

    # -- encoding ------------------------------------------------------------------------

    def _item(
        self,
        fn: Callable[..., Any],
        call_kind: int,
        payload: Any,
        *,
        fn_record: tuple[Any, ...] | None = None,
    ) -> WorkItem:
        return submission.encode_item(
            self._encoder, self._pool, fn, call_kind, payload, fn_record=fn_record
        )

    def _encode_function(self, fn: Callable[..., Any]) -> tuple[tuple[Any, ...], frozenset[str]]:
        """(function record, roots) for `fn` in this executor's env (map's batching)."""
        return self._encoder.function(fn)

    def _submit_calls(
        self,
        fn: Callable[..., Any],
        kind: int,
        calls: list[Any],
        fn_record: tuple[Any, ...] | None,
        roots: frozenset[str],
    ) -> BayouFuture[Any]:
        """One task running `fn` over `calls` (a CHUNK or ITEMS task of map's batching)."""

        def make() -> WorkItem:
            item = self._item(fn, kind, calls, fn_record=fn_record)
            item.roots = item.roots | roots
            return item

        return self._submit_item(make)

    def _submit_item(self, make: Callable[[], WorkItem]) -> BayouFuture[Any]:
        return submission.submit(self._pool, make)

    def _submit_each(
        self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]
    ) -> list[BayouFuture[Any]]:
        """One task per argument tuple, queued together (map with chunksize=1)."""
        return submission.submit_each(
            self._pool, lambda args: self._item(fn, wire.CALL, (args, {})), calls
        )

    # -- the Executor interface ---------------------------------------------------------

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> BayouFuture[_T]:
        return self._submit_item(lambda: self._item(fn, wire.CALL, (args, kwargs)))

    submit.__doc__ = Executor.submit.__doc__

    def submit_batch(
        self, calls: Iterable[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
    ) -> BayouFuture[list[Any]]:
        """Run several ``(fn, args, kwargs)`` calls as one task; the result is their list.

        The calls run in order in one worker and the first exception ends the
        task, like one `map` chunk whose functions and keyword arguments may
        differ: the per-task cost is paid once per batch (joblib's backend
        sends its batches this way). When every call has the same function and
        the same keyword arguments (the usual ``delayed(f)(x, k=1)`` loop), the
        batch travels exactly like a `map` chunk; otherwise each call travels
        as a `functools.partial` run by `operator.methodcaller`. Both are
        stdlib, so the environment needs nothing but the functions themselves.
        """
        batch = [(fn, tuple(args), dict(kwargs)) for fn, args, kwargs in calls]
        if not batch:
            raise ValueError("submit_batch needs at least one call")
        return self._submit_item(lambda: submission.batch_item(self._encoder, self._pool, batch))

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[_T]:
        """Like ProcessPoolExecutor.map (Python 3.14's, with `buffersize`), batching by default.

        Results come in order; the first call that raised raises when its
        result is reached, after the results before it.

        chunksize
            None (default): automatic batching with exactly the semantics of
            ``chunksize=1`` (every call has its own outcome), at a fraction of
            its cost for many small calls: calls are batched only while others
            of this map are already queued (so a short map still runs one call
            per task, spread over the workers), up to about `batching.BATCH_SECONDS` of
            measured work per batch, so that long calls stay balanced.
            An int: exactly that many calls per task, as ProcessPoolExecutor
            does (an exception fails the rest of its chunk).
        buffersize
            None: the iterables are consumed at once and everything is
            submitted. An int: at most that many submitted tasks (calls, with
            automatic batching) whose results have not been yielded; the
            iterables are consumed as results are, so a huge or infinite
            iterable is fine.
        """
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        feeder = batching.MapFeeder(self, fn, zip(*iterables, strict=False), chunksize, buffersize)
        if buffersize is None:
            feeder.fill(None)
        else:
            feeder.fill(buffersize)
        return batching.results(feeder, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with `cancel_futures`, cancel queued tasks and stop running ones.

        Tasks not yet handed to a worker are cancelled. Each handed-over task
        (running, or next in line for its worker) sees `bayou.cancel_requested()`
        turn True; if it ends within a second its outcome stands, otherwise
        its worker is killed and its future ends cancelled.
        """
        for actor in list(self._actors):
            actor.close(wait=False, cancel_futures=cancel_futures)
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            for actor in list(self._actors):
                actor.close(wait=True, cancel_futures=cancel_futures)
        if wait and self._env_hold is not None:
            self._env_hold.release()  # the workers are gone: gc may take the env

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        """Like Executor's, except on Ctrl-C: then queued work is cancelled and running
        tasks are stopped (see `shutdown`) instead of waited for, which could take hours.
        Workers live in their own sessions, so the terminal's SIGINT reaches only the
        caller and no worker prints a KeyboardInterrupt traceback."""
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.shutdown(wait=True, cancel_futures=interrupted)
        return False

    # -- actors ----------------------------------------------------------------------------

    def actor(
        self,
        cls: type[Any] | str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        max_restarts: int = 0,
        name: str | None = None,
        env_vars: dict[str, str] | None = None,
    ) -> Actor:
        """One object of `cls`, built now in a worker process of its own (docs/actors.md).

        `cls` is a class, sent by reference (so an env of another Python
        works), or a ``"module:Qualname"`` string naming a class that may exist
        only in the env. `args`/`kwargs` are its constructor's, as
        `threading.Thread` takes them, so these options never collide with the
        class's own parameters. `max_restarts`: how many deaths of its process
        the actor survives (each rebuilds the object, whose state is lost).
        `env_vars`: variables its process sees (``CUDA_VISIBLE_DEVICES``...).
        The actor's process is not one of `max_workers`; `shutdown` ends it.
        """
        max_restarts, variables = actor_module.check_options(cls, max_restarts, env_vars)
        if self._pool._shutdown:
            raise RuntimeError("cannot create an actor after shutdown")
        if name is not None and any(a.name == name and a.alive for a in self._actors):
            raise ValueError(f"this executor already has an actor named {name!r}")
        pool = actor_module.start_local(
            self.environment,
            self._encoder,
            self._options,
            cls,
            tuple(args),
            dict(kwargs or {}),
            max_restarts=max_restarts,
            env_vars=variables,
        )
        handle = actor_module.handle_class(cls)(pool, self._encoder, cls, name)
        self._actors.add(handle)
        return handle

    # -- calling into modules that live in the environment ---------------------------------

    def import_module(self, module: str | os.PathLike[str]) -> ModuleProxy:
        """A proxy whose attributes call functions of `module` in the environment.

        `module` is a dotted name importable in the environment (or among the
        caller's own modules), or the path of a ``.py`` file. The module is
        not imported in the caller. A ``.py`` path that does not exist raises
        `FileNotFoundError` here, not at the first call.
        """
        module_reference(module)
        return ModuleProxy(self, module)

    def execute(
        self,
        module: str | os.PathLike[str],
        function: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Call `module.function(*args, **kwargs)` in the environment and return its result."""
        return self.submit_call(module, function, args, kwargs).result()

    def submit_call(
        self,
        module: str | os.PathLike[str],
        function: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> BayouFuture[Any]:
        """Like `execute`, returning a future."""
        name, path, roots = module_reference(module)
        record = (wire.FN_REF, name, function, path)
        label = f"{name}.{function}"

        def make() -> WorkItem:
            stub = cast("Callable[..., Any]", submission.NamedCall(label))  # for labels only
            item = self._item(stub, wire.CALL, (tuple(args), dict(kwargs or {})), fn_record=record)
            item.roots = item.roots | roots
            return item

        return self._submit_item(make)
