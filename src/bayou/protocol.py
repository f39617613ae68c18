"""The caller's side of the worker protocol: listening, authenticating, encoding.

Frame layout, message kinds and the HMAC helpers are shared with the worker
in `bayou.worker.wire`; this module adds what only the caller does:

* `Listener`: a Unix socket in a fresh 0700 directory plus the pool's random
  key (given to workers on stdin, never in argv or the environment).
* `challenge` / `accept_auth` / `welcome`: the caller's half of the mutual
  HMAC handshake, written as steps so the pool's selector loop drives it
  without blocking.
* `stage_buffers`: the big out-of-band buffers of a task's arguments (numpy
  arrays and the like; `bayou.boundary.TaskEncoder` pickles the task) go to a
  shared-memory segment (`bayou.shm`) or, when small, inline in the frame.
* `encode_task` / `result_buffers`: the TASK envelope (`wire.pack`) and the
  views of a RESULT's out-of-band buffers, wherever they are.
* `rebuild_exception`: remote exceptions back into objects (`loads`, from
  `bayou.boundary`, maps the worker's names). A remote exception is re-raised as its own type when it unpickles
  here, else as `RemoteError`; either way its `__cause__` carries the remote
  traceback text (CPython's `_RemoteTraceback`, so code and tests written for
  ProcessPoolExecutor see the same thing) and its `__traceback__` the remote
  frames rebuilt with tblib.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import shutil
import socket
import tempfile
import time
import types
from collections.abc import Iterable
from concurrent.futures.process import _RemoteTraceback
from typing import Any

from . import errors, shm
from .boundary import TaskEncoder, loads, module_root
from .worker import shm as worker_shm
from .worker import wire

__all__ = ["Listener", "TaskEncoder", "loads", "module_root", "rebuild_exception"]

_SOCKET_DIR_PREFIX = "bayou-sock-"
_swept = False


def _sweep_stale_socket_dirs(base: str) -> None:
    """Remove socket dirs left by callers that were killed (SIGKILL cannot clean up).

    A directory is stale when it is ours, older than a minute, and its socket
    refuses connections (no process listens on it any more).
    """
    global _swept
    if _swept:
        return
    _swept = True
    try:
        names = [n for n in os.listdir(base) if n.startswith(_SOCKET_DIR_PREFIX)]
    except OSError:
        return
    now = time.time()
    for name in names:
        directory = os.path.join(base, name)
        try:
            st = os.lstat(directory)
            if st.st_uid != os.getuid() or now - st.st_mtime < 60:
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(os.path.join(directory, "s"))
        except ConnectionRefusedError:
            shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            continue


class Listener:
    """The pool's listening socket, its private directory and its key."""

    def __init__(self) -> None:
        self.key = os.urandom(wire.KEY_SIZE)
        base = tempfile.gettempdir()
        if len(base) > 60:  # keep the socket path under the ~104 byte limit
            base = "/tmp"
        _sweep_stale_socket_dirs(base)
        self.directory = tempfile.mkdtemp(prefix=_SOCKET_DIR_PREFIX, dir=base)
        os.chmod(self.directory, 0o700)
        self.path = os.path.join(self.directory, "s")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(self.path)
            self.sock.listen(128)
        except BaseException:
            self.close()
            raise
        self.sock.setblocking(False)

    def accept(self) -> socket.socket | None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(True)
        return conn

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def challenge(sock: socket.socket) -> bytes:
    nonce = wire.new_nonce()
    wire.send_frame(sock, wire.CHALLENGE, nonce)
    return nonce


class _BuiltinsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed before authentication")


def accept_auth(key: bytes, nonce: bytes, payload: bytes) -> tuple[bytes, int, dict]:
    """Check a worker's AUTH frame; (worker nonce, worker id, info) or ValueError.

    The frame comes from a peer not yet authenticated, so its pickle may hold
    builtin values only: no class or function is looked up (nothing runs).
    """
    try:
        answer, worker_nonce, worker_id, info = _BuiltinsOnly(io.BytesIO(payload)).load()
        if not isinstance(answer, bytes) or not isinstance(info, dict):
            raise TypeError
    except Exception:
        raise ValueError("malformed AUTH frame")
    if not wire.verify(key, nonce, answer):
        raise ValueError("worker failed authentication")
    return worker_nonce, worker_id, info


def welcome(sock: socket.socket, key: bytes, worker_nonce: bytes, config: dict) -> None:
    payload = wire.digest(key, worker_nonce) + pickle.dumps(config, 4)
    wire.send_frame(sock, wire.WELCOME, payload)


# -- encoding tasks ---------------------------------------------------------------
# What a task's function and arguments become is `bayou.boundary`'s job; this
# module frames the result.


class OutOfBand:
    """Where a task's out-of-band argument buffers wait: a leased segment, or inline copies.

    Made at submit time (`stage_buffers`), so the caller's arrays are copied
    once, then and there; `release` ends the segments' leases when the task
    is settled.
    """

    __slots__ = ("inline", "places", "size", "segment", "reply", "segments", "private")

    def __init__(self) -> None:
        self.private = False  # the worker maps the args copy-on-write (a retry resends them)
        self.inline: list[bytes] = []
        self.places: tuple = ()
        self.size = 0
        self.segment: shm.Segment | None = None
        self.reply: shm.Segment | None = None
        self.segments: shm.SegmentPool | None = None

    def sent(self) -> None:
        """The TASK went to a worker: it may map the segments from now on."""
        for seg in (self.segment, self.reply):
            if seg is not None:
                seg.in_worker = True

    def take_reply(self) -> shm.Segment | None:
        """Hand the reply segment over to the result that was written into it."""
        seg, self.reply = self.reply, None
        return seg

    def release(self) -> None:
        segments = self.segments
        for seg in (self.segment, self.reply):
            if seg is not None and segments is not None:
                segments.settle(seg)
        self.segment = self.reply = None
        self.inline = []


