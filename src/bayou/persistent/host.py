"""The pool host: a detached process that owns a persistent pool's workers.

Started by `bayou.persistent.client.start` as ``python -m bayou.persistent.host``
with the caller's interpreter, its configuration (a pickle: name, store,
the provisioned Environment, the Pool's options, the caller's sys.path) on
stdin and a pipe on stdout on which it answers ``ready <json>`` or
``error <text>`` once. It forks once more (so it is nobody's child and
outlives its starter), logs to ``<store>/logs/pools/<name>/manager.log``
(rotated; raw stdio to ``host.out``) and then:

    Listener (AF_UNIX, <state>/pools/<name>/sock, authkey from the 0600 key file)
      └─ one Session per client connection (`session`: its thread, and an
         `outbox` writer for what other threads send it)
           hello ─▶ version check ─▶ welcome(environment, options)
           submit(task id, call kind, fn record, args blob, roots, label)
               ─▶ WorkItem ─▶ Pool (settle=relay_settle) ─▶ workers of the env
               the session thread follows the worker and answers from there
           ◀─ running / progress / result(status, raw data) / exception / cancelled
           cancel, info, detach

The host never imports the caller's modules and never unpickles user
objects (`relay.relay_settle`). A client that vanishes without detaching
has its outstanding tasks cancelled. SIGTERM (`bayou workers stop`) removes
the entry first (no new attach), cancels queued work, stops the workers,
tells the clients, and deletes the pool's directory.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing import connection
from pathlib import Path
from typing import Any

from .. import logs
from ..futures import BayouFuture
from ..pool import Pool, WorkItem
from ..store import Store
from ..worker import wire
from . import registry
from .actors import HostActors
from .registry import versions
from .relay import relay_settle
from .session import Session

logger = logging.getLogger("bayou.persistent")

ENTRY_INTERVAL = 1.0  # s between entry.json refreshes (only rewritten on change)
PRUNE_INTERVAL = 60.0  # s between worker-log rotations
WARMUP_TIMEOUT = 300.0


class Host:
    """The pool host's state; lives in the detached process."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.name: str = config["name"]
        self.store = Store(config["store_root"])
        self.pid = os.getpid()
        self.environment = config["environment"]
        self.directory = registry.pool_dir(self.store, self.name)
        self.log_dir = logs.pool_log_dir(self.name, self.store)
        self.key = b""
        self.socket = ""
        self.listener: connection.Listener | None = None
        self.pool: Pool | None = None
        self.actors = HostActors(self.environment, {}, relay_settle)  # options: at start
        self.sessions: set[Session] = set()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.stop_reason = "stopped"
        self.served = 0
        self.lanes = 0  # workers lent to clients so far (`lanes`)
        self.started = time.time()
        self._numbers = itertools.count(1)
        self._last_entry: dict | None = None

    # -- setup ---------------------------------------------------------------------

    def start(self) -> None:
        registry.remove_pool_dir(self.directory)  # a dead predecessor's leftovers
        self.directory.mkdir(mode=0o700)
        os.chmod(self.directory, 0o700)
        self.key = registry.new_key(self.directory)
        self.socket = registry.socket_path(self.directory)
        self.listener = connection.Listener(self.socket, family="AF_UNIX", backlog=64)
        os.chmod(self.socket, 0o600)
        options = dict(self.config["options"])
        options["output"] = "logging"  # nobody's terminal to echo to: the logs have it
        if options.get("log_dir") is None:
            options["log_dir"] = self.log_dir / logs.WORKERS
        self.actors.options = dict(options)  # an actor's process: same logs, timeouts
        options["settle"] = relay_settle
        if self.config.get("debug"):
            from ..debugging import DebugPool

            self.pool = DebugPool(
                self.environment, debug_id=self.name, store=self.store, **options
            )
        else:
            self.pool = Pool(self.environment, **options)
        self._warm_up()
        if self.pool.broken:
            raise RuntimeError(self.pool.broken)
        self.write_entry()
        logger.info(
            "persistent pool %r ready: env %s (%s), %d worker(s), socket %s",
            self.name,
            self.environment.hash,
            self.environment.python,
            self.pool.max_workers,
            self.socket,
        )

    def _warm_up(self) -> None:
        """Start every worker now (and fail here, not in a client, if they cannot start)."""
        assert self.pool is not None  # `start` made it
        futures = []
        for _ in range(self.pool.max_workers):
            fut: BayouFuture[Any] = BayouFuture()
            item = WorkItem(
                future=fut,
                call_kind=wire.CALL,
                fn_record=(wire.FN_REF, "os", "getpid", None),
                args_blob=pickle.dumps(((), {}), 4),
                roots=frozenset(),
                label="os.getpid (warm-up)",
            )
            self.pool.submit(item)
            futures.append(fut)
        for fut in futures:
            fut.result(timeout=WARMUP_TIMEOUT)

    # -- state shown to clients and in the registry ------------------------------------

    def welcome(self) -> dict:
        assert self.pool is not None  # clients attach once the pool started
        return {
            "name": self.name,
            "environment": self.environment,
            "max_workers": self.pool.max_workers,
            "host_pid": self.pid,
            "debug": bool(self.config.get("debug")),
            **versions(),
        }

    def info(self) -> dict:
        data = dict(self._entry_data())
        data["clients"] = len(self.sessions)
        data["lanes"] = self.lanes
        return data

    def _entry_data(self) -> dict:
        env = self.environment
        assert self.pool is not None  # the entry is written once the pool started
        try:
            pids = sorted(self.pool.processes)
        except RuntimeError:  # changed while we looked: next time
            pids = list(self._last_entry["worker_pids"]) if self._last_entry else []
        return {
            "name": self.name,
            "env_hash": env.hash,
            "env_name": (env.record or {}).get("name")
            or (env.record or {}).get("spec", {}).get("name"),
            "python": str(env.python),
            "python_version": env.python_version,
            "prefix": str(env.prefix),
            "max_workers": self.pool.max_workers,
            "host_pid": self.pid,
            "host_create_time": _create_time(),
            "started": self.started,
            "tasks_served": self.served,
            "worker_pids": pids,
            "actors": self.actors.entries(),
            "socket": self.socket,
            "log_dir": str(self.log_dir),
            "debug": bool(self.config.get("debug")),
            **{f"{k}_version": v for k, v in versions().items()},
        }

    def write_entry(self) -> None:
        data = self._entry_data()
        if data != self._last_entry and not self.stop_event.is_set():
            registry.write_entry(self.directory, data)
            self._last_entry = data

    def count_served(self, calls: int = 1) -> None:
        with self.lock:
            self.served += calls

    def count_lane(self) -> None:
        with self.lock:
            self.lanes += 1

    # -- serving ---------------------------------------------------------------------------

    def serve(self) -> None:
        threading.Thread(target=self._accept_loop, name="bayou-host-accept", daemon=True).start()
        next_prune = 0.0
        assert self.pool is not None  # `start` made it
        while not self.stop_event.wait(ENTRY_INTERVAL):
            if self.pool.broken:
                self.request_stop(f"the pool broke: {self.pool.broken}")
                break
            if not (self.directory / registry.KEY).exists():
                # the store was deleted (or the entry removed by hand): nobody can
                # attach any more, so don't linger
                self.request_stop("its registry directory was removed")
                break
            self.write_entry()
            if time.monotonic() >= next_prune:
                logs.prune_worker_logs(self.log_dir, self.pool.processes)
                next_prune = time.monotonic() + PRUNE_INTERVAL

    def _accept_loop(self) -> None:
        assert self.listener is not None  # `start` made it
        while not self.stop_event.is_set():
            try:
                conn = self.listener.accept()
            except OSError:
                if self.stop_event.is_set():
                    return
                continue
            session = Session(self, conn, next(self._numbers))
            with self.lock:
                self.sessions.add(session)
            threading.Thread(target=session.run, name="bayou-host-session", daemon=True).start()

    def forget(self, session: Session) -> None:
        with self.lock:
            self.sessions.discard(session)

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            with contextlib.suppress(OSError):
                os.unlink(self.directory / registry.ENTRY)  # no new attach from now on
            self.stop_event.set()

    def stop(self) -> None:
        logger.info("stopping persistent pool %r: %s", self.name, self.stop_reason)
        with contextlib.suppress(OSError):
            os.unlink(self.directory / registry.ENTRY)
        self.actors.stop_all()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.close(self.stop_reason)
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
        leftover = registry.PoolEntry(self.name, self.directory, {"socket": self.socket})
        registry.remove_pool_dir(self.directory, leftover)
        logger.info("persistent pool %r stopped after %d task(s)", self.name, self.served)


