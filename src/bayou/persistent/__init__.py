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

from .. import actor as actor_module
from ..actor import Actor
from ..boundary import TaskEncoder
from ..environment import Environment
from ..executor import EnvExecutor
from ..store import Store
from . import registry
from .client import _PREPARED, RemotePool, connect, list_pools, start, stop
from .registry import PoolEntry, PoolNotFoundError, PoolVersionError
from .remote_actor import RemoteActorPool, reply_value


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
        """The host's view: worker pids, tasks served, attached clients, versions, and
        ``lanes``, how many workers it has lent to back-to-back clients (`lanes`)."""
        return self._pool.info()

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
        """An actor living in the pool host (docs/actors.md, docs/persistent.md).

        As `EnvExecutor.actor`; a `name` makes it the pool's: it outlives this
        process until `close()` or ``bayou workers stop``. ``actor("model")``
        (a name, no ``module:`` part, no arguments) finds a named actor made
        by any client of the pool."""
        if isinstance(cls, str) and ":" not in cls:
            if args or kwargs or max_restarts or env_vars or name not in (None, cls):
                raise TypeError(
                    f"actor({cls!r}) finds the pool's actor of that name: it takes no "
                    "constructor arguments or options (a class is 'module:Qualname')"
                )
            key, label = reply_value(self._pool.request("actor_find", cls))
            return Actor(RemoteActorPool(self._pool, key), self._encoder, label, key, False)
        max_restarts, variables = actor_module.check_options(cls, max_restarts, env_vars)
        if name is not None:
            registry.check_name(name)
        blobs, roots = actor_module.encode_constructor(
            self._encoder, cls, tuple(args), dict(kwargs or {})
        )
        key, label = reply_value(
            self._pool.request(
                "actor",
                name,
                actor_module.target_label(cls),
                actor_module.pickle_constructor(blobs),
                tuple(sorted(roots)),
                max_restarts,
                variables,
            )
        )
        handle_class = actor_module.handle_class(cls)
        handle = handle_class(
            RemoteActorPool(self._pool, key), self._encoder, label, name, name is None
        )
        return handle

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
