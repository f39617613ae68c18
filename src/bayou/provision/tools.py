"""Running the build tools (the rattler child, uv) as killable subprocesses.

Every tool runs in its own process group with a deadline. Its stdout lines
(and, when asked, its stderr as it streams) are handed to callbacks as they
arrive (progress); stdout and stderr are kept whole for error reports and the
build log. A tool that draws progress only on a terminal (uv) can get a
pseudo-terminal as its stderr (`stderr_tty`); what it printed is then kept as
a terminal would show it at the end (`terminal_text`: redrawn bars gone).
When the deadline passes or the caller is interrupted (Ctrl-C), the whole
group is killed before the exception propagates, so no tool keeps writing
into a build directory that is about to be discarded. `offline_requested` reads the offline switch every
step honours (no network: see docs/offline-and-shared.md).
"""

from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def _pump(source: Iterable[str], kept: list[str], callback: Callable[[str], None] | None) -> None:
    """Keep what a tool writes, and hand each piece to `callback` as it comes."""
    for piece in source:
        kept.append(piece)
        if callback is not None:
            try:
                callback(piece)
            except Exception:  # a progress callback must not break a build
                pass


def run_tool(
    argv: Sequence[str],
    *,
    deadline: Deadline,
    what: str,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    cwd: str | None = None,
    on_stderr: Callable[[str], None] | None = None,
    stderr_tty: bool = False,
) -> ToolResult:
    tty = _open_tty() if stderr_tty else None  # (ours, the tool's); None: a pipe
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if tty is None else tty[1],
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    except BaseException:
        if tty is not None:
            os.close(tty[0])
        raise
    finally:
        if tty is not None:
            os.close(tty[1])  # the tool has its copy: reading ours ends when it exits
    out_lines: list[str] = []
    err_chunks: list[str] = []

    def pump_stdout() -> None:
        assert proc.stdout is not None
        _pump(proc.stdout, out_lines, on_line)

    def pump_stderr() -> None:
        chunks = _read_tty(tty[0]) if tty is not None else proc.stderr
        assert chunks is not None
        _pump(chunks, err_chunks, on_stderr)

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
    stderr = "".join(err_chunks)
    if tty is not None:
        stderr = terminal_text(stderr)
    return ToolResult(list(argv), proc.returncode, "".join(out_lines), stderr)


def _open_tty() -> tuple[int, int] | None:
    """A pseudo-terminal for a tool's stderr, wide enough that a progress line
    is not cut, with no output processing (``\n`` stays ``\n``); None where
    none can be had (the tool then writes to a pipe, and draws no progress)."""
    try:
        import fcntl
        import struct
        import termios

        ours, theirs = os.openpty()
    except (ImportError, OSError):
        return None
    try:
        fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        attrs = termios.tcgetattr(theirs)
        attrs[1] &= ~termios.OPOST
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(theirs, termios.TCSANOW, attrs)
    except OSError:
        pass
    return ours, theirs


def _read_tty(fd: int) -> Iterator[str]:
    """What a tool writes to its pseudo-terminal, until every writer closed it."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the last writer closed it
                data = b""
            text = decoder.decode(data, final=not data)
            if text:
                yield text
            if not data:
                return
    finally:
        os.close(fd)


_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")


def terminal_text(raw: str) -> str:
    """The lines a terminal keeps of `raw`: each line as written after its last
    carriage return or erase (which is how progress bars redraw themselves),
    without escape sequences. Bars drawn over and erased leave nothing."""
    lines = [
        _ESCAPE.sub("", re.split(r"\r|\x1b\[[012]?K", line)[-1]).rstrip()
        for line in raw.split("\n")
    ]
    if lines and not lines[-1].strip():
        lines.pop()  # no partial last line, or a bar that was never erased
        return "".join(line + "\n" for line in lines)
    return "\n".join(lines)


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the process that started me
    dies, even by SIGKILL, so no tool outlives a killed build."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
