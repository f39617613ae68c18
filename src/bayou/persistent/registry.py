"""Where persistent pools are recorded, and how a dead one is told from a live one.

One directory per pool name under the store's private state directory::

    <store>/state/                   0700 (Store.state_dir)
        pools/                       0700
            .locks/<name>.lock       held while a pool of that name starts or is pruned
            <name>/                  0700, created by the pool host
                key                  0600: the random authkey (never in argv or logs)
                sock                 the host's Unix socket (multiprocessing.connection)
                entry.json           0600: what `bayou workers list` shows, written last

The host writes ``entry.json`` by atomic rename once it is ready, and again
whenever its worker pids or task count change. A reader decides liveness
from the entry alone: the host pid must exist, not be a zombie and have the
creation time the host recorded (so a recycled pid is not mistaken for it).
Entries failing that test are pruned (their directory removed) and never
attached to. A socket path that would not fit a ``sockaddr_un`` goes into a
private 0700 directory under /tmp instead, recorded in the entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..errors import BayouError
from ..store import Store

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENTRY, KEY, SOCK = "entry.json", "key", "sock"
_MAX_SOCKET_PATH = 100  # sockaddr_un.sun_path is 108 bytes on Linux, 104 on macOS
_ORPHAN_AGE = 120.0  # s before a directory without entry.json counts as a failed start


class PoolNotFoundError(BayouError, LookupError):
    """No live persistent pool has that name (dead ones are pruned, never attached)."""


class PoolVersionError(BayouError):
    """The caller's bayou (or cloudpickle) differs from the one the pool host runs."""


def versions() -> dict[str, str]:
    """What must match between a pool host and a client: bayou's and cloudpickle's versions."""
    import cloudpickle

    from .._version import __version__

    return {"bayou": __version__, "cloudpickle": cloudpickle.__version__}


def version_mismatch(name: str, host: dict, caller: dict, host_pid: int | None = None) -> str:
    """The message for a caller whose bayou/cloudpickle differ from the pool host's."""

    def show(v: dict) -> str:
        return f"bayou {v.get('bayou')} (cloudpickle {v.get('cloudpickle')})"

    pid = f", host pid {host_pid}" if host_pid else ""
    return (
        f"the persistent pool {name!r} runs {show(host)}{pid}, but this process has "
        f"{show(caller)}. Stop the pool with `bayou workers stop {name}` and start it again "
        f"from this installation (EnvExecutor(..., persistent=True, name={name!r})), or "
        f"attach from an installation with {show(host)}."
    )


def check_name(name: Any) -> str:
    """A pool name is a file name: letters, digits, ``_ . -``, at most 64, no leading dot."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid persistent pool name {name!r}: use 1-64 letters, digits, '_', '.' "
            f"or '-', starting with a letter or digit"
        )
    return name


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def pools_dir(store: Store) -> Path:
    return _private_dir(store.state_dir / "pools")


def pool_dir(store: Store, name: str) -> Path:
    return pools_dir(store) / check_name(name)


@contextlib.contextmanager
def name_lock(store: Store, name: str, *, blocking: bool = True) -> Iterator[bool]:
    """Hold the per-name lock (released by the kernel even on SIGKILL); yields False if busy."""
    path = _private_dir(pools_dir(store) / ".locks") / f"{check_name(name)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, mode 0600 from the first byte on."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def new_key(directory: Path) -> bytes:
    key = os.urandom(32)
    write_private(directory / KEY, key)
    return key


def read_key(directory: Path) -> bytes:
    return (directory / KEY).read_bytes()


def socket_path(directory: Path) -> str:
    """The host's socket: in its pool directory, or a private /tmp dir if that path is too long."""
    path = str(directory / SOCK)
    if len(path.encode()) <= _MAX_SOCKET_PATH:
        return path
    short = tempfile.mkdtemp(prefix="bayou-pool-", dir="/tmp")
    os.chmod(short, 0o700)
    return os.path.join(short, SOCK)


