"""The caller's side of a persistent pool: start or find the host, connect, relay tasks.

Data flow::

    EnvExecutor(..., persistent=True, name=N)   (a PersistentExecutor)
      ├─ EnvExecutor.__init__: validate, provision the env here, encode the initializer
      └─ _make_pool ─▶ start(N): under the name lock, reuse a live host of the same
         env or spawn one (host.py), wait for its "ready" line ─▶ connect(N)
    bayou.attach(N) ─▶ connect(N) ─▶ PersistentExecutor around that RemotePool

    submit ─▶ EnvExecutor encodes (fn, args) here ─▶ RemotePool.submit
           ─▶ ("submit", id, ...) over the authenticated socket ─▶ host
    reader thread ◀─ running / progress / result / exception / cancelled / stopped
           ─▶ the local BayouFuture (results are unpickled here, as with a local pool)

`shutdown()` detaches (after the submitted tasks finish, with ``wait=True``);
the pool keeps running until `stop(N)` (``bayou workers stop N``), which
sends the host SIGTERM: that works whatever bayou version the host runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import itertools
import logging
import os
import pickle
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection
from pathlib import Path
from typing import Any

from .. import logs
from ..environment import Environment
from ..futures import end_cancelled, fail
from ..pool import SHUTDOWN_GRACE, WorkItem, lifetime, outcome
from ..store import Store
from ..worker import wire
from . import registry
from .registry import PoolNotFoundError, PoolVersionError

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
    return RemotePool(name, store, conn, payload)


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


def _spawn_host(
    name: str, environment: Environment, options: dict, debug: bool, store: Store
) -> None:
    log_dir = logs.pool_log_dir(name, store)
    cwd = os.getcwd()
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


# -- the client's pool ------------------------------------------------------------------


class RemotePool:
    """Stands in for `Pool` inside an executor: relays work items to a pool host."""

    def __init__(self, name: str, store: Store, conn: connection.Connection, welcome: dict):
        self.name = name
        self.store = store
        self.environment: Environment = welcome["environment"]
        self.max_workers: int = welcome["max_workers"]
        self.host_pid: int = welcome["host_pid"]
        self.broken: str | None = None
        self._shutdown = False
        self.processes: dict = {}  # the workers are the host's children, not ours
        self.segments = None  # no shared memory with the host: buffers travel inline
        self.retries = 0  # retrying is the host pool's business
        self._conn = conn
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._items: dict[int, WorkItem] = {}
        self._ids = itertools.count(1)
        self._detached = False
        self._detach_when_idle = False
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self._read_loop, name=f"bayou-persistent-{name}", daemon=True
        )
        self.thread.start()
        lifetime.register(self)

    # -- called from user threads -------------------------------------------------------

    def submit(self, item: WorkItem) -> None:
        with self._lock:
            lifetime.check_accepting(self.broken, self._shutdown)
            task_id = item.task_id = next(self._ids)
            self._items[task_id] = item
        fut = item.future
        fut.bind(cancel=functools.partial(_cancel_by_ref, weakref.ref(self), task_id))
        fut.add_done_callback(functools.partial(_local_done, weakref.ref(self), task_id))
        oob = getattr(item, "oob", None)  # big argument buffers, inline (segments is None)
        message = (
            "submit",
            task_id,
            item.call_kind,
            item.fn_record,
            item.args_blob,
            tuple(sorted(item.roots)),
            item.label,
            None if oob is None else list(oob.inline),
        )
        item.release()
        if not self._send(message):
            self._break(f"lost the connection to the persistent pool {self.name!r}")

    def cancel(self, task_id: int, grace: float) -> bool:
        """`bayou.cancel` on one of our futures."""
        with self._lock:
            item = self._items.get(task_id)
        if item is None or item.future.done():
            return False
        if item.future.cancel():
            return True  # still queued here or at the host: _local_done tells the host
        self._send(("cancel", task_id, grace))
        return True

    def info(self, timeout: float = 10.0) -> dict:
        """The host's current entry (worker pids, tasks served, clients...)."""
        self._send(("info",))
        return self._replies.get(timeout=timeout)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Detach from the host; the pool and its workers keep running."""
        with self._lock:
            self._shutdown = True
            items = list(self._items.items())
        if cancel_futures:
            for task_id, item in items:
                if not item.future.cancel():
                    self._send(("cancel", task_id, SHUTDOWN_GRACE))
        if not wait:
            with self._lock:
                if self._items:
                    self._detach_when_idle = True
                    return
            self._detach()
            return
        futures = [item.future for _, item in items]
        while futures:
            _, pending = concurrent.futures.wait(futures, timeout=1.0)
            futures = list(pending)
            if self.broken is not None:
                break
        self._detach()

    @property
    def debug_ports(self) -> dict[int, int]:
        from ..debugging import debug_root, listening

        return {w["pid"]: w["port"] for w in listening(debug_root(self.store) / self.name)}

    # -- internals --------------------------------------------------------------------

    def _send(self, message: tuple) -> bool:
        with self._send_lock:
            if self._detached:
                return False
            try:
                self._conn.send(message)
                return True
            except (OSError, ValueError):
                return False

    def _detach(self) -> None:
        with self._send_lock:
            if self._detached:
                return
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("detach",))
            self._detached = True
        lifetime.unregister(self)
        if threading.current_thread() is not self.thread:
            self.thread.join(5.0)
        with contextlib.suppress(OSError):
            self._conn.close()

    def _pop(self, task_id: int) -> WorkItem | None:
        with self._lock:
            item = self._items.pop(task_id, None)
            idle = self._detach_when_idle and not self._items
        if idle:
            threading.Thread(target=self._detach, daemon=True).start()
        return item

    def _read_loop(self) -> None:
        reason = (
            f"lost the connection to the persistent pool {self.name!r} (host pid {self.host_pid})"
        )
        try:
            while True:
                message = self._conn.recv()
                kind = message[0]
                if kind == "stopped":
                    reason = f"the persistent pool {self.name!r} was stopped ({message[1]})"
                    break
                if kind == "info":
                    self._replies.put(message[1])
                    continue
                task_id = message[1]
                if kind == "running":
                    with self._lock:
                        item = self._items.get(task_id)
                    if item is not None:
                        item.future.set_running_or_notify_cancel()
                elif kind == "progress":
                    with self._lock:
                        item = self._items.get(task_id)
                    if item is not None:
                        item.future._set_progress(*message[2:])
                elif kind == "result":
                    item = self._pop(task_id)
                    if item is not None and _started(item.future):
                        status, data = message[2], local_result(message[2], message[3])
                        outcome.settle(item, status, data, self.environment)
                elif kind == "exception":
                    item = self._pop(task_id)
                    if item is not None:
                        fail(item.future, pickle.loads(message[2]))
                elif kind == "cancelled":
                    item = self._pop(task_id)
                    if item is not None:
                        end_cancelled(item.future)
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        if not self._detached:
            self._break(reason)

    def _break(self, message: str) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = message
            items = list(self._items.values())
            self._items.clear()
        for item in items:
            fail(item.future, BrokenProcessPool(message))
        lifetime.unregister(self)


def _cancel_by_ref(pool_ref, task_id: int, grace: float = 5.0) -> bool:
    pool = pool_ref()
    return pool.cancel(task_id, grace) if pool is not None else False


def _local_done(pool_ref, task_id: int, fut) -> None:
    """A future cancelled here before the host settled it: tell the host to drop the task."""
    pool = pool_ref()
    if pool is None or not fut.cancelled():
        return
    if pool._pop(task_id) is not None:
        pool._send(("cancel", task_id, 0.0))


def _started(fut) -> bool:
    return fut.running() or fut.set_running_or_notify_cancel()


def local_result(status: int, data: Any) -> Any:
    """Undo `host.portable_result`: the ``data`` that `Pool._complete` expects."""
    if status == wire.OK:
        blob, buffers = data
        return blob, 0, len(blob), buffers
    if isinstance(data, bytes):
        return pickle.loads(data)  # an exception the host met decoding the result
    return data
