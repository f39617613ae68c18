"""Frames and authentication: the byte format both ends of a worker connection speak.

This module is shared verbatim by the caller (as ``bayou.worker.wire``) and the
worker (as ``_bayou_worker.wire``), so it is stdlib-only and runs on 3.8+.

A frame is a 9-byte header ``!QB`` (payload length, message kind) followed by
the payload. Control payloads are small plain pickles of builtin types; task
and result payloads carry the user's objects as opaque cloudpickle blobs
inside such a pickle, so a payload that cannot be loaded never hides the task
id it belongs to.

Authentication is a mutual HMAC-SHA256 challenge, like
``multiprocessing.connection``::

    caller                         worker
      CHALLENGE(nonce_c)   ──▶
                           ◀──   AUTH(hmac(key, nonce_c), nonce_w, worker id, info)
      WELCOME(hmac(key, nonce_w) + config)  ──▶
                           ◀──   READY(info) | INIT_FAILED(error)

The key is a per-pool random secret handed to the worker on its stdin; it
never appears in argv or the environment.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import struct

HEADER = struct.Struct("!QB")

# caller -> worker
CHALLENGE = 1
WELCOME = 3
TASK = 10
CANCEL = 14
SHUTDOWN = 15
# worker -> caller
AUTH = 2
READY = 4
INIT_FAILED = 5
RESULT = 11
PROGRESS = 12
HEARTBEAT = 13

# RESULT status codes
OK = 0
RAISED = 1  # the user's function raised; data is an error record
LOAD_FAILED = 2  # the function or its arguments could not be unpickled in the worker
RESULT_UNPICKLABLE = 3  # the return value could not be pickled in the worker

# TASK call kinds
CALL = 0  # fn(*args, **kwargs)
CHUNK = 1  # [fn(*a) for a in args]: a map() chunk

# Function records inside a TASK
FN_PICKLED = "p"  # ("p", cloudpickle blob)
FN_REF = "r"  # ("r", module, qualname, file or None)

NONCE_SIZE = 32
KEY_SIZE = 32
_BIG_FRAME = 1 << 20
_RECV_SIZE = 1 << 18


def digest(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def verify(key: bytes, message: bytes, answer: bytes) -> bool:
    return hmac.compare_digest(digest(key, message), answer)


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def send_frame(sock, kind: int, payload: bytes = b"") -> None:
    """Send one whole frame (the caller serialises concurrent senders)."""
    header = HEADER.pack(len(payload), kind)
    if len(payload) < 65536:
        sock.sendall(header + payload)
    else:
        sock.sendall(header)
        sock.sendall(payload)


class FrameReader:
    """Reassembles frames from a stream; `frames` holds the complete ones.

    `feed_from` does exactly one ``recv``, so on a socket reported readable it
    never blocks; big payloads are received straight into a preallocated
    buffer instead of being accumulated.
    """

    def __init__(self) -> None:
        self.frames = collections.deque()
        self._buf = bytearray()
        self._big = None  # [kind, bytearray body, bytes filled]

    def feed_from(self, sock) -> bool:
        """Receive once; False on end of stream."""
        big = self._big
        if big is not None:
            view = memoryview(big[1])
            n = sock.recv_into(view[big[2] :])
            if not n:
                return False
            big[2] += n
            if big[2] == len(big[1]):
                self.frames.append((big[0], big[1]))
                self._big = None
            return True
        data = sock.recv(_RECV_SIZE)
        if not data:
            return False
        self._buf += data
        self._parse()
        return True

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        size = HEADER.size
        end_buf = len(buf)
        while end_buf - pos >= size:
            length, kind = HEADER.unpack_from(buf, pos)
            start = pos + size
            end = start + length
            if end <= end_buf:
                self.frames.append((kind, bytes(buf[start:end])))
                pos = end
                continue
            if length >= _BIG_FRAME:
                body = bytearray(length)
                have = end_buf - start
                body[:have] = buf[start:end_buf]
                self._big = [kind, body, have]
                pos = end_buf
            break
        if pos:
            del buf[:pos]


def recv_frame(sock, reader: FrameReader):
    """Block until a frame is available; EOFError when the peer is gone."""
    while not reader.frames:
        if not reader.feed_from(sock):
            raise EOFError("connection closed")
    return reader.frames.popleft()
