"""The task currently running in this worker, as seen by `bayou.report_progress`.

`main` calls `begin`/`end` around each task and hands over a `send` function;
the io thread calls `request_cancel` when a CANCEL frame arrives and
`flush_progress` on every tick. Progress is rate limited: an update within
`MIN_INTERVAL` of the previous one is kept as pending and sent by the next
tick or right before the result, so the last value always arrives.
"""

from __future__ import annotations

import pickle
import threading
import time

from . import wire

MIN_INTERVAL = 0.05

_lock = threading.Lock()
_send = None  # callable(kind, payload), set by main
_task_id = None
_cancelled = False
_pending = None
_last_sent = 0.0


def install(send) -> None:
    global _send
    _send = send


def begin(task_id: int) -> None:
    global _task_id, _cancelled, _pending, _last_sent
    with _lock:
        _task_id, _cancelled, _pending, _last_sent = task_id, False, None, 0.0


def end() -> None:
    global _task_id, _cancelled
    flush_progress()
    with _lock:
        _task_id, _cancelled = None, False


def running() -> bool:
    return _task_id is not None


def request_cancel(task_id: int) -> None:
    global _cancelled
    with _lock:
        if task_id == _task_id:
            _cancelled = True


def cancel_requested() -> bool:
    """True once the caller asked the running task to stop (`bayou.cancel`)."""
    return _cancelled


def report_progress(done, total=None, message=None) -> None:
    """Report how far the running task is; shows up as `future.progress`."""
    global _pending, _last_sent
    if _task_id is None or _send is None:
        return
    record = (
        _task_id,
        float(done),
        None if total is None else float(total),
        None if message is None else str(message),
    )
    now = time.monotonic()
    with _lock:
        if now - _last_sent < MIN_INTERVAL:
            _pending = record
            return
        _pending = None
        _last_sent = now
    _send(wire.PROGRESS, pickle.dumps(record, protocol=4))


def flush_progress() -> None:
    global _pending, _last_sent
    with _lock:
        record, _pending = _pending, None
        if record is not None:
            _last_sent = time.monotonic()
    if record is not None and _send is not None:
        _send(wire.PROGRESS, pickle.dumps(record, protocol=4))
