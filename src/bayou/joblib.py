"""joblib's ``"bayou"`` parallel backend: `joblib.Parallel` work in an isolated environment.

Importing this module registers the backend::

    import bayou.joblib
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="bayou", env=bayou.Env(pip=["numpy<2"]), n_jobs=4):
        Parallel()(delayed(f)(x) for x in xs)

Data flow::

    Parallel ──BatchedCalls──▶ BayouBackend.submit ──(fn, args, kwargs)...──▶
    EnvExecutor.submit_batch ──one task──▶ worker in the env ──list of results──▶
    BayouFuture ──done──▶ callback thread ──▶ joblib's BatchCompletionCallBack
    (records the outcome, dispatches the next batch)

* **Batches are unpacked in the caller.** joblib hands the backend a
  `BatchedCalls` (a joblib object that also carries joblib's nested-backend
  configuration). Only its ``(fn, args, kwargs)`` items travel, as one bayou
  task, so the environment needs neither joblib nor bayou.
* **Workers are reused across calls.** Like loky's reusable executor, the
  `EnvExecutor` for an (environment, worker count, options) key is kept in a
  process-wide cache (`bayou.joblib_executors`) and shared by every `Parallel` call that asks for the
  same thing; asking for another worker count or other options for the same
  environment replaces an idle one. `shutdown()` closes them all (they are
  also closed at interpreter exit).
* **Callbacks run on a thread of their own**, never on bayou's supervisor
  thread: joblib's completion callback takes `Parallel`'s lock and submits the
  next batch, and the supervisor must stay free to start workers while the
  main thread, holding that lock, submits.
* **Abort** (a task raised, joblib's `timeout` expired, a generator was
  dropped): every task this backend still has in flight is cancelled with
  `bayou.cancel(future, grace=0)`: queued ones are dropped, running ones are
  killed with their worker, which the pool replaces when work comes. Other
  `Parallel` calls sharing the executor are untouched.
* **A forked child starts afresh.** A process forked from one that used the
  backend (a task of joblib's ``"multiprocessing"`` backend, an `os.fork`)
  inherits copies of the cached executors, whose supervisor threads and
  callback thread do not exist in it; a batch submitted there would go to the
  parent's workers or to nobody, and the child would wait for ever. So the
  child forgets them (`_after_fork_in_child`, run by `os.register_at_fork`):
  it never uses nor shuts down the parent's executors and starts workers of
  its own when it calls `Parallel`.
* **n_jobs=1 still runs in the environment.** joblib runs a backend that
  reports one job in the calling process (that would be the wrong
  environment), so for one worker the backend reports two jobs in flight to
  joblib: the second batch waits, handed over, for the single worker.

Both the current backend API (`submit` + `retrieve_result_callback`) and the
older one (`apply_async`, whose result has `.get(timeout)`) are implemented,
for joblib 1.4 and later.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from packaging.version import Version

try:
    import joblib
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "bayou.joblib needs joblib; install it with: pip install 'bayou[joblib]'"
    ) from exc

MIN_JOBLIB = "1.4"
if Version(joblib.__version__) < Version(MIN_JOBLIB):  # pragma: no cover
    raise ImportError(
        f"bayou.joblib needs joblib >= {MIN_JOBLIB}, found {joblib.__version__}; "
        "upgrade with: pip install -U 'bayou[joblib]'"
    )

from joblib.parallel import (  # noqa: E402  (after the version check)
    AutoBatchingMixin,
    BatchedCalls,
    ParallelBackendBase,
    register_parallel_backend,
)

from . import joblib_executors  # noqa: E402
from .env import Env  # noqa: E402
from .environment import Environment, current_environment  # noqa: E402
from .executor import BayouFuture, EnvExecutor  # noqa: E402
from .joblib_executors import Slot, acquire, release, retire_if_exclusive  # noqa: E402
from .joblib_executors import shutdown as shutdown  # noqa: E402  (bayou.joblib.shutdown)
from .task_api import cancel  # noqa: E402

__all__ = ["BACKEND_NAME", "AsyncResult", "BayouBackend", "register", "shutdown"]

BACKEND_NAME = "bayou"

#: EnvExecutor keyword arguments a user may pass through joblib
#: (`parallel_config(backend="bayou", ...)` or `Parallel(backend="bayou", ...)`).
EXECUTOR_OPTIONS = frozenset(
    {
        "heartbeat_timeout",
        "task_timeout",
        "retries",
        "max_memory_per_worker",
        "max_tasks_per_child",
        "initializer",
        "initargs",
        "output",
        "log_dir",
    }
)

#: What joblib itself passes to every backend's `configure`, for its own
#: process backends (memmapping, start method): meaningless here, ignored.
#: bayou moves large buffers through its own protocol.
_JOBLIB_CONFIGURE_KWARGS = frozenset(
    {"max_nbytes", "mmap_mode", "temp_folder", "verbose", "context", "idle_worker_timeout"}
)

#: Seconds `abort_everything` waits for killed workers to be reaped.
ABORT_WAIT = 10.0

logger = logging.getLogger("bayou.joblib")
_UNSET: Any = object()


# -- options ----------------------------------------------------------------------


def _check_env(env: Any) -> Any:
    if env is None or isinstance(env, (Env, Environment)):
        return env
    raise TypeError(
        f"env= of the joblib backend {BACKEND_NAME!r} must be a bayou.Env, a "
        f"bayou.Environment or None (the caller's interpreter), not "
        f"{type(env).__module__}.{type(env).__qualname__}: {env!r:.80}"
    )


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - EXECUTOR_OPTIONS)
    if unknown:
        raise TypeError(
            f"the joblib backend {BACKEND_NAME!r} got unknown option(s) "
            f"{', '.join(map(repr, unknown))}; it accepts env= and the EnvExecutor "
            f"options {', '.join(sorted(EXECUTOR_OPTIONS))}"
        )
    return dict(options)


# -- completion callbacks ---------------------------------------------------------


class _CallbackThread:
    """Runs joblib's completion callbacks in order, off bayou's supervisor thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def call_soon(self, fn: Callable[[Any], object], arg: Any) -> None:
        self._queue.put((fn, arg))
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="bayou-joblib-callbacks", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            fn, arg = self._queue.get()
            try:
                fn(arg)
            except BaseException:
                logger.exception("joblib completion callback %r failed", fn)
            finally:
                del fn, arg


