"""The pool's side of a worker connection before it is trusted: the handshake.

A worker connects to the pool's Unix socket and the two prove to each other
that they know the pool's key (`wire`'s mutual HMAC handshake)::

    accept() ─▶ CHALLENGE sent ─▶ on_data(): bytes until one AUTH frame
                                   ─▶ protocol.accept_auth ─▶ Verified
    expire(): a connection silent for HANDSHAKE_TIMEOUT is dropped

Nothing a connection sends is trusted before its HMAC checks out: its bytes
go into a buffer of ours (a header announcing a huge length must not make us
allocate it), the first frame must be one AUTH frame of at most
`MAX_AUTH_FRAME` bytes, and `protocol.accept_auth` verifies it without
unpickling any class. What to do with a verified worker (match it to the
process we started, check its Python, send WELCOME) is the supervisor's.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from typing import NamedTuple

from .. import protocol
from ..worker import wire

logger = logging.getLogger("bayou.executor")

HANDSHAKE_TIMEOUT = 10.0  # s a connection may take to authenticate
MAX_AUTH_FRAME = 1 << 16  # bytes a connection may send before it has authenticated


class Verified(NamedTuple):
    """A connection whose AUTH frame checked out."""

    conn: socket.socket
    worker_nonce: bytes
    worker_id: int
    info: dict


class Handshakes:
    """Connections accepted but not yet authenticated, registered as ``("conn",)``."""

    def __init__(self, listener: protocol.Listener, selector: selectors.BaseSelector) -> None:
        self._listener = listener
        self._selector = selector
        self._pending: dict[socket.socket, tuple[bytes, bytearray, float]] = {}

    def accept(self) -> None:
        """Take every waiting connection and challenge it."""
        while True:
            conn = self._listener.accept()
            if conn is None:
                return
            try:
                nonce = protocol.challenge(conn)
            except OSError:
                conn.close()
                continue
            self._pending[conn] = (nonce, bytearray(), time.monotonic())
            self._selector.register(conn, selectors.EVENT_READ, ("conn",))

    def on_data(self, conn: socket.socket) -> Verified | None:
        """Read what `conn` sent: a `Verified` once its AUTH frame checks out (it is then
        no longer ours), None while incomplete, or when it was dropped."""
        nonce, buf, _ = self._pending[conn]
        try:
            data = conn.recv(MAX_AUTH_FRAME)
        except OSError:
            data = b""
        if not data:
            self.drop(conn)
            return None
        buf += data
        size = wire.HEADER.size
        if len(buf) < size:
            return None
        length, kind = wire.HEADER.unpack_from(buf)
        if kind != wire.AUTH or length > MAX_AUTH_FRAME or len(buf) > size + length:
            logger.warning(
                "rejected a connection to the worker socket: it did not start with one "
                "AUTH frame of at most %d bytes",
                MAX_AUTH_FRAME,
            )
            self.drop(conn)
            return None
        if len(buf) < size + length:
            return None
        try:
            worker_nonce, worker_id, info = protocol.accept_auth(
                self._listener.key, nonce, bytes(buf[size:])
            )
        except ValueError as exc:
            logger.warning("rejected a connection to the worker socket: %s", exc)
            self.drop(conn)
            return None
        del self._pending[conn]
        self._selector.unregister(conn)
        return Verified(conn, worker_nonce, worker_id, info)

    def drop(self, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def expire(self, now: float) -> None:
        """Drop the connections that did not authenticate in time."""
        for conn, (_, _, since) in list(self._pending.items()):
            if now - since > HANDSHAKE_TIMEOUT:
                self.drop(conn)

    def close(self) -> None:
        for conn in list(self._pending):
            try:
                self.drop(conn)
            except Exception:
                conn.close()
