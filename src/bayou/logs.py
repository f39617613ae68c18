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
runs it periodically, a named executor when it starts). One worker's log is
also rotated by size: past `WORKER_LOG_MAX_BYTES` the pool renames it to
``<log>.1`` and starts a new one. `LogFollower` is ``bayou logs -f``.

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
WORKER_LOG_MAX_BYTES = 10 << 20  # a worker's log is rotated to ``<name>.1`` beyond this
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


def worker_pid(path: Path) -> int | None:
    """The worker pid in ``worker-<env>-<slot>-<pid>.log`` (or its ``.log.1``)."""
    try:
        return int(path.name.split(".", 1)[0].rsplit("-", 1)[1])
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
    dead = [p for p in worker_logs(directory) if worker_pid(p) not in live]
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


class LogFollower:
    """`tail -f` over a set of files that changes: new worker logs appear, logs rotate.

    `files()` is asked for the current set at each `poll`; a file seen for the
    first time after the start is read from its beginning, a file that got
    shorter (rotated, truncated) from its beginning again. Only whole lines
    are returned; a partial last line waits for its newline.
    """

    def __init__(self, files) -> None:
        self._files = files
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        for path in files():
            self._offsets[path] = _size(path)

    def poll(self) -> list[tuple[Path, str]]:
        out = []
        for path in self._files():
            size = _size(path)
            offset = self._offsets.get(path, 0)
            if size < offset:  # rotated or truncated: what is there now is new
                offset = 0
                self._partial.pop(path, None)
            if size == offset:
                self._offsets[path] = offset
                continue
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(size - offset)
            except OSError:
                continue
            self._offsets[path] = offset + len(data)
            data = self._partial.pop(path, b"") + data
            *lines, rest = data.split(b"\n")
            if rest:
                self._partial[path] = rest
            out += [(path, line.decode("utf-8", "replace")) for line in lines]
        return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