@dataclass
class PoolEntry:
    """A persistent pool as its host last described it."""

    name: str
    directory: Path
    data: dict[str, Any] = field(repr=False)

    @property
    def host_pid(self) -> int:
        return int(self.data["host_pid"])

    @property
    def worker_pids(self) -> list[int]:
        return [int(p) for p in self.data.get("worker_pids", ())]

    @property
    def socket(self) -> str:
        return self.data["socket"]

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - float(self.data.get("started", time.time())))

    def is_alive(self) -> bool:
        return process_matches(self.host_pid, self.data.get("host_create_time"))


def process_matches(pid: int, create_time: float | None) -> bool:
    """True when `pid` runs, is not a zombie, and (if given) was created at `create_time`."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - float(create_time)) < 1.0
    except (psutil.Error, ValueError):
        return False


def write_entry(directory: Path, data: dict[str, Any]) -> None:
    write_private(directory / ENTRY, json.dumps(data, indent=1, sort_keys=True).encode())


def read_entry(directory: Path) -> PoolEntry | None:
    try:
        data = json.loads((directory / ENTRY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "host_pid" not in data:
        return None
    return PoolEntry(directory.name, directory, data)


def remove_pool_dir(directory: Path, entry: PoolEntry | None = None) -> None:
    """Delete a pool's directory (and its /tmp socket dir, if it had one)."""
    if entry is not None:
        sock_dir = os.path.dirname(entry.data.get("socket", ""))
        if (
            sock_dir
            and Path(sock_dir) != directory
            and os.path.basename(sock_dir).startswith("bayou-pool-")
        ):
            shutil.rmtree(sock_dir, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)


def prune(store: Store, name: str) -> bool:
    """Remove the entry of `name` if its host is dead; True if something was removed."""
    directory = pool_dir(store, name)
    if not directory.exists():
        return False
    with name_lock(store, name, blocking=False) as held:
        if not held:
            return False  # a pool of that name is starting right now
        entry = read_entry(directory)
        if entry is None:
            try:
                age = time.time() - directory.stat().st_mtime
            except OSError:
                return False
            if age < _ORPHAN_AGE:
                return False
        elif entry.is_alive():
            return False
        remove_pool_dir(directory, entry)
        return True


def entries(store: Store) -> list[PoolEntry]:
    """Every live pool, sorted by name; dead ones are pruned on the way."""
    base = pools_dir(store)
    found = []
    for directory in sorted(base.iterdir()):
        if directory.name.startswith(".") or not directory.is_dir():
            continue
        entry = read_entry(directory)
        if entry is not None and entry.is_alive():
            found.append(entry)
        else:
            prune(store, directory.name)
    return found


def find(store: Store, name: str) -> PoolEntry:
    """The live pool called `name`, or `PoolNotFoundError` (pruning a dead entry)."""
    directory = pool_dir(store, name)
    entry = read_entry(directory)
    if entry is not None and entry.is_alive():
        return entry
    pruned = prune(store, name)
    others = [e.name for e in entries(store)]
    why = " (its host had died; the entry was pruned)" if pruned and entry is not None else ""
    known = f"; running: {', '.join(others)}" if others else "; none is running"
    raise PoolNotFoundError(
        f"no persistent pool named {name!r} in the store {store.root}{why}{known}. "
        f"Start one with EnvExecutor(..., persistent=True, name={name!r})."
    )


def kill_host(entry: PoolEntry, timeout: float = 5.0) -> None:
    """SIGTERM the host (then SIGKILL) and SIGKILL its workers' process groups."""
    if entry.is_alive():
        with contextlib.suppress(OSError):
            os.kill(entry.host_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while entry.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if entry.is_alive():
            with contextlib.suppress(OSError):
                os.kill(entry.host_pid, signal.SIGKILL)
    for pid in entry.worker_pids:
        try:
            proc = psutil.Process(pid)
            if proc.ppid() not in (entry.host_pid, 1) and proc.ppid() != 0:
                continue  # recycled pid, not one of ours
        except psutil.Error:
            continue
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
                break
            except OSError:
                continue
