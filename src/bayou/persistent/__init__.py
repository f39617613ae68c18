"""Persistent pools: workers that outlive the process that started them.

    ex = bayou.EnvExecutor(2, env=env, persistent=True, name="seg")  # start (or reuse)
    ex.submit(fn, x).result()
    ex.shutdown()                       # detaches; the pool keeps running

    ex = bayou.attach("seg")            # in any later process of the same user
    bayou.persistent.list_pools()       # or: bayou workers list
    bayou.persistent.stop("seg")        # or: bayou workers stop seg

The parts: `registry` (the store's record of running pools: entry, 0600
key, socket in a 0700 directory; liveness and pruning), `host` (the
detached process that owns the workers and relays tasks), `client` (start /
connect / stop, and `RemotePool`, which stands in for the executor's local
pool). `PersistentExecutor` is an `EnvExecutor` whose pool is a
`RemotePool`: encoding, `map`, `import_module`, progress and cancellation
are the executor's own code.
"""

from __future__ import annotations

import os
from typing import Any

from ..boundary import TaskEncoder
from ..environment import Environment
from ..executor import EnvExecutor
from ..store import Store
from . import registry
from .client import _PREPARED, RemotePool, connect, list_pools, start, stop
from .registry import PoolEntry, PoolNotFoundError, PoolVersionError


class PersistentExecutor(EnvExecutor):
    """An `EnvExecutor` connected to a persistent pool (made by ``persistent=True`` or `attach`).

    `shutdown()` detaches this process (after its submitted tasks finish when
    ``wait=True``); the pool and its workers keep running until
    `bayou.persistent.stop` or ``bayou workers stop NAME``. Workers' output
    goes to the pool's logs (``bayou logs NAME``), not to this process.
    """

    _pool: RemotePool

    def _make_pool(
        self, environment: Environment, options: dict[str, Any], *, name: str | None, debug: bool
    ) -> RemotePool:
        remote = _PREPARED.get()
        if remote is None:
            remote = start(registry.check_name(name), environment, options, debug=debug)
        # The host's workers have the host's sys.path, not ours: always send the
        # directories of our own modules along (by-value stays allowed for equal X.Y).
        self._encoder = TaskEncoder(environment.python_xy, foreign=True)
        return remote

    @property
    def name(self) -> str:
        return self._pool.name

    @property
    def host_pid(self) -> int:
        return self._pool.host_pid

    def info(self) -> dict[str, Any]:
        """The host's view: worker pids, tasks served, attached clients, versions."""
        return self._pool.info()

    def stop_pool(self, timeout: float = 30.0) -> None:
        """Stop the persistent pool itself (not only this process's attachment)."""
        self._pool.shutdown(wait=False)
        stop(self._pool.name, store=self._pool.store, timeout=timeout)


def attach(name: str, *, store: Store | str | os.PathLike | None = None) -> PersistentExecutor:
    """An executor connected to the running persistent pool `name`.

    Raises `PoolNotFoundError` when no live pool has that name (a dead one's
    entry is pruned, never attached to) and `PoolVersionError` when the pool
    runs another bayou or cloudpickle version than this process.
    """
    remote = connect(registry.check_name(name), store)
    token = _PREPARED.set(remote)
    try:
        return PersistentExecutor(
            remote.max_workers, env=remote.environment, persistent=True, name=name
        )
    except BaseException:
        remote.shutdown(wait=False)
        raise
    finally:
        _PREPARED.reset(token)


__all__ = [
    "PersistentExecutor",
    "PoolEntry",
    "PoolNotFoundError",
    "PoolVersionError",
    "RemotePool",
    "attach",
    "connect",
    "list_pools",
    "start",
    "stop",
]


EnvExecutor._persistent_class = PersistentExecutor  # `EnvExecutor(persistent=True)` makes one
