"""A real Dask cluster on loopback, started from the `dask` command line.

`CliCluster` runs ``dask scheduler`` and ``dask worker`` (each with its
nanny, as users run them) as separate processes, each in its own session so
that stopping one stops its nanny, its worker and everything they started.
Every process gets the same environment: a private ``BAYOU_HOME`` (one
"machine"'s store, shared by its workers), the test session's package cache
as ``BAYOU_PKGS_DIR`` and the repository on ``PYTHONPATH`` so workers can
import the task module. Logs go to files in the work directory; `logs()`
returns their tails for failure messages. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).parent / "dask"


class ClusterError(RuntimeError):
    pass


class CliCluster:
    def __init__(self, workdir: Path, environ: dict[str, str]) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.environ = dict(environ)
        self.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), environ.get("PYTHONPATH")])
        )
        self.scheduler_file = workdir / "scheduler.json"
        self.procs: dict[str, subprocess.Popen] = {}

    # -- processes -------------------------------------------------------------------

    def _spawn(
        self, name: str, args: list[str], environ: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (kept for the process)
        try:
            proc = subprocess.Popen(
                [str(DASK), *args],
                cwd=self.workdir,
                env={**self.environ, **(environ or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def start_scheduler(self, timeout: float = 60) -> str:
        self._spawn(
            "scheduler",
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(self.scheduler_file),
            ],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scheduler_file.exists():
                try:
                    return json.loads(self.scheduler_file.read_text())["address"]
                except (ValueError, KeyError):
                    pass  # being written
            if self.procs["scheduler"].poll() is not None:
                raise ClusterError(f"dask scheduler exited:\n{self.logs()}")
            time.sleep(0.1)
        raise ClusterError(f"dask scheduler did not start within {timeout} s:\n{self.logs()}")

    def start_worker(
        self, name: str, nthreads: int = 2, environ: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """One ``dask worker``; `environ` adds to (or overrides) the cluster's
        variables for it alone: another machine's store, no network."""
        return self._spawn(
            name,
            [
                "worker",
                "--scheduler-file",
                str(self.scheduler_file),
                "--host",
                "127.0.0.1",
                "--name",
                name,
                "--nworkers",
                "1",
                "--nthreads",
                str(nthreads),
                "--no-dashboard",
                "--memory-limit",
                "0",
                "--death-timeout",
                "60",
            ],
            environ,
        )

    def stop(self, name: str, grace: float = 20) -> None:
        """SIGTERM the nanny (it closes its worker: plugin teardown runs), then
        SIGKILL what is left of the session after `grace` s."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the session (a nanny's worker, stray children) goes too.
        _signal_group(proc, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for name in [n for n in self.procs if n != "scheduler"]:
            self.stop(name)
        if "scheduler" in self.procs:
            self.stop("scheduler")

    def logs(self, lines: int = 40) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def __enter__(self) -> CliCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the session we started: its id is proc.pid
    except (ProcessLookupError, PermissionError):
        pass
