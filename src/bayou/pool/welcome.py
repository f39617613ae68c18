"""A verified connection becomes a worker's socket (after `connection.Handshakes`).

    Verified(conn, nonce, worker id, info) ─▶ the process we started with that id,
        still waiting for its socket? (else the connection is dropped)
    ─▶ its Python is the env's X.Y? (else the env is misdeclared: the pool breaks)
    ─▶ socket registered in the selector ─▶ WELCOME(config): sys.path, heartbeat
       interval, initializer, an actor's class and arguments, the authkey, spin

Runs on the supervisor thread.
"""

from __future__ import annotations

import multiprocessing
import os
import selectors
import sys
import time
from typing import TYPE_CHECKING

from .. import protocol
from ..worker import deploy, wire
from .records import heartbeat_interval

if TYPE_CHECKING:
    from .supervisor import Pool


def on_handshake(pool: Pool, conn) -> None:
    """A connection not yet authenticated sent something (`connection.Handshakes`)."""
    verified = pool.handshakes.on_data(conn)
    if verified is None:
        return
    conn, worker_nonce, worker_id, info = verified
    worker = None
    for w in pool._workers:
        if w.worker_id == worker_id and w.sock is None and not w.dead:
            worker = w
    if worker is None:
        conn.close()
        return
    actual = tuple(info.get("version", (0, 0)))[:2]
    if actual != pool.environment.python_xy:
        conn.close()
        pool._break(
            f"environment {pool.environment.hash} declares Python "
            f"{pool.environment.python_version} but {pool.environment.python} is "
            f"Python {'.'.join(map(str, info.get('version', ())))}"
        )
        return
    worker.version = ".".join(map(str, info["version"]))
    worker.sock, worker.reader = conn, wire.FrameReader()
    worker.last_seen = time.monotonic()
    pool.selector.register(conn, selectors.EVENT_READ, worker.sock_data)
    try:
        protocol.welcome(conn, pool.listener.key, worker_nonce, pool._worker_config())
    except OSError:
        pass  # it died; EOF follows


def worker_config(pool: Pool) -> dict:
    env = pool.environment
    sys_path = None
    if env.is_current:
        cwd = os.getcwd()
        sys_path = [os.path.join(cwd, p) if p else cwd for p in sys.path]
    return {
        "sys_path": sys_path,
        "append_path": [os.path.join(pool._runtime_dir, deploy.SHIM_DIR)],
        "heartbeat_interval": heartbeat_interval(pool.limits.heartbeat_timeout),
        "initializer": pool.initializer,
        "actor": pool.actor,
        "roots": pool.initializer_roots,
        # multiprocessing objects made here (Manager proxies, Listeners)
        # authenticate with this key: workers need it, as spawned children
        # get it. Only ever sent in this authenticated message.
        "authkey": bytes(multiprocessing.current_process().authkey),
        "spin": pool.spin,
    }
