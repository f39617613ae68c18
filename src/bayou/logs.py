"""Log files under the store: a manager log and one log per worker, per named pool.

Layout::

    <store>/logs/pools/<name>/
        manager.log, manager.log.1 ...   the pool's manager (a persistent pool's host):
                                         every ``bayou.*`` record but worker output,
                                         rotated at `MANAGER_MAX_BYTES`, `MANAGER_BACKUPS` kept
        host.out                         the host's raw stdout/stderr (crash tracebacks)
        workers/worker-<env>-<slot>-<pid>.log
                                         what one worker process wrote to fd 1 and 2
                                         (written by pool.py), one file per process

Worker logs are rotated by count: `prune_worker_logs` keeps the newest
`WORKER_LOGS_KEPT` files besides those of live workers (a persistent pool
runs it periodically, a named executor when it starts).

Where the records come from: bayou logs through the standard `logging`
module (``bayou.executor``, ``bayou.provision``, ``bayou.persistent``,
``bayou.debug``; worker output with ``output="logging"`` under
``bayou.worker.<env hash>.<slot>``), so an application adds its own handlers
as usual; `manager_handler` is only the file handler a persistent host uses.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from collections.abc import Iterable
from pathlib import Path

from .store import Store

MANAGER_LOG = "manager.log"
HOST_OUT = "host.out"
WORKERS = "workers"
MANAGER_MAX_BYTES = 1 << 20
MANAGER_BACKUPS = 3
WORKER_LOGS_KEPT = 20
FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s"


def pools_log_dir(store: Store | None = None) -> Path:
    return (store or Store()).logs_dir / "pools"


def pool_log_dir(name: str, store: Store | None = None) -> Path:
    """The log directory of the pool called `name` (created)."""
    from .persistent.registry import check_name

    path = pools_log_dir(store) / check_name(name)
    (path / WORKERS).mkdir(parents=True, exist_ok=True)
    return path


class _NotWorkerOutput(logging.Filter):
    """Worker output already has its own files; keep it out of the manager log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("bayou.worker.")


def manager_handler(directory: Path, level: int = logging.INFO) -> logging.Handler:
    """A rotating file handler for ``<directory>/manager.log``."""
    handler = logging.handlers.RotatingFileHandler(
        directory / MANAGER_LOG,
        maxBytes=MANAGER_MAX_BYTES,
        backupCount=MANAGER_BACKUPS,
        encoding="utf-8",
    )
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_NotWorkerOutput())
    return handler


def _pid_of(path: Path) -> int | None:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def worker_logs(directory: Path) -> list[Path]:
    """Worker log files of a pool log directory, oldest first."""
    folder = directory / WORKERS
    try:
        files = [p for p in folder.iterdir() if p.name.startswith("worker-") and p.is_file()]
    except OSError:
        return []
    return sorted(files, key=_mtime)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def prune_worker_logs(
    directory: Path, live_pids: Iterable[int] = (), keep: int = WORKER_LOGS_KEPT
) -> list[Path]:
    """Delete all but the newest `keep` worker logs of dead workers; return what went."""
    live = set(live_pids)
    dead = [p for p in worker_logs(directory) if _pid_of(p) not in live]
    removed = dead[: max(0, len(dead) - keep)]
    for path in removed:
        try:
            os.unlink(path)
        except OSError:
            pass
    return removed


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file (read from the end, not the whole file)."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def named_pools(store: Store | None = None) -> list[str]:
    """Names that have a log directory."""
    base = pools_log_dir(store)
    try:
        return sorted(p.name for p in base.iterdir() if p.is_dir())
    except OSError:
        return []