def stage_buffers(
    buffers: list, segments: shm.SegmentPool | None, *, private: bool = False
) -> OutOfBand | None:
    """Copy the out-of-band `buffers` of a task's arguments to where they will wait.

    The worker maps a segment shared (populated at once: fast) and writes
    of the task's code reach it; that is harmless as the caller never reads
    it again, unless the task may be sent again (`retries`): then `private`
    (copy-on-write, slower) keeps the segment as the caller wrote it.
    """
    if not buffers:
        return None
    oob = OutOfBand()
    oob.private = private
    total = worker_shm.total(buffers)
    if segments is not None and total >= shm.THRESHOLD:
        staged = segments.stage(buffers)
        if staged is not None:
            oob.segment, oob.places, oob.size = staged
            oob.segments = segments
            oob.reply = segments.acquire(oob.size)
            return oob
    oob.inline = [bytes(b) for b in buffers]
    return oob


def encode_task(
    task_id: int,
    call_kind: int,
    fn_record: tuple,
    args_blob: bytes,
    roots: Iterable[str],
    oob: OutOfBand | None = None,
    spin_after: bool = False,
) -> tuple[list, list[int]]:
    """(payload parts, descriptors) of a TASK: the envelope `worker.main` unpacks.

    `spin_after` asks the worker to poll for its next task before sleeping."""
    desc: tuple[Any, ...] | None = None
    reply: int | None = None
    inline: list = []
    places: tuple = ()
    fds: list[int] = []
    if oob is not None:
        if oob.segment is not None:
            desc = (wire.OOB_FD, oob.places, oob.size, oob.segment.id, oob.private)
            fds.append(oob.segment.fd)
            if oob.reply is not None:
                reply = oob.reply.size
                fds.append(oob.reply.fd)
        else:
            inline = oob.inline
            places = wire.layout(len(args_blob), [len(b) for b in inline])
            desc = (wire.OOB_INLINE, places)
    meta = (
        task_id,
        call_kind,
        fn_record,
        tuple(sorted(roots)),
        len(args_blob),
        desc,
        reply,
        spin_after,
    )
    return wire.pack(meta, args_blob, inline, places), fds


def result_buffers(
    payload: bytearray,
    body: int,
    desc: tuple | None,
    fds: list[int],
    reply: shm.Segment | None,
    segments: shm.SegmentPool | None,
) -> list[memoryview] | None:
    """Views of a RESULT's out-of-band buffers, wherever the worker put them.

    A segment of the worker's own is mapped and its descriptor closed; the
    mapping lives as long as the result objects that view it.
    """
    if desc is None:
        return None
    where = desc[0]
    if where == wire.OOB_INLINE:
        return wire.inline_views(payload, body, desc[1])
    if where == wire.OOB_FD:
        if not fds:
            raise OSError("protocol error: a RESULT's segment is missing")
        wire.close_fds(fds[1:])
        if segments is None:
            try:
                return worker_shm.map_views(fds[0], desc[2], desc[1], False)
            finally:
                wire.close_fds(fds[:1])
        return segments.map_foreign(fds[0], desc[2], desc[1])
    if where == wire.OOB_REPLY and reply is not None and segments is not None:
        return segments.map_reply(reply, desc[2], desc[1])
    raise OSError(f"protocol error: RESULT buffers in {where!r}")


# -- decoding results ---------------------------------------------------------


def _rebuild_traceback(tb_dict: dict | None) -> types.TracebackType | None:
    if not tb_dict:
        return None
    try:
        from tblib import Traceback

        return Traceback.from_dict(tb_dict).as_traceback()
    except Exception:
        return None


def _builtin_exception(type_name: str, message: str) -> BaseException | None:
    """A builtin exception that could not travel pickled (a RecursionError whose
    pickling recursed too) is still the caller's type: rebuilt from its message."""
    name = type_name.removeprefix("builtins.")
    cls = None if "." in name else getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            return None
    return None


def rebuild_exception(record: dict) -> BaseException:
    """The remote exception as a local object, the remote traceback as its cause."""
    exc: BaseException | None = None
    if record.get("exc") is not None:
        try:
            exc = loads(record["exc"])
        except BaseException:
            exc = None
        if not isinstance(exc, BaseException):
            exc = None
    if exc is None:
        exc = _builtin_exception(record["type"], record["message"])
    if exc is None:
        exc = errors.RemoteError(record["type"], record["message"], record["traceback"])
    tb = _rebuild_traceback(record.get("tb"))
    if tb is not None:
        exc = exc.with_traceback(tb)
    # typeshed says a TracebackType; CPython's own process.py passes the text, as here
    exc.__cause__ = _RemoteTraceback(f'\n"""\n{record["traceback"]}"""')  # type: ignore[arg-type]
    return exc
