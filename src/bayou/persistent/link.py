"""The client↔host stream once both ends have authenticated: one frame per message.

The handshake (challenge, ``hello``, ``welcome`` or ``refused``) speaks
`multiprocessing.connection`'s framing, which any client can check a pool
with. After ``welcome`` both ends wrap the same socket in a `Link`::

    frame = !Q length | pickle(message tuple)     (protocol 5, in band)

It costs less per message than a `Connection` (whose send builds a
ForkingPickler with a copy of the copyreg table, and whose receive goes
through BytesIO objects): `recv` reads the header and then exactly the body,
straight into a reused buffer, so the socket's readiness (`poll`, epoll)
always means a whole message is there or on its way. Nothing is buffered in
user space, which is what lets a reader thread, a follower and the host's
session poll the descriptor itself.

Senders serialise themselves (the client's send lock, the host's `Outbox`);
so do receivers (the client's read lock, the host's one session thread).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
from multiprocessing import connection

HEADER = struct.Struct("!Q")
_LANDING = 1 << 16  # bodies up to this size are received into one reused buffer
_SMALL_SEND = 1 << 16  # below it header and body are joined and sent at once


class Link:
    """One authenticated client↔host socket, framed (see the module docstring)."""

    def __init__(self, conn: connection.Connection) -> None:
        """Take over `conn`'s socket (`conn` is closed; the socket stays open)."""
        self.sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        self.sock.setblocking(True)
        self._head = memoryview(bytearray(HEADER.size))
        self._landing = memoryview(bytearray(_LANDING))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: tuple) -> None:
        """Send one message; OSError when the other end is gone."""
        body = pickle.dumps(message, 5)
        header = HEADER.pack(len(body))
        if len(body) < _SMALL_SEND:
            self.sock.sendall(header + body)
            return
        views = [memoryview(header), memoryview(body)]
        while views:
            sent = self.sock.sendmsg(views)
            while sent:
                size = views[0].nbytes
                if sent >= size:
                    sent -= size
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def send_fds(self, fds: list[int]) -> None:
        """Send descriptors, with one byte, after a message that announces them (the
        receiver reads that byte with `recv_fds` as it handles the message)."""
        socket.send_fds(self.sock, [b"\0"], fds)

    def recv_fds(self, most: int = 4) -> list[int]:
        """The descriptors `send_fds` sent (the next byte of the stream)."""
        data, fds, _, _ = socket.recv_fds(self.sock, 1, most)
        if not data:
            raise EOFError("the other end closed the connection")
        return list(fds)

    def recv(self) -> tuple:
        """Receive one message (blocking); EOFError at the end of the stream."""
        self._fill(self._head)
        (length,) = HEADER.unpack(self._head)
        if length <= _LANDING:
            body = self._landing[:length]
            self._fill(body)
            return pickle.loads(body)
        big = bytearray(length)
        self._fill(memoryview(big))
        return pickle.loads(big)

    def _fill(self, view: memoryview) -> None:
        got = 0
        size = view.nbytes
        while got < size:
            n = self.sock.recv_into(view[got:] if got else view)
            if not n:
                raise EOFError("the other end closed the connection")
            got += n

    def close(self) -> None:
        """Close the socket; a thread blocked in `recv` on it gets EOF."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
