"""The records the pool keeps: one submitted task (`WorkItem`) and one worker
(`WorkerHandle`: the dispatcher's `Worker` plus the process, socket and output
that go with it), and the two timing settings both ends of a worker share.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from ..environment import Environment
from ..worker import wire
from .dispatch import Worker
from .output import WorkerOutput
from .process import WorkerProcess

SPIN_SECONDS = 100e-6  # how long a waiting caller or an idle worker polls before sleeping


def spin_seconds() -> float:
    """`SPIN_SECONDS`, or `$BAYOU_SPIN_US` microseconds (0 turns spinning off)."""
    value = os.environ.get("BAYOU_SPIN_US", "").strip()
    if not value:
        return SPIN_SECONDS
    try:
        return max(0.0, float(value)) / 1e6
    except ValueError:
        raise ValueError(
            f"BAYOU_SPIN_US must be a number of microseconds, not {value!r}"
        ) from None


def heartbeat_interval(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    return min(1.0, max(0.05, timeout / 5))


@dataclass(eq=False)
class WorkItem:
    """One submitted call (or map chunk) and its future."""

    future: Any
    call_kind: int
    fn_record: tuple
    args_blob: bytes
    roots: frozenset
    label: str
    task_id: int = 0
    attempts: int = 0
    started: bool = False
    cancel_requested: bool = False  # bayou.cancel: the future ends cancelled either way
    stop_requested: bool = False  # shutdown(cancel_futures=True): ends cancelled only if killed
    undelivered: bool = False  # its TASK frame could not be sent: the worker was already dead
    spin_after: bool = False  # its worker should poll for the next task (see `dispatch`)
    worker: WorkerHandle | None = None
    oob: protocol.OutOfBand | None = None  # big argument buffers (shared memory or inline)
    # Not a call: its worker is lent to a persistent pool's client (`lending`); the
    # object's `lent(worker)` is told instead of a TASK being sent
    lease: Any = None
    # (call kind, (args, kwargs) or a map chunk's argument tuples), kept as
    # ProcessPoolExecutor keeps them until the task is settled, to name the argument
    # a worker could not load
    call: tuple | None = field(default=None, repr=False)
    _payload: tuple[list, list[int]] | None = field(default=None, repr=False)

    def release(self) -> None:
        """Drop the pickled call once the item is settled (its future may live long)."""
        self.args_blob = b""
        self.fn_record = ()
        self.call = None
        self._payload = None
        if self.oob is not None:
            oob, self.oob = self.oob, None
            oob.release()

    def requeued(self) -> None:
        """Back in the queue (retried, or never delivered): encode the TASK again."""
        self._payload = None

    def payload(self) -> tuple[list, list[int]]:
        """(TASK payload parts, descriptors to attach)."""
        if self._payload is None:
            self._payload = protocol.encode_task(
                self.task_id,
                self.call_kind,
                self.fn_record,
                self.args_blob,
                self.roots,
                self.oob,
                self.spin_after,
            )
        return self._payload


class WorkerHandle(Worker):
    """The supervisor's record of one worker process: the dispatcher's `Worker` and
    the process, socket, pipes and output that go with it."""

    def __init__(
        self,
        slot: int,
        worker_id: int,
        popen: subprocess.Popen,
        output: WorkerOutput,
        environment: Environment,
    ) -> None:
        super().__init__(slot=slot, worker_id=worker_id, started_at=time.monotonic())
        self.popen = popen
        self.pid = popen.pid
        self.process = WorkerProcess(popen)
        self.sock: socket.socket | None = None
        self.reader: wire.FrameReader | None = None
        self.send_lock = threading.Lock()
        # Whoever reads `sock` holds this: the supervisor (briefly, per event) or a
        # caller thread waiting for this worker's result (`Pool.follow`), taken with
        # `start_reading`, which notes the thread (`lending.lend` asks who reads).
        self.read_lock = threading.Lock()
        self.reading_thread: int | None = None
        self.sock_data = ("sock", self)  # its selector key's data, the same across re-registers
        self.psutil_process: Any = None  # psutil.Process, made when first measured
        self.pidfd: int | None = None
        self.output = output
        self.version = environment.python_version
        self.env_hash = environment.hash
        self.title = ""  # how messages name it, when not "worker <slot>" (an actor)

    def start_reading(self) -> bool:
        """Take `read_lock` if it is free; whether we did."""
        if not self.read_lock.acquire(blocking=False):
            return False
        self.reading_thread = threading.get_ident()
        return True

    def stop_reading(self) -> None:
        self.reading_thread = None
        self.read_lock.release()

    def rss(self) -> int:
        """Its resident memory in bytes (0 once it is gone)."""
        try:
            if self.psutil_process is None:
                import psutil

                self.psutil_process = psutil.Process(self.pid)
            return int(self.psutil_process.memory_info().rss)
        except Exception:
            return 0

    def describe(self) -> str:
        who = self.title or f"worker {self.slot}"
        return f"{who} (pid {self.pid}, env {self.env_hash}, Python {self.version})"

    @property
    def lent(self) -> bool:
        """Whether a client reads and writes its socket now (`lending`): the pool must not."""
        item = self.item
        return item is not None and item.lease is not None

    def send_task(self, item: WorkItem) -> None:
        if item.lease is not None:
            item.lease.lent(self)
            return
        parts, fds = item.payload()
        if item.oob is not None:
            item.oob.sent()
        # A failed send means the worker is already dead (killed after it went
        # idle, before the supervisor saw it go): the task never reached it, so
        # `workers.on_exit` re-queues it without counting an attempt.
        item.undelivered = not self.send(wire.TASK_FDS if fds else wire.TASK, parts, fds)
        if item.stop_requested or item.cancel_requested:
            self.send(wire.CANCEL, pickle.dumps(item.task_id, 4))

    def send(self, kind: int, payload: bytes | list = b"", fds: Sequence[int] = ()) -> bool:
        with self.send_lock:
            if self.sock is None:
                return False
            try:
                wire.send_frame(self.sock, kind, payload, fds)
                return True
            except OSError:
                return False
