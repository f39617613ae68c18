"""Frames and authentication: the byte format both ends of a worker connection speak.

This module is shared verbatim by the caller (as ``bayou.worker.wire``) and the
worker (as ``_bayou_worker.wire``), so it is stdlib-only and runs on 3.8+.

A frame is a 9-byte header ``!QB`` (payload length, message kind) followed by
the payload. Control payloads are small plain pickles of builtin types.

TASK and RESULT payloads are *envelopes* (`pack` / `unpack`), so the user's
data is never pickled inside another pickle (each nesting level would copy
it)::

    !I meta length | meta (pickle of builtins) | pad to 16 | blob | pad | buffer | pad | buffer ...

``blob`` is the user's object pickled with protocol 5; its large
out-of-band buffers (numpy arrays, anything that gives pickle a
``PickleBuffer``) either follow it in the frame, 16-byte aligned ("inline"),
or live in shared-memory segments (`shm`) whose file descriptors travel with
the frame (SCM_RIGHTS). Frames of the kinds in `FD_KINDS` carry one batch of
descriptors, sent in the same ``sendmsg`` as their header: the reader queues
every batch it receives and gives it to the next such frame, as
``(kind, (payload, fds))``.

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

import array
import collections
import hashlib
import hmac
import os
import pickle
import socket
import struct
import time

TYPE_CHECKING = False  # typing is not imported at run time: the worker starts fast
if TYPE_CHECKING:
    from typing import Any

HEADER = struct.Struct("!QB")
META = struct.Struct("!I")
ALIGN = 16

# caller -> worker
CHALLENGE = 1
WELCOME = 3
TASK = 10
CANCEL = 14
SHUTDOWN = 15
TASK_FDS = 16  # a TASK whose buffers are in shared memory (descriptors attached)
# worker -> caller
AUTH = 2
READY = 4
INIT_FAILED = 5
RESULT = 11
PROGRESS = 12
HEARTBEAT = 13
RESULT_FDS = 17  # a RESULT with a segment of the worker's own attached

FD_KINDS = frozenset((TASK_FDS, RESULT_FDS))
MAX_FDS = 4  # descriptors one frame may carry

# RESULT status codes
OK = 0
RAISED = 1  # the user's function raised; data is an error record
LOAD_FAILED = 2  # the function or its arguments could not be unpickled in the worker
RESULT_UNPICKLABLE = 3  # the return value could not be pickled in the worker

# TASK call kinds
CALL = 0  # fn(*args, **kwargs)
CHUNK = 1  # [fn(*a) for a in args]: a map() chunk, the first exception fails it all
ITEMS = 2  # like CHUNK, but the result is (values so far, error record of the first
#            exception or None): map's default batching keeps chunksize=1 semantics

# Function records inside a TASK
FN_PICKLED = "p"  # ("p", cloudpickle blob)
FN_REF = "r"  # ("r", module, qualname, file or None)
FN_ACTOR = "a"  # ("a", method name): a method of the worker's actor object (`actor`)

# A TASK's roots are what the worker needs to import the caller's code: sys.path
# directories, and this prefix + "path:<file>" or "module:<name>" for the caller's
# main script (`mainscript`), when the task names something defined there.
MAIN_ROOT = "__main__:"

# Where a message's out-of-band buffers are (the "oob" field of its meta)
OOB_INLINE = "i"  # ("i", ((offset from body start, size), ...))
OOB_FD = "f"  # ("f", ((offset, size), ...), segment size): the frame's first descriptor
OOB_REPLY = "r"  # ("r", ((offset, size), ...), segment size): the caller's reply segment

NONCE_SIZE = 32
KEY_SIZE = 32
_BIG_FRAME = 1 << 20
_LANDING_SIZE = 1 << 16  # small frames; a big body is received straight into place
_SMALL_SEND = 65536
_IOV_BATCH = 512
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * 4) if hasattr(socket, "CMSG_SPACE") else 0
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_PADS = [bytes(n) for n in range(ALIGN)]


_relax = getattr(os, "sched_yield", None) or (lambda: None)


def poll_briefly(poller, seconds: float) -> list:
    """`poller.poll` without sleeping, for up to `seconds`: its events, or [].

    Both ends use it for tiny tasks: a process or thread that sleeps is woken
    late (tens of microseconds on a virtual machine), one that polls is not.
    Between polls it yields its CPU to anything runnable there (a worker that
    the wake-up placed on this CPU), so it never delays what it waits for.
    """
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        events = poller.poll(0)
        if events:
            return events
        _relax()
    return []


def digest(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def verify(key: bytes, message: bytes, answer: bytes) -> bool:
    return hmac.compare_digest(digest(key, message), answer)


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def nbytes(buf) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def send_frame(sock, kind: int, payload=b"", fds=()) -> None:
    """Send one whole frame (the caller serialises concurrent senders).

    `payload` is bytes-like or a list of bytes-like parts (sent with one
    gathering ``sendmsg``, never joined); `fds` are passed with the header.
    """
    if isinstance(payload, list):
        parts = payload
        length = 0
        for p in parts:
            length += nbytes(p)
    else:
        parts = None
        length = nbytes(payload)
    header = HEADER.pack(length, kind)
    if not fds and length < _SMALL_SEND:
        if parts is None:
            sock.sendall(header + payload)
        else:
            sock.sendall(header + b"".join(parts))
        return
    views = [memoryview(header)]
    for p in parts if parts is not None else (payload,):
        if nbytes(p):
            views.append(p if isinstance(p, memoryview) else memoryview(p))
    ancillary = []
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    while views:
        sent = sock.sendmsg(views[:_IOV_BATCH], ancillary)
        ancillary = []
        while sent:
            first = views[0]
            size = first.nbytes
            if sent >= size:
                sent -= size
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0


def pad(n: int) -> int:
    """Bytes that bring `n` to the next multiple of ALIGN."""
    return -n % ALIGN


def layout(start: int, sizes) -> tuple:
    """((offset, size), ...) for buffers laid out from `start`, each ALIGN-aligned."""
    out = []
    pos = start
    for size in sizes:
        pos += pad(pos)
        out.append((pos, size))
        pos += size
    return tuple(out)


def pack(meta: tuple, blob, inline=(), places=()) -> list:
    """The parts of an envelope: meta, then `blob`, then `inline` buffers at `places`.

    `places` are offsets from the body start (as `layout(len(blob), sizes)`
    gives them); nothing is copied, the parts reference `blob` and the buffers.
    """
    m = pickle.dumps(meta, 4)
    head = META.pack(len(m)) + m
    head += _PADS[pad(len(head))]
    parts = [head, blob]
    pos = nbytes(blob)
    for buf, (offset, size) in zip(inline, places):  # noqa: B905 (3.8: no strict=)
        if offset > pos:
            parts.append(_PADS[offset - pos] if offset - pos < ALIGN else bytes(offset - pos))
        parts.append(buf)
        pos = offset + size
    return parts


def unpack(payload) -> tuple:
    """(meta, body start) of an envelope."""
    (n,) = META.unpack_from(payload, 0)
    end = META.size + n
    meta = pickle.loads(memoryview(payload)[META.size : end])
    return meta, end + pad(end)


def inline_views(payload, body: int, places) -> list:
    """Writable views of inline buffers (the payload is a bytearray the reader made)."""
    view = memoryview(payload)
    return [view[body + offset : body + offset + size] for offset, size in places]


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class FrameReader:
    """Reassembles frames from a stream; `frames` holds the complete ones.

    `feed_from` does exactly one receive, so on a socket reported readable it
    never blocks; big payloads are received straight into a preallocated
    buffer instead of being accumulated. Payloads are bytearrays, so buffers
    viewed inside them are writable (like the arrays ProcessPoolExecutor
    returns). Descriptors that arrive are queued and handed to the next frame
    of a kind in `FD_KINDS`; `close` closes any nobody claimed.
    """

    def __init__(self) -> None:
        self.frames: collections.deque[tuple[int, Any]] = collections.deque()
        self._buf = bytearray()
        # received into, then copied: `recv(n)` would allocate n bytes per call, and
        # a large allocation is an mmap/munmap pair (about 100 us per small frame)
        self._landing = memoryview(bytearray(_LANDING_SIZE))
        self._big: list[Any] | None = None  # [kind, bytearray body, bytes filled]
        # batches received, not yet given to a frame
        self._fds: collections.deque[list[int]] = collections.deque()

    def feed_from(self, sock, flags=0) -> bool:
        """Receive once; False on end of stream. `flags` are added to the receive's
        (MSG_DONTWAIT: BlockingIOError when nothing is there)."""
        big = self._big
        if big is not None:
            view = memoryview(big[1])
            n = sock.recv_into(view[big[2] :], 0, flags)
            if not n:
                return False
            big[2] += n
            if big[2] == len(big[1]):
                self._big = None
                self._complete(big[0], big[1])
            return True
        landing = self._landing
        if _CMSG_SPACE:
            n, ancillary, got, _ = sock.recvmsg_into([landing], _CMSG_SPACE, _RECV_FLAGS | flags)
            if ancillary:
                self._take_fds(ancillary, got)
        else:
            n = sock.recv_into(landing, 0, flags)
        if not n:
            return False
        self._buf += landing[:n]
        self._parse()
        return True

    def _take_fds(self, ancillary, flags) -> None:
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(data[: len(data) - len(data) % a.itemsize])
                fds.extend(a)
        if flags & getattr(socket, "MSG_CTRUNC", 0):
            close_fds(fds)
            raise OSError("protocol error: descriptors were truncated")
        if fds:
            self._fds.append(fds)

    def _complete(self, kind, payload) -> None:
        if kind in FD_KINDS:
            if not self._fds:
                raise OSError("protocol error: a frame's descriptors are missing")
            self.frames.append((kind, (payload, self._fds.popleft())))
        else:
            self.frames.append((kind, payload))

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
                self._complete(kind, buf[start:end])
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

    def between_frames(self) -> bool:
        """Whether no frame is half received: another reader may take the stream over."""
        return not self._buf and self._big is None and not self._fds

    def close(self) -> None:
        """Close the descriptors of frames nobody will handle."""
        while self._fds:
            close_fds(self._fds.popleft())
        while self.frames:
            kind, payload = self.frames.popleft()
            if kind in FD_KINDS:
                close_fds(payload[1])


def recv_frame(sock, reader: FrameReader):
    """Block until a frame is available; EOFError when the peer is gone."""
    while not reader.frames:
        if not reader.feed_from(sock):
            raise EOFError("connection closed")
    return reader.frames.popleft()
