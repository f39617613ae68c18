"""What a task's end becomes: a value or an exception for its future.

Two ways a task ends, and what this module makes of them::

    RESULT frame ─▶ status OK ─────────▶ the value (unpickled here, names mapped)
                    RAISED ────────────▶ the task's own exception, remote traceback as cause
                    LOAD_FAILED ───────▶ UnpicklingError naming the function, or the
                                         argument at fault (`boundary.culprit`)
                    RESULT_UNPICKLABLE ▶ PicklingError naming the result's type
    worker death ─▶ kill reason ───────▶ WorkerCrashedError / WorkerHungError /
                                         TaskTimeoutError / MemoryLimitError /
                                         BrokenProcessPool, and whether a retry is allowed

Nothing here touches a socket, a process or the pool's state: the supervisor
(or a follower, or a persistent pool's client) hands in what it read, and
settles the future with what comes out (`futures`).
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .. import boundary, errors, protocol
from ..environment import Environment
from ..futures import set_exception, set_result
from ..worker import wire
from . import process


def settle(item: Any, status: int, data: Any, environment: Environment | None) -> None:
    """Settle `item`'s future: `data` is (payload, start, end, buffers) for OK, else an
    error record, or an exception met reading it. The pool's and a persistent pool's
    client's one way to turn a worker's answer into the future's outcome."""
    failure = None
    if status != wire.OK and not item.cancel_requested and not isinstance(data, BaseException):
        # before release: naming the argument at fault reads item.call
        failure = remote_error(item, status, data, environment=environment)
    item.release()
    fut = item.future
    if item.cancel_requested:
        fut._force_cancel()
    elif status == wire.OK:
        result, error = value(item, data, environment)
        del data
        if error is None:
            set_result(fut, result)
        else:
            set_exception(fut, error)
    elif isinstance(data, BaseException):
        set_exception(fut, data)
    else:
        assert failure is not None  # an error record: made into `failure` above
        set_exception(fut, failure)


def value(
    item: Any, data: tuple, environment: Environment | None
) -> tuple[Any, BaseException | None]:
    """(value, None) or (None, the error) for an OK RESULT's `data`
    (payload, start, end, buffers)."""
    try:
        result = protocol.loads(data[0], data[1], data[2], data[3])
        if item.call_kind == wire.ITEMS:  # (values, (status, record) | None)
            values, error = result
            if error is not None:
                error = remote_error(item, *error, environment=environment)
            result = (values, error)
    except BaseException as exc:
        return None, boundary.result_load_error(item.label, exc)
    return result, None


def remote_error(
    item: Any, status: int, record: dict, *, environment: Environment | None
) -> BaseException:
    """The exception a failed task's error record stands for."""
    cause = protocol.rebuild_exception(record)
    if status == wire.RAISED:
        return cause
    if status == wire.LOAD_FAILED:
        err: BaseException = errors.UnpicklingError(load_failure(item, record, environment))
    else:
        err = errors.PicklingError(
            f"the {record.get('note') or 'result'} returned by {item.label} could not be "
            f"pickled in the worker: {record['type']}: {record['message']}"
        )
    err.__cause__ = cause
    return err


def load_failure(item: Any, record: dict, environment: Environment | None) -> str:
    """What a worker could not load, named: the function, or the argument at fault."""
    where = f"env {environment.hash}, " if environment is not None else ""
    versions = boundary.versions_text(record.get("versions")) or (
        f"Python {environment.python_version}" if environment is not None else "?"
    )
    reason = f"{record['type']}: {record['message']}"
    if record.get("note") != "arguments":
        return f"{item.label} could not be loaded in the worker ({where}{versions}): {reason}"
    culprit = None
    if item.call is not None and environment is not None:
        encoder = boundary.TaskEncoder(environment.python_xy, foreign=not environment.is_current)
        kind, payload = item.call
        candidates = (
            boundary.call_candidates(*payload)
            if kind == wire.CALL
            else boundary.chunk_candidates(payload)
        )
        culprit = boundary.culprit(encoder, candidates, record)
    missing = record.get("missing") or (record.get("global") or "").rpartition(".")[0]
    hint = (
        f" The env lacks {missing!r}: install it there, or send builtins or numpy data instead."
        if missing
        else ""
    )
    return (
        f"{culprit or 'an argument'} of the call to {item.label} could not be loaded in "
        f"the worker ({where}{versions}): {reason}.{hint}"
    )


def broken_error(
    message: str, cause: BaseException | None, *, actor: bool, init_failed: bool
) -> BaseException:
    """The exception a queued task gets when its pool breaks.

    A task pool's is ProcessPoolExecutor's `BrokenProcessPool`. An actor's
    calls get the constructor's own exception when it raised (that is what a
    user must see, not a wrapper), else `ActorDiedError`."""
    if actor and init_failed and cause is not None:
        return cause
    exc = errors.ActorDiedError(message) if actor else BrokenProcessPool(message)
    exc.__cause__ = cause
    return exc


def exit_error(
    who: str,
    label: str,
    kill_reason: tuple[type | None, str] | None,
    rc: int,
    pid: int,
    err_tail: tuple[str, ...],
    tail_text: str,
    broken_cause: BaseException | None,
) -> tuple[BaseException, bool]:
    """The exception for a task whose worker died, and whether a retry is allowed.

    `kill_reason` is why the pool killed it (None: it died by itself)."""
    cls, why = kill_reason or (errors.WorkerCrashedError, "")
    if cls is errors.WorkerCrashedError or cls is None:  # died by itself (or quiet kill)
        msg = f"{who} {process.exit_text(rc)} while running {label}"
        exc = errors.WorkerCrashedError(msg + tail_text)
        retryable = True
    elif cls is BrokenProcessPool:
        broken = BrokenProcessPool(why)
        broken.__cause__ = broken_cause
        return broken, False
    else:
        exc = cls(f"{who} was killed while running {label}: {why}{tail_text}")
        retryable = cls is errors.WorkerHungError
    exc.exitcode, exc.pid, exc.stderr_tail = rc, pid, err_tail
    return exc, retryable
