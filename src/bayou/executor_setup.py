"""An `EnvExecutor`'s arguments, checked, and what they become before any worker
starts: the environment (provisioned, and held in its store so `gc` leaves it
alone), and the initializer pickled in the caller, its errors naming the
culprit. Kept apart from the executor so its class reads as the
ProcessPoolExecutor interface and little else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import errors, submission
from .boundary import TaskEncoder
from .environment import Environment, current_environment
from .pool import OUTPUT_MODES
from .store import EnvHold, Store


def check_arguments(
    max_workers: int | None,
    mp_context: Any,
    initializer: Callable[..., object] | None,
    *,
    max_tasks_per_child: int | None,
    heartbeat_timeout: float | None,
    task_timeout: float | None,
    retries: int,
    worker_env: Callable[[int], dict[str, str]] | None,
    output: str,
) -> int:
    """ProcessPoolExecutor's checks, in its words, and bayou's own; the worker count."""
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
        if start_method(mp_context) == "fork":
            # ProcessPoolExecutor's refusal (CPython gh-90622), word for word:
            # code written for it expects the ValueError, though bayou's own
            # workers never fork
            raise ValueError(
                "max_tasks_per_child is incompatible with the 'fork' multiprocessing "
                "start method; supply a different mp_context."
            )
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    for option, value in (
        ("heartbeat_timeout", heartbeat_timeout),
        ("task_timeout", task_timeout),
    ):
        if value is not None and value <= 0:
            raise ValueError(f"{option} must be > 0 or None")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if worker_env is not None and not callable(worker_env):
        raise TypeError("worker_env must be a callable: slot -> dict of variables")
    if output not in OUTPUT_MODES:
        raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUT_MODES))}")
    return max_workers


def resolve_environment(env: Any, allow_current: bool = False) -> Environment:
    if env is None:
        return current_environment()
    if isinstance(env, Environment):
        return env
    from .provision import provision

    return provision(env, allow_current=allow_current)


def resolve_and_hold(env: Any, allow_current: bool) -> tuple[Environment, EnvHold | None]:
    """The environment, marked in use in its store so `gc`/`remove` leave it alone
    while this executor lives. A removal that won the race just before we held
    it means the env is gone: provision it again."""
    for _ in range(3):
        environment = resolve_environment(env, allow_current)
        store = Store.containing(environment.prefix)
        if store is None:  # the caller's interpreter, or an env made elsewhere
            return environment, None
        # the store knows the env by its directory's name (`Env.existing` of a
        # store's env has a hash of its own)
        name = Path(environment.prefix).name
        hold = store.hold(name)
        if store.lookup(name) is not None:
            return environment, hold
        hold.release()
    raise RuntimeError(f"environment {environment.prefix} keeps being removed while starting")


def start_method(mp_context: Any) -> str | None:
    """The start method of a multiprocessing context (None: none given, or not a context)."""
    get = getattr(mp_context, "get_start_method", None)
    if mp_context is None or not callable(get):
        return None
    method: str | None = get(allow_none=False)
    return method


def initializer_pickling_error(
    initializer: Callable[..., object], initargs: tuple[Any, ...], exc: Exception
) -> errors.PicklingError:
    """The error for an initializer or initargs that cannot be pickled, naming the culprit.

    A multiprocessing queue, lock, event... in the initargs (only inheritance
    can share those) is named by its position, with the manager proxy to pass
    instead (`bayou.mp_objects`).
    """
    from . import mp_objects

    found = mp_objects.locate(initargs, "initargs")
    if found is not None:
        where, obj = found
        cls = type(obj)
        return errors.PicklingError(
            f"cannot pickle {where} ({cls.__module__}.{cls.__qualname__}) of the initializer "
            f"{submission.label(initializer)}: {type(exc).__name__}: {exc}; "
            f"{mp_objects.inheritance_only_hint(obj)}"
        )
    return errors.PicklingError(
        f"cannot pickle the initializer {submission.label(initializer)} or its initargs: "
        f"{type(exc).__name__}: {exc}"
    )


def encode_initializer(
    encoder: TaskEncoder, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> tuple[bytes | None, frozenset[str]]:
    """(the pickled (initializer, initargs), roots), or (None, empty) without one."""
    if initializer is None:
        return None, frozenset()
    try:
        return encoder.dumps((initializer, initargs))
    except Exception as exc:
        raise initializer_pickling_error(initializer, initargs, exc) from exc
