"""Running the build tools (the rattler child, uv) as killable subprocesses.

Every tool runs in its own process group with a deadline. Its stdout lines
are handed to a callback as they arrive (progress), stdout and stderr are
kept whole for error reports and the build log. When the deadline passes or
the caller is interrupted (Ctrl-C), the whole group is killed before the
exception propagates, so no tool keeps writing into a build directory that is
about to be discarded. `offline_requested` reads the offline switch every
step honours (no network: see docs/offline-and-shared.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import ProvisionTimeout

OFFLINE_VAR = "BAYOU_OFFLINE"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def offline_requested(offline: bool | None = None) -> bool:
    """Whether a build may use the network: `offline` when given, else ``$BAYOU_OFFLINE``.

    A value that is neither true nor false raises rather than guessing: a
    misspelt ``BAYOU_OFFLINE=ture`` must not quietly go online."""
    if offline is not None:
        return bool(offline)
    value = os.environ.get(OFFLINE_VAR, "").strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(
        f"${OFFLINE_VAR}={os.environ[OFFLINE_VAR]!r}: expected 1/true/yes/on or 0/false/no/off"
    )


class Deadline:
    """Remaining time of one provision() call, shared by its steps."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def check(self, what: str) -> None:
        if self._end is not None and time.monotonic() >= self._end:
            raise ProvisionTimeout(f"provisioning timed out after {self.seconds:g} s ({what})")


@dataclass
class ToolResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"$ {' '.join(self.argv)}\n{self.stdout}{self.stderr}"


def run_tool(
    argv: Sequence[str],
    *,
    deadline: Deadline,
    what: str,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    cwd: str | None = None,
) -> ToolResult:
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
    )
    out_lines: list[str] = []
    err_chunks: list[str] = []

    def pump_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out_lines.append(line)
            if on_line is not None:
                try:
                    on_line(line)
                except Exception:  # a progress callback must not break a build
                    pass

    def pump_stderr() -> None:
        assert proc.stderr is not None
        err_chunks.append(proc.stderr.read())

    readers = [threading.Thread(target=f, daemon=True) for f in (pump_stdout, pump_stderr)]
    for reader in readers:
        reader.start()
    try:
        remaining = deadline.remaining()
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise ProvisionTimeout(
                f"provisioning timed out after {deadline.seconds:g} s while {what}"
            )
    except BaseException:
        kill_group(proc)
        raise
    for reader in readers:
        reader.join(timeout=5)
    return ToolResult(list(argv), proc.returncode, "".join(out_lines), "".join(err_chunks))


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the process that started me
    dies, even by SIGKILL, so no tool outlives a killed build."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
