"""A persistent pool's actor as its clients hold it: an `Actor` over the host's connection.

    PersistentExecutor.actor(Segmenter, name="model") ─▶ constructor pickled here
        ─▶ RemotePool.request("actor", ...) ─▶ the host starts it (`actors`) ─▶ key
    attach("seg").actor("model") ─▶ request("actor_find", "model") ─▶ key
    Actor(RemoteActorPool(remote, key)).predict(x) ─▶ RemotePool.submit(item,
        actor=key) ─▶ ("actor_submit", key, ...) ─▶ the actor's pool on the host;
        the answer comes back as any task's, and result() follows the connection

What a local actor reads from its pool (pid, calls, restarts) is asked of the
host (`request("actor_info")`). A call to an actor that died is answered by
the host with `ActorDiedError`; `close()` ends it on the host, for every
client (a named actor belongs to the pool, not to the client that made it).
"""

from __future__ import annotations

import concurrent.futures
import pickle
import weakref
from typing import TYPE_CHECKING, Any

from ..pool import SHUTDOWN_GRACE, WorkItem

if TYPE_CHECKING:
    from .remote import RemotePool


def reply_value(reply: tuple) -> Any:
    """("ok", ...) gives what follows; ("error", pickled exception) raises it."""
    if reply[0] == "error":
        raise pickle.loads(reply[1])
    return reply[1:] if len(reply) > 2 else reply[1]


class RemoteActorPool:
    """What `bayou.Actor` needs of a pool, for an actor living in a pool host."""

    segments = None  # buffers travel inline to the host
    retries = 0
    broken: str | None = None  # the host answers calls to a dead actor with ActorDiedError
    broken_cause: BaseException | None = None

    def __init__(self, remote: RemotePool, key: str) -> None:
        self.remote = remote
        self.key = key
        self._closed = False
        self._futures: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()

    @property
    def _shutdown(self) -> bool:
        return self._closed or self.remote._shutdown

    def submit(self, item: WorkItem) -> None:
        self._futures.add(item.future)
        self.remote.submit(item, actor=self.key)

    def _entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = reply_value(self.remote.request("actor_info", self.key))
        return entry

    @property
    def processes(self) -> dict[int, None]:
        try:
            pid = self._entry()["pid"]
        except Exception:
            return {}
        return {} if pid is None else {pid: None}

    @property
    def served(self) -> int:
        return int(self._entry()["calls"])

    @property
    def deaths(self) -> int:
        return int(self._entry()["restarts"])

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """End the actor on the host: after this client's queued calls (`wait`), or
        cancelling them (`cancel_futures`)."""
        if self._closed or self.remote._detached:
            return
        self._closed = True
        if cancel_futures:
            for fut in list(self._futures):
                if not fut.cancel() and not fut.done():
                    getattr(fut, "cancel_hard", lambda grace: False)(SHUTDOWN_GRACE)
        if wait:
            concurrent.futures.wait(list(self._futures))
        self.remote._send(("actor_close", self.key, cancel_futures))
