"""Every exception a bayou user can meet, in one place.

Errors are grouped by the stage that raises them: describing an environment
(`SpecError`), building it (`ProvisionError`), and running work in it
(`RemoteError`, `WorkerCrashedError`, `WorkerHungError`, `TaskTimeoutError`).
The worker-side failures subclass `BrokenProcessPool` so code written for
`ProcessPoolExecutor` keeps catching them.
"""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool


class BayouError(Exception):
    """Base class of bayou's own errors."""


class SpecError(BayouError, ValueError):
    """An environment description is invalid.

    `file`, `line` and `entry` name the culprit when known, so the message can
    point the user at the exact spot to fix.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        entry: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.entry = entry
        self.reason = message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        what = f" (entry {entry!r})" if entry is not None else ""
        super().__init__(f"{where}{message}{what}")


class ProvisionError(BayouError):
    """Building an environment failed.

    `package` names the spec at fault when it is known, `output` keeps the
    tool's full output (also written to `log_file`) so nothing is lost when the
    message is shortened for display.
    """

    def __init__(
        self,
        message: str,
        *,
        package: str | None = None,
        channels: tuple[str, ...] | None = None,
        output: str = "",
        log_file: str | None = None,
    ) -> None:
        self.package = package
        self.channels = channels
        self.output = output
        self.log_file = log_file
        text = message
        if log_file:
            text += f"\n(full output in {log_file})"
        super().__init__(text)


class EnvInUseError(BayouError):
    """An env cannot be removed: a running executor (of any process) uses it."""


class ProvisionTimeout(ProvisionError, TimeoutError):
    """Provisioning took longer than the caller allowed; nothing was published."""


class BundleError(ProvisionError):
    """A bundle (`bayou.pack` / `bayou.unpack`) cannot be made or installed:
    unreadable, corrupted, truncated, for another platform or Python, or
    missing a package. `bundle` names the file or URL; nothing was published."""

    def __init__(
        self,
        message: str,
        *,
        bundle: str | None = None,
        package: str | None = None,
        output: str = "",
    ) -> None:
        self.bundle = bundle
        super().__init__(message, package=package, output=output)


class RemoteError(BayouError):
    """An exception raised in a worker whose type the caller cannot import."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.traceback_text:
            text += "\n\nRemote traceback:\n" + self.traceback_text
        return text

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class WorkerCrashedError(BrokenProcessPool, BayouError):
    """The worker running a task died; only that task fails.

    `exitcode` is the worker's exit status as `multiprocessing` reports it
    (negative: killed by that signal), `pid` the worker's, `stderr_tail` its last
    stderr lines: what a user needs to tell a segfault from an OOM kill from a
    `sys.exit` without reading logs."""

    exitcode: int | None = None
    pid: int | None = None
    stderr_tail: tuple[str, ...] = ()


class WorkerHungError(WorkerCrashedError):
    """The worker stopped sending heartbeats and was killed."""


class TaskTimeoutError(WorkerCrashedError, TimeoutError):
    """A task ran longer than `task_timeout`; its worker was killed and replaced."""


class MemoryLimitError(WorkerCrashedError, MemoryError):
    """A worker crossed `max_memory_per_worker` while running a task."""


class ActorDiedError(BrokenProcessPool, BayouError):
    """An actor's process died with no restarts left (`max_restarts`), or its
    constructor raised: the calls queued then, and every later one, fail with
    this. The call in flight at the death fails with the death's own error
    (`WorkerCrashedError`, ...). A `BrokenProcessPool`, as the actor is a pool
    of one that can no longer work."""


class PicklingError(BayouError, pickle.PicklingError, TypeError):
    """Something that must cross the process boundary cannot be serialised.

    A `pickle.PicklingError` too, so code (and CPython's tests) written for
    ProcessPoolExecutor keeps catching it."""


class CrossVersionError(PicklingError):
    """A function or class that only travels as bytecode was sent to a worker of
    another Python X.Y. Raised by `submit`/`map` themselves, not through the
    future: the call can never work, and the message says how to fix it."""


class UnpicklingError(BrokenProcessPool, BayouError, pickle.UnpicklingError):
    """A task could not be loaded in the worker (e.g. its module is missing
    there), or its result could not be loaded in the caller. Only that task
    fails."""
