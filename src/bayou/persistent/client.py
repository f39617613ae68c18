"""The caller's side of a persistent pool: start or find the host, connect, relay tasks.

Data flow::

    EnvExecutor(..., persistent=True, name=N)   (a PersistentExecutor)
      ├─ EnvExecutor.__init__: validate, provision the env here, encode the initializer
      └─ _make_pool ─▶ start(N): under the name lock, reuse a live host of the same
         env or spawn one (host.py), wait for its "ready" line ─▶ connect(N)
    bayou.attach(N) ─▶ connect(N) ─▶ PersistentExecutor around that RemotePool

    submit ─▶ EnvExecutor encodes (fn, args) here ─▶ RemotePool.submit (`remote`)
           ─▶ ("submit", id, ...) over the authenticated socket ─▶ host
    result() reads the answer itself (a follower), or the reader thread does
           ◀─ running / progress / result / exception / cancelled / stopped
           ─▶ the local BayouFuture (results are unpickled here, as with a local pool)

`shutdown()` detaches (after the submitted tasks finish, with ``wait=True``);
the pool keeps running until `stop(N)` (``bayou workers stop N``), which
sends the host SIGTERM: that works whatever bayou version the host runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import pickle
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection
from pathlib import Path
from typing import Any

from .. import logs
from ..environment import Environment
from ..store import Store
from . import registry
from .link import Link
from .registry import PoolNotFoundError, PoolVersionError
from .remote import RemotePool

logger = logging.getLogger("bayou.persistent")

START_TIMEOUT = 600.0  # s for a host to start its workers and answer "ready"

_BOOTSTRAP = (
    "import sys\nsys.path.insert(0, sys.argv[1])\nfrom bayou.persistent.host import main\nmain()\n"
)

# set by `attach` around the executor's constructor: the connection to use
_PREPARED: contextvars.ContextVar[RemotePool | None] = contextvars.ContextVar(
    "bayou_persistent_prepared", default=None
)


def _store(store: Store | str | os.PathLike | None) -> Store:
    if store is None:
        return Store()
    return store if isinstance(store, Store) else Store(store)


# -- finding, starting, stopping -----------------------------------------------------


def connect(name: str, store: Store | str | os.PathLike | None = None) -> RemotePool:
    """Connect to the live pool `name`: authenticate, compare versions, get its env."""
    store = _store(store)
    entry = registry.find(store, name)
    mine = registry.versions()
    theirs = {k: entry.data.get(f"{k}_version") for k in mine}
    if theirs != mine:
        raise PoolVersionError(registry.version_mismatch(name, theirs, mine, entry.host_pid))
    try:
        key = registry.read_key(entry.directory)
        conn = connection.Client(entry.socket, family="AF_UNIX", authkey=key)
    except (OSError, EOFError) as exc:
        if not entry.is_alive():
            registry.prune(store, name)
            raise PoolNotFoundError(
                f"the persistent pool {name!r} died (host pid {entry.host_pid}); its entry "
                f"was pruned"
            ) from None
        raise PoolNotFoundError(
            f"the persistent pool {name!r} (host pid {entry.host_pid}) does not accept "
            f"connections ({type(exc).__name__}: {exc}); see `bayou logs {name}`, and stop "
            f"it with `bayou workers stop {name}`"
        ) from exc
    conn.send(("hello", {**mine, "pid": os.getpid()}))
    kind, payload = conn.recv()
    if kind == "refused":
        conn.close()
        raise PoolVersionError(payload)
    return RemotePool(name, store, Link(conn), payload)


def start(
    name: str,
    environment: Environment,
    options: dict[str, Any],
    *,
    debug: bool = False,
    store: Store | str | os.PathLike | None = None,
) -> RemotePool:
    """Connect to the pool `name`, starting its host first if none is running."""
    store = _store(store)
    registry.check_name(name)
    with registry.name_lock(store, name):
        try:
            entry = registry.find(store, name)
        except PoolNotFoundError:
            entry = None
        if entry is not None:
            theirs = (entry.data.get("env_hash"), entry.data.get("python"))
            if theirs != (environment.hash, str(environment.python)):
                raise ValueError(
                    f"a persistent pool named {name!r} is already running another "
                    f"environment ({theirs[0]}, {theirs[1]}; this asks for "
                    f"{environment.hash}, {environment.python}): stop it with "
                    f"`bayou workers stop {name}` or choose another name"
                )
            logger.info("reusing the running persistent pool %r", name)
            return connect(name, store)
        _spawn_host(name, environment, options, debug, store)
        return connect(name, store)


class SlotTable:
    """A persistent pool's `worker_env`: what the caller's `worker_env(slot)` gave for
    each slot, called in the caller when the host starts. So a lambda or a closure
    works, and the host runs no user code. A slot whose call failed raises that
    error in the host, which breaks the pool naming the slot, as a local pool does."""

    def __init__(self, worker_env: Callable[[int], dict[str, str]], slots: int) -> None:
        self.table: dict[int, Any] = {}
        for slot in range(slots):
            try:
                self.table[slot] = worker_env(slot)
                pickle.dumps(self.table[slot], 5)
            except Exception as exc:
                self.table[slot] = _portable_error(exc)

    def __call__(self, slot: int) -> Any:
        env = self.table[slot]
        if isinstance(env, BaseException):
            raise env
        return env


def _portable_error(exc: Exception) -> Exception:
    try:
        return pickle.loads(pickle.dumps(exc, 5))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _spawn_host(
    name: str, environment: Environment, options: dict, debug: bool, store: Store
) -> None:
    log_dir = logs.pool_log_dir(name, store)
    cwd = os.getcwd()
    if options.get("worker_env") is not None:
        options = {
            **options,
            "worker_env": SlotTable(options["worker_env"], options["max_workers"]),
        }
    config = {
        "name": name,
        "store_root": str(store.root),
        "environment": environment,
        "options": options,
        "debug": debug,
        "sys_path": [os.path.join(cwd, p) if p else cwd for p in sys.path],
    }
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    environ = dict(os.environ, BAYOU_HOME=str(store.root))
    with open(log_dir / logs.HOST_OUT, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, package_parent],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            env=environ,
        )
    assert proc.stdin is not None and proc.stdout is not None  # both PIPEs
    try:
        proc.stdin.write(pickle.dumps(config, 5))
        proc.stdin.close()
        reply = _read_reply(proc.stdout, START_TIMEOUT)
    finally:
        proc.stdout.close()
        proc.wait()
    first, _, reply = reply.partition("\n")
    if first.startswith("pid ") and not reply.startswith(("ready", "error")):
        with contextlib.suppress(OSError, ValueError):  # it hangs: don't leave it behind
            os.kill(int(first[4:]), signal.SIGKILL)
        registry.remove_pool_dir(registry.pool_dir(store, name))
    if not reply.startswith("ready"):
        detail = reply[len("error ") :] if reply.startswith("error ") else reply
        tail = "\n  ".join(logs.tail(log_dir / logs.HOST_OUT, 10))
        raise BrokenProcessPool(
            f"the persistent pool {name!r} did not start: {detail or 'no answer'}"
            + (f"\nLast lines of {log_dir / logs.HOST_OUT}:\n  {tail}" if tail else "")
            + f"\n(see `bayou logs {name}`)"
        )


def _read_reply(stream, timeout: float) -> str:
    """Everything the host writes on its ready pipe (it closes it after one line)."""
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return data.decode(errors="replace") or "timed out"
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return data.decode(errors="replace").strip()
            data += chunk


def stop(
    name: str, *, store: Store | str | os.PathLike | None = None, timeout: float = 30.0
) -> registry.PoolEntry:
    """Stop the pool `name`: SIGTERM to its host (a graceful stop), SIGKILL after `timeout`.

    Queued tasks are cancelled and attached clients see their outstanding
    futures fail with `BrokenProcessPool`. Works whatever bayou version the
    host runs. Returns the entry of the pool that was stopped.
    """
    store = _store(store)
    entry = registry.find(store, name)
    registry.kill_host(entry, timeout)
    if entry.directory.exists():
        registry.prune(store, name)
    return entry


def list_pools(store: Store | str | os.PathLike | None = None) -> list[registry.PoolEntry]:
    """The live persistent pools of a store (dead entries are pruned on the way)."""
    return registry.entries(_store(store))
