"""The functions the executor benchmarks run in workers, and the class their actors hold.

They live in an importable module (``benchmarks.workloads``), not in the
benchmark script, so that every executor gets them the same way:
ProcessPoolExecutor and loky pickle them by reference and import this module in
the worker; bayou with ``env=None`` does the same; bayou with a provisioned env
of the caller's Python X.Y ships them with its cloudpickle and puts this
module's root on the worker's path.

Stdlib only, and nothing runs at import: a worker pays for importing this
module on its first task, and that should cost the same everywhere (numpy is
imported in a worker only when a numpy array is unpickled there).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TypeVar

T = TypeVar("T")


def noop() -> None:
    """The cheapest possible task: measures the executor's own round trip."""
    return None


def tiny(x: int) -> int:
    """A task that is all overhead, for `map` throughput."""
    return x + 1


def identity(x: T) -> T:
    """Send `x` back: measures argument and result transfer (both directions)."""
    return x


def sleep_stamp(seconds: float) -> tuple[int, float]:
    """Sleep, then say which process ran the task and when it finished.

    The time is ``time.monotonic()``: on Linux that is CLOCK_MONOTONIC, one
    clock for every process of the machine, so the caller can compare it with
    its own readings (cold start).
    """
    time.sleep(seconds)
    return os.getpid(), time.monotonic()


class Model:
    """An actor's class (``EnvExecutor.actor``, Dask's ``actor=True``): state
    built once in its process, methods called on it there."""

    def __init__(self, k: int = 1) -> None:
        self.k = k

    def noop(self) -> None:
        """The cheapest possible method call: measures the actor's own round trip."""
        return None

    def predict(self, x: int) -> int:
        return x * self.k

    def python(self) -> str:
        """The X.Y of the interpreter that holds the object."""
        return f"{sys.version_info[0]}.{sys.version_info[1]}"

    def getpid(self) -> int:
        """Which process holds the object (not ``pid``: `bayou.Actor.pid` is a property)."""
        return os.getpid()
