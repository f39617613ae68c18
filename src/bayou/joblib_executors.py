"""The `EnvExecutor`s joblib's ``"bayou"`` backend shares between `Parallel` calls.

Starting workers in an environment costs far more than one `Parallel` call
should pay, so, like loky's reusable executor, the backend keeps executors
in a process-wide cache keyed by what the call asks for:

    BayouBackend.configure ── (environment, worker count, options) ──▶ `acquire`
        │ a usable executor with that key: shared (its `Slot` counts users)
        │ none: a new one; idle executors of the same environment make room
        ▼
    Slot ── `release` at the end of the call: workers stay for the next call
         ── `retire_if_exclusive` on abort: its only user may shut it down
    `shutdown()` ends them all

A forked child inherits copies of the cached executors without their
threads; `forget_inherited` (called by the backend's fork hook) sets them
aside, untouched for good, so the child starts executors of its own. This
module knows nothing of joblib: `bayou.joblib` adapts it to joblib's API.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from . import pool as pool_module
from .environment import Environment
from .executor import EnvExecutor


def _same(a: Any, b: Any) -> bool:
    """Equality that never raises (initargs may hold objects with odd `__eq__`)."""
    if a is b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return False


@dataclasses.dataclass(eq=False)
class Slot:
    """A cached EnvExecutor and how many configured backends use it."""

    environment: Environment
    workers: int
    options: dict[str, Any]
    executor: EnvExecutor
    users: int = 0

    def matches(self, environment: Environment, workers: int, options: dict[str, Any]) -> bool:
        return (
            self.environment == environment
            and dict(self.environment.env_vars) == dict(environment.env_vars)
            and self.workers == workers
            and _same(self.options, options)
        )

    @property
    def usable(self) -> bool:
        return not self.executor._broken and not self.executor._pool._shutdown


# Rebound, not cleared, in a forked child (`forget_inherited`): the parent's
# lock may have been held at the fork. `bayou.joblib._slots` reads them here.
_slots: list[Slot] = []
_slots_lock = threading.Lock()

#: In a forked child: the parent's cached executors, kept (never collected, so
#: nothing of theirs runs here) but never used.
_inherited: list[Slot] = []


def acquire(environment: Environment, workers: int, options: dict[str, Any]) -> Slot:
    """A shared executor for this key; idle ones of the same environment make room."""
    retired: list[Slot] = []
    with _slots_lock:
        for slot in list(_slots):
            if not slot.usable:
                _slots.remove(slot)
                retired.append(slot)
        for slot in _slots:
            if slot.matches(environment, workers, options):
                slot.users += 1
                break
        else:
            for old in [s for s in _slots if s.environment == environment and s.users == 0]:
                _slots.remove(old)
                retired.append(old)
            executor = EnvExecutor(workers, env=environment, **options)
            slot = Slot(environment, workers, dict(options), executor, users=1)
            _slots.append(slot)
    for old in retired:
        old.executor.shutdown(wait=False, cancel_futures=True)
    return slot


def release(slot: Slot) -> None:
    with _slots_lock:
        slot.users = max(0, slot.users - 1)


def retire_if_exclusive(slot: Slot) -> bool:
    """Take `slot` out of the cache if its one user is the caller; True if so."""
    with _slots_lock:
        if slot.users > 1:
            return False
        if slot in _slots:
            _slots.remove(slot)
        slot.users = 0
        return True


def shutdown(wait: bool = True) -> None:
    """Shut down the executors the backend keeps for reuse (their workers exit).

    Calls still running keep going until their tasks end; a later `Parallel`
    call starts new workers.
    """
    with _slots_lock:
        slots = list(_slots)
        _slots.clear()
    for slot in slots:
        slot.executor.shutdown(wait=wait)


def forget_inherited() -> None:
    """In a forked child: set the parent's executors aside, with a new, free lock.

    Their finalizers are detached and they leave the pools that `bayou.pool`
    shuts down at interpreter exit: either would shut the parent's pool down
    from here."""
    global _slots, _slots_lock
    inherited, _slots = _slots, []
    _slots_lock = threading.Lock()
    for slot in inherited:
        finalizer = getattr(slot.executor, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        pool_module.lifetime.unregister(slot.executor._pool)
    _inherited.extend(inherited)
