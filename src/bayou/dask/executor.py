"""The executor a dask worker sees under ``worker.executors["bayou:<env>"]``.

A dask worker runs an annotated task with ``executor.submit(_run_task_simple,
run_spec, data, scheduler_delay)``. `DaskEnvExecutor.submit` recognises that
call, rewrites ``run_spec`` with `routing.route` (user functions become
`EnvCall`s bound to this executor's `EnvExecutor`) and runs distributed's
own ``_run_task_simple`` on the rewritten task in one of its threads. So the
timing, result and error bookkeeping are distributed's, while each user call
crosses into the environment on its own, with resolved arguments::

    dask worker ─submit(_run_task_simple, spec, data, delay)─▶ DaskEnvExecutor
        ─thread─▶ _run_task_simple(route(spec), data, delay)
                    └─ EnvCall(f)(*args) ─▶ EnvExecutor.submit(f, *args).result()

An exception from the env (including `bayou.WorkerCrashedError` when the env
worker died) is raised inside ``_run_task_simple``, which reports it as the
task's error, so Dask's ``retries=`` applies and the dask worker carries on.
Anything else submitted here (not distributed's task runner) runs in the env
as is, as with any Executor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from distributed.worker import _run_task_simple

from ..executor import EnvExecutor
from .routing import route


class DaskEnvExecutor(Executor):
    """Adapter between a dask worker and an `EnvExecutor`.

    Its class name must not contain "ThreadPoolExecutor": distributed gives
    such executors a different (in-process only) call signature.
    """

    def __init__(self, env_executor: EnvExecutor, *, label: str) -> None:
        self.env_executor = env_executor
        self.label = label
        # Threads only wait on the env; one per env worker is enough, since
        # the advertised resource admits that many tasks at a time. More may
        # queue here when tasks name the executor without the resource.
        self._threads = ThreadPoolExecutor(
            env_executor._max_workers, thread_name_prefix=f"bayou-dask-{label}"
        )
        self._lock = threading.Lock()
        self._shutdown = False

    def _run_in_env(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        return self.env_executor.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"bayou env executor {self.label!r} is shut down")
        if fn is _run_task_simple:
            task, data, time_delay = args
            routed = route(task, self._run_in_env)
            return self._threads.submit(_run_task_simple, routed, data, time_delay)
        return self.env_executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        # Stop the env workers first: threads blocked on their results then return.
        self.env_executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        self._threads.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __repr__(self) -> str:
        return f"<DaskEnvExecutor {self.label!r} env={self.env_executor.environment.hash}>"
