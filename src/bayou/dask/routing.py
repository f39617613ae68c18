"""Rewrite a dask task so that only the user's functions run in the environment.

A dask worker runs a task by calling its ``run_spec`` (a ``dask._task_spec``
node) with the values of its dependencies. That node is dask's machinery:
`Task` objects, containers (`List`, `Dict`...), references to other keys,
fused subgraphs (``_execute_subgraph``). The environment has neither dask
nor distributed, so the node itself cannot go there. Instead the worker keeps
evaluating the node in its own process, and `route` swaps each *user*
function in it for an `EnvCall`, which sends that one call (function and
already-resolved arguments) to the environment and waits for the answer::

    Task(user_fn, TaskRef(a), List(TaskRef(b), 3))
      ─route─▶ Task(EnvCall(user_fn), TaskRef(a), List(TaskRef(b), 3))
      ─called by distributed with {a: .., b: ..}─▶ EnvCall(user_fn)(va, [vb, 3])
      ─▶ EnvExecutor.submit(user_fn, va, [vb, 3]).result()

Dask's own plumbing (functions from the modules in `PLUMBING`: dask,
distributed, toolz, operator, builtins) keeps running on the dask worker; a
user function handed to such plumbing as an argument (``map_chunk(f, ...)``,
``apply(..., _func=f)``) is wrapped too, so it still runs in the env. Nodes
are copied, never mutated: the worker keeps the original run_spec.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from dask._task_spec import GraphNode, Task

#: Top-level modules whose functions are dask plumbing, run on the dask worker.
PLUMBING = frozenset({"dask", "distributed", "toolz", "tlz", "cytoolz", "operator", "builtins"})


def _origin(fn: Any) -> str:
    """The top-level module a callable comes from (partials unwrapped)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None)
    if not isinstance(module, str):
        module = type(fn).__module__
    # C accelerator modules count as their Python face: _operator is operator.
    return module.partition(".")[0].lstrip("_")


def is_plumbing(fn: Any) -> bool:
    return _origin(fn) in PLUMBING


class EnvCall:
    """A user function whose calls are made in the environment.

    `runner(fn, args, kwargs)` submits the call and returns its result (or
    raises its exception); it is the executor adapter's bound method.
    """

    __slots__ = ("fn", "runner", "__name__", "__qualname__")

    def __init__(self, fn: Callable, runner: Callable[[Callable, tuple, dict], Any]) -> None:
        self.fn = fn
        self.runner = runner
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner(self.fn, args, kwargs)

    def __repr__(self) -> str:
        return f"EnvCall({self.fn!r})"


def route(node: Any, runner: Callable[[Callable, tuple, dict], Any]) -> Any:
    """A copy of `node` with every user function replaced by an `EnvCall`."""
    return _Router(runner).node(node)


class _Router:
    def __init__(self, runner: Callable[[Callable, tuple, dict], Any]) -> None:
        self.runner = runner

    def node(self, obj: Any) -> Any:
        if isinstance(obj, Task):
            return self.task(obj)
        if isinstance(obj, GraphNode):  # DataNode, Alias: no function to route
            return obj
        if isinstance(obj, dict):  # a fused subgraph's inner tasks, or a plain dict arg
            return self._changed(obj, {k: self.node(v) for k, v in obj.items()})
        if type(obj) in (list, tuple):
            return self._changed(obj, type(obj)(self.node(v) for v in obj))
        return obj

    def task(self, task: Task) -> Task:
        plumbing = is_plumbing(task.func)
        func = task.func if plumbing else EnvCall(task.func, self.runner)
        if plumbing and isinstance(func, functools.partial):
            func = self._plumbing_partial(func)
        args = tuple(self._arg(a, plumbing) for a in task.args)
        kwargs = {k: self._arg(v, plumbing) for k, v in task.kwargs.items()}
        if (
            func is task.func
            and all(a is b for a, b in zip(args, task.args, strict=True))
            and all(kwargs[k] is v for k, v in task.kwargs.items())
        ):
            return task
        new = copy.copy(task)
        new.func = func
        new.args = args
        new.kwargs = kwargs
        # Cached token and repr describe the original; drop them on the copy.
        if hasattr(new, "_token"):
            new._token = None
        if hasattr(new, "_repr"):
            new._repr = None
        return new

    def _arg(self, value: Any, plumbing: bool) -> Any:
        if isinstance(value, (GraphNode, dict, list, tuple)):
            return self.node(value)
        if plumbing and self._is_user_callable(value):
            return EnvCall(value, self.runner)
        return value

    def _plumbing_partial(self, fn: functools.partial) -> functools.partial:
        args = tuple(EnvCall(a, self.runner) if self._is_user_callable(a) else a for a in fn.args)
        keywords = {
            k: EnvCall(v, self.runner) if self._is_user_callable(v) else v
            for k, v in fn.keywords.items()
        }
        if all(a is b for a, b in zip(args, fn.args, strict=True)) and all(
            keywords[k] is v for k, v in fn.keywords.items()
        ):
            return fn
        return functools.partial(fn.func, *args, **keywords)

    @staticmethod
    def _is_user_callable(value: Any) -> bool:
        # Classes are constructors of data (a namedtuple's type, a dtype), not work.
        return callable(value) and not isinstance(value, type) and not is_plumbing(value)

    @staticmethod
    def _changed(old: Any, new: Any) -> Any:
        if isinstance(old, dict):
            same = all(new[k] is v for k, v in old.items())
        else:
            same = all(a is b for a, b in zip(old, new, strict=True))
        return old if same else new
