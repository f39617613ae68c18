"""A persistent pool's actors, kept by its host: found again by name from any client.

    client: ex.actor(Segmenter, name="model") ─▶ ("actor", request id, key, name,
        label, constructor, roots, max_restarts, env_vars), the class and its
        arguments pickled by the client (the host never unpickles them)
    host: HostActors.create ─▶ an actor pool of one worker (`actor.start_pool`,
        settled by `relay.relay_settle`), kept under its key ─▶ ("actor_ok",
        request id, key, label) or ("actor_error", request id, pickled error)
    client elsewhere: bayou.attach("seg").actor("model") ─▶ ("actor_find", ...)
    calls: ("actor_submit", key, <a submit's fields>) ─▶ that actor's pool
    ("actor_close", key, cancel) ─▶ its pool shut down, the key forgotten

A named actor belongs to the pool: it outlives the client that made it and is
ended by `Actor.close()` (from any client) or by stopping the pool. An
unnamed one can only be reached by its maker, so it ends with that client's
session. `entries` is what ``bayou workers list`` shows of each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import actor, errors
from ..environment import Environment
from ..pool import Pool, WorkItem


@dataclass
class HostActor:
    key: str  # its name, or "#<session>.<n>" for an unnamed one
    label: str  # the class, as messages name it
    pool: Pool
    session: int  # the session that made it
    named: bool

    def entry(self) -> dict[str, Any]:
        pids = tuple(self.pool.processes)
        workers = list(self.pool.dispatch.workers)
        rss = sum(w.rss() for w in workers if not w.exiting)
        return {
            "name": self.key,
            "class": self.label,
            "pid": pids[0] if pids else None,
            "calls": self.pool.served,
            "restarts": self.pool.deaths,
            "rss": rss,
            "alive": self.pool.broken is None,
        }


class HostActors:
    """The actors of one pool host (thread-safe: sessions call in concurrently)."""

    def __init__(
        self,
        environment: Environment,
        options: dict[str, Any],
        settle: Callable[[WorkItem, int, Any], None],
    ) -> None:
        self.environment = environment
        self.options = options  # the host pool's options: logs, timeouts, initializer
        self.settle = settle
        self._lock = threading.Lock()
        self._actors: dict[str, HostActor] = {}
        self._unnamed = 0

    def create(
        self,
        session: int,
        name: str | None,
        label: str,
        constructor: bytes,
        roots: frozenset[str],
        max_restarts: int,
        env_vars: dict[str, str] | None,
    ) -> HostActor:
        """Start an actor; a live one of that name already there is an error."""
        with self._lock:
            if name is not None:
                existing = self._actors.get(name)
                if existing is not None and existing.pool.broken is None:
                    raise ValueError(
                        f"this persistent pool already has an actor named {name!r} "
                        f"({existing.label}): find it with .actor({name!r}), or close it first"
                    )
                key = name
            else:
                self._unnamed += 1
                key = f"#{session}.{self._unnamed}"
        pool = actor.start_pool(
            self.environment,
            self.options,
            constructor,
            roots,
            max_restarts=max_restarts,
            env_vars=env_vars,
            title=f"actor {label}" + (f" {name!r}" if name else ""),
            settle=self.settle,
        )
        entry = HostActor(key, label, pool, session, named=name is not None)
        with self._lock:
            self._actors[key] = entry
        return entry

    def find(self, key: str) -> HostActor:
        with self._lock:
            found = self._actors.get(key)
        if found is None:
            raise errors.ActorDiedError(self._missing(key))
        return found

    def _missing(self, key: str) -> str:
        with self._lock:
            names = sorted(k for k, a in self._actors.items() if a.named)
        known = ", ".join(map(repr, names)) or "none"
        return f"this persistent pool has no actor {key!r} (its named actors: {known})"

    def close(self, key: str, cancel: bool) -> None:
        with self._lock:
            found = self._actors.pop(key, None)
        if found is not None:
            found.pool.shutdown(wait=False, cancel_futures=cancel)

    def session_ended(self, session: int) -> None:
        """The unnamed actors of a client that left: nobody can reach them now."""
        with self._lock:
            gone = [a for a in self._actors.values() if a.session == session and not a.named]
            for a in gone:
                del self._actors[a.key]
        for a in gone:
            a.pool.shutdown(wait=False, cancel_futures=True)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            actors = list(self._actors.values())
        return [a.entry() for a in actors]

    def stop_all(self) -> None:
        with self._lock:
            actors = list(self._actors.values())
            self._actors.clear()
        for a in actors:
            a.pool.shutdown(wait=False, cancel_futures=True)
        for a in actors:
            a.pool.shutdown(wait=True, cancel_futures=True)
