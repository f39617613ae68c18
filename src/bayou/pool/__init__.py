"""The pool: worker processes for one environment and the supervisor that runs them.

`supervisor.Pool` is the selector loop, carrying out what `dispatch` (a pure
state machine: queues, workers' phases, retries, deadlines) decides. The
other parts each do one job: `process` (start, signal, describe one worker
process), `workers` (spawning, pipes and deaths, as the supervisor runs them),
`connection` (the handshake), `welcome` (a verified connection becomes a
worker's socket), `frames` (one worker's frames in), `output` (a worker's
stdout/stderr), `outcome` (a RESULT or a death becomes a value or an
exception), `follow` (the waiting thread reads its own worker), `loop_io`
(the loop's listener, selector and wakeup pipe), `crash` (the loop itself
raised), and `lifetime` (the process-wide duties: the exit hook, forks).
"""

from . import lifetime, outcome
from .dispatch import PREFETCH, SHUTDOWN_GRACE
from .output import MODES as OUTPUT_MODES
from .process import BOOTSTRAP, WorkerProcess
from .records import SPIN_SECONDS, WorkerHandle, WorkItem, heartbeat_interval, spin_seconds
from .supervisor import Pool

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
    "outcome",
    "spin_seconds",
]
