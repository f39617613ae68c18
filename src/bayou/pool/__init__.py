"""The pool: worker processes for one environment and the supervisor that runs them.

`supervisor.Pool` is the selector loop; the parts it is made of each do one
job: `process` (start, signal, describe one worker process), `output` (a
worker's stdout/stderr), and the process-wide duties in `lifetime`.
"""

from . import lifetime
from .process import BOOTSTRAP, WorkerProcess
from .supervisor import (
    OUTPUT_MODES,
    PREFETCH,
    SHUTDOWN_GRACE,
    SPIN_SECONDS,
    Pool,
    WorkerHandle,
    WorkItem,
    heartbeat_interval,
    spin_seconds,
)

__all__ = [
    "BOOTSTRAP",
    "OUTPUT_MODES",
    "PREFETCH",
    "SHUTDOWN_GRACE",
    "SPIN_SECONDS",
    "Pool",
    "WorkItem",
    "WorkerHandle",
    "WorkerProcess",
    "heartbeat_interval",
    "lifetime",
    "spin_seconds",
]
