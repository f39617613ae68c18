"""multiprocessing objects that only inheritance can share, and what to use instead.

A `multiprocessing.Queue`, `Lock`, `Event`, `Value`... refuses to be pickled
(``RuntimeError: Queue objects should only be shared between processes through
inheritance``) except while multiprocessing itself starts a child process and
hands it over. bayou's workers are interpreters that bayou starts, so such an
object can never reach them, in `initargs` or as an argument. A manager's
proxy of the same kind (``multiprocessing.Manager().Queue()``) pickles, and
works: the worker connects back to the manager with the caller's
multiprocessing authkey, which bayou gives its workers.

`inheritance_only_hint(obj)` says that, for one object; `locate(value, where)`
finds such an object inside an argument, so an error message can name it.
"""

from __future__ import annotations

from multiprocessing import queues, sharedctypes, synchronize
from typing import Any

__all__ = ["inheritance_only_hint", "locate"]

#: (class, the public name it is made by, the `Manager()` method making its proxy).
#: Subclasses before their bases: the first match wins.
_KINDS: tuple[tuple[type, str, str], ...] = (
    (queues.JoinableQueue, "JoinableQueue", "JoinableQueue()"),
    (queues.Queue, "Queue", "Queue()"),
    (queues.SimpleQueue, "SimpleQueue", "Queue()"),
    (synchronize.RLock, "RLock", "RLock()"),
    (synchronize.Lock, "Lock", "Lock()"),
    (synchronize.BoundedSemaphore, "BoundedSemaphore", "BoundedSemaphore(value)"),
    (synchronize.Semaphore, "Semaphore", "Semaphore(value)"),
    (synchronize.Condition, "Condition", "Condition()"),
    (synchronize.Event, "Event", "Event()"),
    (synchronize.Barrier, "Barrier", "Barrier(parties)"),
    (sharedctypes.SynchronizedString, "Array", "Array(typecode, sequence)"),
    (sharedctypes.SynchronizedArray, "Array", "Array(typecode, sequence)"),
    (sharedctypes.Synchronized, "Value", "Value(typecode, value)"),
)

#: Containers `locate` looks into, and how far, so a big argument costs little.
_MAX_DEPTH = 4
_MAX_VISITS = 10_000


def inheritance_only_hint(obj: Any) -> str | None:
    """Why `obj` cannot reach a bayou worker and what to pass instead, or None.

    None unless `obj` is a multiprocessing synchronisation object or queue
    that multiprocessing shares only with the processes it starts itself.
    The text is a sentence fragment meant to follow the pickling error, e.g.
    ``cannot pickle initargs[0] (multiprocessing.queues.Queue) ...: RuntimeError:
    ...; <hint>``.
    """
    for cls, public, proxy in _KINDS:
        if isinstance(obj, cls):
            return (
                f"bayou's workers are not started by multiprocessing, so a "
                f"multiprocessing.{public} cannot reach them: pass a manager's proxy "
                f"instead, multiprocessing.Manager().{proxy}, which can be pickled (keep "
                f"the manager running while the workers use it)"
            )
    return None


def locate(value: Any, where: str) -> tuple[str, Any] | None:
    """The first object in `value` that `inheritance_only_hint` knows, with its place.

    `where` names `value` (``"initargs[1]"``, ``"argument 0"``); the place found
    extends it (``"initargs[1]['queue']"``). Looks into tuples, lists, sets
    and dict values, a few levels deep; None when nothing is found.
    """
    visits = 0

    def walk(obj: Any, path: str, depth: int) -> tuple[str, Any] | None:
        nonlocal visits
        visits += 1
        if inheritance_only_hint(obj) is not None:
            return path, obj
        if depth >= _MAX_DEPTH or visits > _MAX_VISITS:
            return None
        if isinstance(obj, dict):
            items = ((f"{path}[{k!r:.60}]", v) for k, v in obj.items())
        elif isinstance(obj, (tuple, list)):
            items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
        elif isinstance(obj, (set, frozenset)):
            items = ((f"an item of {path}", v) for v in obj)
        else:
            return None
        for sub_path, item in items:
            found = walk(item, sub_path, depth + 1)
            if found is not None or visits > _MAX_VISITS:
                return found
        return None

    return walk(value, where, 0)
