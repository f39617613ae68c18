"""`bayou.dask.env(...)`: send tasks to the workers that have an env, and into it.

The returned `EnvRoute` is both

* a context manager: the tasks created inside are annotated with
  ``executor="bayou:<key>"`` and ``resources={"bayou:<key>": 1}`` (plus
  ``retries`` when given) through ``dask.annotate``, which covers
  ``client.submit``/``client.map``, ``dask.delayed`` and dask collections;
* a mapping of keyword arguments for ``client.submit``/``client.map``:
  ``client.submit(f, x, **bayou.dask.env("old"))`` passes ``resources=``
  (and ``retries=``); `EnvPlugin` then routes tasks carrying the resource
  into its executor.

dask.array's low-level task fusion drops annotations (a long-standing dask
limitation, dask/dask#7036); inside the block it is switched off
(``optimization.fuse.active: False``), so arrays computed there keep their
routing. Compute an array graph outside the block with that setting too.

On first use with a connected Client, `EnvWatchdog` is installed on the
scheduler, so a task for an env that no worker offers fails after a bounded
time instead of waiting forever (`watch` sets that time).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, KeysView, Mapping
from typing import Any

import dask

from .names import env_key, resource_name
from .watchdog import DEFAULT_TIMEOUT, EnvWatchdog

_watched: set[str] = set()
_watched_lock = threading.Lock()


class WatchdogUnavailableWarning(UserWarning):
    """The scheduler could not install EnvWatchdog (is bayou importable there?)."""


def watch(client: Any, timeout: float = DEFAULT_TIMEOUT, interval: float = 1.0) -> None:
    """Install (or replace) the scheduler's `EnvWatchdog` with this `timeout`."""
    plugin = EnvWatchdog(timeout=timeout, interval=interval)
    try:  # replace a watchdog already there (its start() stops the old one's timer)
        client.unregister_scheduler_plugin(plugin.name)
    except Exception:
        pass  # there was none
    client.register_plugin(plugin)
    with _watched_lock:
        _watched.add(client.id)


def _ensure_watchdog() -> None:
    try:
        from distributed import default_client

        client = default_client()
    except ValueError:  # no client yet: nothing to install on
        return
    if getattr(client, "asynchronous", False):
        return  # can't block here; call `await client.register_plugin(EnvWatchdog())`
    with _watched_lock:
        if client.id in _watched:
            return
        _watched.add(client.id)
    try:
        client.register_plugin(EnvWatchdog())
    except Exception as exc:
        warnings.warn(
            "bayou.dask could not install EnvWatchdog on the scheduler "
            f"({type(exc).__name__}: {exc}); tasks for an env no worker has will wait "
            "without an error. Install bayou where the scheduler runs.",
            WatchdogUnavailableWarning,
            stacklevel=3,
        )


class EnvRoute(Mapping):
    """Route tasks into one bayou env on a Dask cluster (see module docstring)."""

    def __init__(self, env_or_name: Any, *, retries: int | None = None) -> None:
        if retries is not None and (not isinstance(retries, int) or retries < 0):
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        self.key = env_key(env_or_name)
        self.resource = resource_name(self.key)
        self.executor = self.resource
        self.retries = retries
        self._stacks: list[contextlib.ExitStack] = []

    @property
    def submit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``client.submit`` / ``client.map``."""
        kwargs: dict[str, Any] = {"resources": {self.resource: 1}}
        if self.retries is not None:
            kwargs["retries"] = self.retries
        return kwargs

    @property
    def annotations(self) -> dict[str, Any]:
        """What ``dask.annotate`` receives inside the block."""
        return {"executor": self.executor, **self.submit_kwargs}

    # -- Mapping: **bayou.dask.env(...) ---------------------------------------------

    def keys(self) -> KeysView[str]:
        _ensure_watchdog()
        return self.submit_kwargs.keys()

    def __getitem__(self, name: str) -> Any:
        return self.submit_kwargs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.submit_kwargs)

    # -- context manager ------------------------------------------------------------

    def __enter__(self) -> EnvRoute:
        _ensure_watchdog()
        stack = contextlib.ExitStack()
        stack.enter_context(dask.annotate(**self.annotations))
        stack.enter_context(dask.config.set({"optimization.fuse.active": False}))
        self._stacks.append(stack)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stacks.pop().close()

    def __repr__(self) -> str:
        return f"bayou.dask.env({self.key!r})"


def env(env_or_name: Any, *, retries: int | None = None) -> EnvRoute:
    """Route tasks into the env `env_or_name` (an `Env`, an `EnvPlugin` or its name).

    Use as ``with bayou.dask.env(e): ...`` (annotates every task made in the
    block) or as ``client.submit(f, x, **bayou.dask.env(e))``. `retries`
    lets Dask rerun a task that failed, e.g. because its env worker crashed.
    """
    return EnvRoute(env_or_name, retries=retries)


def status(client: Any) -> dict[str, dict[str, str]]:
    """What each worker reported for each env: ``{key: {worker: state}}``.

    States: ``"provisioning"``, ``"ready"``, ``"ready (built here)"`` (this
    worker built it; the others of its machine found it built), ``"ready
    (unpacked here)"`` (the same, from the plugin's bundle),
    ``"failed: <error>"``.
    """
    return client.get_metadata(["bayou-envs"], default={})