_callbacks = _CallbackThread()


# -- the backend ------------------------------------------------------------------


class AsyncResult:
    """A bayou future seen through `multiprocessing.pool.AsyncResult`'s API.

    Backends without `supports_retrieve_callback` have their results fetched by
    joblib with ``out.get(timeout=...)``, which must raise
    `multiprocessing.TimeoutError` like joblib's own timeout does.
    """

    def __init__(self, future: BayouFuture) -> None:
        self.future = future

    def get(self, timeout: float | None = None) -> Any:
        try:
            return self.future.result(timeout)
        except concurrent.futures.TimeoutError:
            if self.future.done():
                raise  # the task itself raised TimeoutError
            raise multiprocessing.TimeoutError(
                f"no result from bayou within {timeout} s"
            ) from None

    def wait(self, timeout: float | None = None) -> None:
        concurrent.futures.wait([self.future], timeout=timeout)

    def ready(self) -> bool:
        return self.future.done()

    def successful(self) -> bool:
        if not self.future.done():
            raise ValueError(f"{self!r} not ready")
        return not self.future.cancelled() and self.future.exception() is None


class BayouBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend running each batch as one task of a shared `EnvExecutor`.

    Constructor keywords (through ``parallel_config(backend="bayou", ...)``):
    ``env`` (a `bayou.Env`, a `bayou.Environment`, or None for the caller's
    interpreter) and the `EnvExecutor` options in `EXECUTOR_OPTIONS`. The same
    keywords given to ``Parallel(backend="bayou", ...)`` override them.
    """

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_inner_max_num_threads = True
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = 1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        env: Env | Environment | None = None,
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.env = _check_env(env)
        self.options = _check_options(options)
        self.parallel = None
        self._slot: Slot | None = None
        self._resolved: tuple[Any, Environment] | None = None
        self._lock = threading.Lock()
        self._in_flight: set[concurrent.futures.Future] = set()
        _backends.add(self)

    def __repr__(self) -> str:
        env = getattr(self.env, "hash", None) or "current"
        return f"{type(self).__name__}(env={env})"

    # -- sizing -------------------------------------------------------------------

    def workers_for(self, n_jobs: int | None) -> int:
        """How many worker processes `n_jobs` means (joblib's rules for negative values)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(joblib.cpu_count() + 1 + n_jobs, 1)
        return int(n_jobs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Batches joblib keeps in flight: the worker count, but at least 2.

        joblib runs a backend that reports 1 in the *calling* process; bayou's
        work must run in the environment, so one worker is reported as two.
        """
        return max(self.workers_for(n_jobs), 2)

    # -- lifecycle ----------------------------------------------------------------

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        env: Any = _UNSET,
        **kwargs: Any,
    ) -> int:
        """Take a shared executor for this call's environment, worker count and options."""
        for name in _JOBLIB_CONFIGURE_KWARGS:
            kwargs.pop(name, None)
        options = {**self.options, **_check_options(kwargs)}
        env = self.env if env is _UNSET else _check_env(env)
        workers = self.workers_for(n_jobs)
        environment = self._with_thread_limits(self._environment(env), workers)
        slot = acquire(environment, workers, options)
        old, self._slot = self._slot, slot
        if old is not None:
            release(old)
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def _environment(self, env: Any) -> Environment:
        if env is None:
            return current_environment()
        if isinstance(env, Environment):
            return env
        if self._resolved is not None and self._resolved[0] is env:
            return self._resolved[1]
        from .provision import provision

        environment = provision(env)
        self._resolved = (env, environment)
        return environment

    def _with_thread_limits(self, environment: Environment, workers: int) -> Environment:
        """Cap BLAS/OpenMP threads per worker as loky does; the env's own env_vars win."""
        limits = self._prepare_worker_env(n_jobs=workers)
        return dataclasses.replace(environment, env_vars={**limits, **environment.env_vars})

    @property
    def executor(self) -> EnvExecutor:
        """The executor this backend submits to (after `configure`)."""
        if self._slot is None:
            raise RuntimeError(
                f"the joblib backend {BACKEND_NAME!r} is not configured: use it through "
                "joblib.Parallel"
            )
        return self._slot.executor

    @property
    def _workers(self) -> EnvExecutor | None:
        """The executor while configured, else None (the attribute joblib's tests inspect)."""
        return None if self._slot is None else self._slot.executor

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's executor and batches (never touch them)."""
        self._slot = None
        self._lock = threading.Lock()
        self._in_flight = set()

    def terminate(self) -> None:
        """End of a `Parallel` call: give the executor back (its workers stay for reuse)."""
        slot, self._slot = self._slot, None
        if slot is not None:
            release(slot)
        self.reset_batch_stats()

    # -- running batches ----------------------------------------------------------

    def submit(self, func: Callable[[], Any], callback: Callable | None = None) -> BayouFuture:
        """Run a joblib batch in the environment; `callback(future)` once it is done."""
        return self._submit(func, callback)

    def apply_async(
        self, func: Callable[[], Any], callback: Callable | None = None
    ) -> AsyncResult:
        """joblib < 1.5's backend API: `submit`, answered with an AsyncResult-like object."""
        return AsyncResult(self._submit(func, callback))

    def _submit(self, func: Callable[[], Any], callback: Callable | None) -> BayouFuture:
        executor = self.executor
        if isinstance(func, BatchedCalls):
            future = executor.submit_batch(func.items)
        else:
            future = executor.submit(func)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._settled)
        if callback is not None:
            future.add_done_callback(lambda done: _callbacks.call_soon(callback, done))
        return future

    def retrieve_result_callback(self, future: concurrent.futures.Future) -> Any:
        """The batch's list of results, or its exception raised."""
        return future.result()

    def _settled(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel this backend's unfinished batches, killing the workers running them.

        When no other `Parallel` call shares the executor, it is shut down
        with all its workers (as loky does) and, with `ensure_ready`, a fresh
        one takes its place (its workers start with the next batch). When
        others share it, only this backend's batches are cancelled: their
        workers are killed and replaced, the rest keep running. Either way
        this returns once the killed workers are reaped (or after
        `ABORT_WAIT` s).
        """
        with self._lock:
            futures = list(self._in_flight)
            self._in_flight.clear()
        for future in futures:
            cancel(future, grace=0)
        slot = self._slot
        if slot is not None and retire_if_exclusive(slot):
            self._slot = None
            slot.executor.shutdown(wait=True, cancel_futures=True)
            if ensure_ready:
                self._slot = acquire(slot.environment, slot.workers, slot.options)
        elif futures:
            concurrent.futures.wait(futures, timeout=ABORT_WAIT)
        self.reset_batch_stats()


# -- fork -------------------------------------------------------------------------

#: Every backend instance, so a forked child can make each forget its parent's executor.
_backends: weakref.WeakSet[BayouBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Give a forked child fresh backend state: no executors, new locks, no callback thread.

    The parent's executors were copied with the process, without their
    supervisor threads but with their workers' sockets, which the parent
    still reads: a batch submitted to one would never complete (or run on a
    worker of the parent), shutting one down would message the parent's
    workers, and its lock may have been held at the fork. So they are set
    aside, untouched for good (`joblib_executors.forget_inherited`). The
    child's next `Parallel` call starts workers of its own. The backend's
    locks are new: another thread of the parent may have held them.
    """
    global _callbacks
    joblib_executors.forget_inherited()
    _callbacks = _CallbackThread()
    for backend in list(_backends):
        backend._forget_parent()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def __getattr__(name: str) -> Any:
    # The executor cache lives in `joblib_executors`, and a forked child rebinds
    # it there: `bayou.joblib._slots` / `_slots_lock` read it, live (tests look).
    if name in ("_slots", "_slots_lock"):
        return getattr(joblib_executors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Register `BayouBackend` with joblib as ``"bayou"`` (done on import)."""
    register_parallel_backend(BACKEND_NAME, BayouBackend)


register()