def _create_time() -> float:
    import psutil

    return psutil.Process().create_time()


def _setup_logging(log_dir: Path) -> None:
    root = logging.getLogger("bayou")
    root.setLevel(logging.INFO)
    root.addHandler(logs.manager_handler(log_dir))
    root.propagate = False


def _daemonize() -> None:
    """Fork once more: the starter reaps our parent at once, we are nobody's child."""
    if os.fork() > 0:
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def main() -> None:
    config = pickle.load(sys.stdin.buffer)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    ready = os.dup(1)  # the starter reads one line from here
    os.dup2(2, 1)  # print() and faulthandler go to host.out with stderr
    sys.path[:] = config["sys_path"]
    _daemonize()
    os.write(ready, b"pid %d\n" % os.getpid())  # so a starter that gives up can kill us
    host = None
    try:
        import faulthandler

        faulthandler.enable()
        host = Host(config)
        _setup_logging(host.log_dir)
        signal.signal(signal.SIGTERM, lambda *_: host.request_stop("SIGTERM"))
        host.start()
    except BaseException as exc:
        logger.exception("persistent pool %r failed to start", config.get("name"))
        message = f"error {type(exc).__name__}: {exc}".replace("\n", "\n  ")
        with contextlib.suppress(OSError):
            os.write(ready, message.encode() + b"\n")
        if host is not None:
            with contextlib.suppress(BaseException):
                if host.pool is not None:
                    host.pool.shutdown(wait=True, cancel_futures=True)
            registry.remove_pool_dir(host.directory)
        os._exit(1)
    os.write(ready, b"ready\n")
    os.close(ready)
    try:
        host.serve()
    finally:
        host.stop()
        logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
