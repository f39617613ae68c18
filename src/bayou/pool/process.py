"""One worker process: how it is started, signalled and described.

The supervisor starts a worker as ``<env python> [-s] -c BOOTSTRAP <runtime
dir> <socket path> <worker id> <caller pid>`` in a session (process group) of
its own, with the pool's key on stdin (never in argv or the environment) and
fd 1/2 on pipes. Killing a worker kills its group, so subprocesses of user
code go too. `WorkerProcess` is what ``ProcessPoolExecutor._processes`` shows
(pid, join, terminate): code and tests written for it keep working.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

BOOTSTRAP = (
    "import sys\n"
    "if sys.path and sys.path[0] == '': sys.path[0] = sys.argv[1]\n"
    "else: sys.path.insert(0, sys.argv[1])\n"
    "from _bayou_worker.main import main\n"
    "main()\n"
)


def command(python: str, runtime_dir: str, *, isolated: bool) -> list[str]:
    """The command line of a worker, up to its per-worker arguments."""
    flags = ["-s"] if isolated else []  # an env's own site-packages only
    return [python, *flags, "-c", BOOTSTRAP, runtime_dir]


def start(cmd: list[str], environ: dict[str, str], key: bytes) -> subprocess.Popen:
    """Start a worker; the key goes on its stdin (OSError when it cannot start)."""
    popen = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
        start_new_session=True,
        close_fds=True,
    )
    assert popen.stdin is not None  # stdin=PIPE
    try:
        popen.stdin.write(key)
        popen.stdin.close()
    except OSError:
        pass  # died at once: the exit path reports it
    return popen


def open_pidfd(pid: int) -> int | None:
    """A descriptor that turns readable when `pid` exits (Linux 5.3+), or None."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def kill_group(pid: int) -> None:
    """SIGKILL the worker's process group (its subprocesses too), else the worker."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def exit_text(rc: int) -> str:
    """How a process ended, in words: ``was killed by signal SIGKILL (9)``."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"was killed by signal {name} ({-rc})"
    return f"exited with exit code {rc}"


class WorkerProcess:
    """A worker as `ProcessPoolExecutor._processes` shows it (pid, join, terminate)."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._reaped = threading.Event()

    @property
    def exitcode(self) -> int | None:
        return self._popen.returncode if self._reaped.is_set() else None

    def is_alive(self) -> bool:
        return not self._reaped.is_set()

    def _signal(self, sig: int) -> None:
        if not self._reaped.is_set():  # only the supervisor reaps: the pid is still ours
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        self._reaped.wait(timeout)

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} alive={self.is_alive()}>"
