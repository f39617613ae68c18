"""Worker process entry point: handshake, then one task at a time until told to stop.

Started by the caller's pool as::

    <env python> [-s] -c "<bootstrap>" <runtime dir> <socket path> <worker id> <caller pid>

with the pool key on stdin (read, then stdin is replaced by /dev/null), fd 1
and fd 2 on pipes the caller reads, and its own process group. The bootstrap
only puts the runtime dir first on `sys.path` and calls `main()`.

Threads:

* main thread: receives TASK frames, runs them, sends exactly one RESULT per
  task; reads the socket only while idle.
* io thread (daemon): every `TICK` checks that the caller is alive (parent pid
  unchanged; PR_SET_PDEATHSIG covers the case where the main thread holds the
  GIL), sends a HEARTBEAT when due, flushes rate-limited progress and, while a
  task runs, drains CANCEL frames from the socket. A task stuck in C code
  holding the GIL starves this thread, which is exactly what the caller's
  heartbeat timeout detects.
"""

from __future__ import annotations

import collections
import faulthandler
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time

from . import codec, context, wire

TICK = 0.1


class Channel:
    """The protocol socket, shared by the main and io threads."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.reader = wire.FrameReader()
        self.send_lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.stash = collections.deque()

    def send(self, kind, payload=b"") -> None:
        with self.send_lock:
            wire.send_frame(self.sock, kind, payload)

    def recv(self):
        with self.read_lock:
            if self.stash:
                return self.stash.popleft()
            return wire.recv_frame(self.sock, self.reader)

    def drain_control(self, handle) -> None:
        """Handle frames that arrived while the main thread is busy (io thread)."""
        if not self.read_lock.acquire(False):
            return
        try:
            while True:
                while self.reader.frames:
                    frame = self.reader.frames.popleft()
                    if not handle(frame):
                        self.stash.append(frame)
                if not select.select([self.sock], [], [], 0)[0]:
                    return
                if not self.reader.feed_from(self.sock):
                    raise EOFError
        finally:
            self.read_lock.release()


def _die(code=1):
    """The caller is gone: take our process group (user subprocesses) with us."""
    try:
        if os.getpgrp() == os.getpid():
            os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(code)


def _set_pdeathsig() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _read_key() -> bytes:
    chunks = []
    while True:
        data = os.read(0, 4096)
        if not data:
            break
        chunks.append(data)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return b"".join(chunks)


def _io_loop(channel, parent_pid, heartbeat_interval) -> None:
    def handle(frame):
        kind, payload = frame
        if kind == wire.CANCEL:
            context.request_cancel(pickle.loads(payload))
            return True
        return False

    next_beat = 0.0
    try:
        while True:
            time.sleep(TICK)
            if os.getppid() != parent_pid:
                _die()
            if context.running():
                channel.drain_control(handle)
                context.flush_progress()
            if heartbeat_interval:
                now = time.monotonic()
                if now >= next_beat:
                    channel.send(wire.HEARTBEAT)
                    next_beat = now + heartbeat_interval
    except BaseException:
        _die()


def _handshake(channel, key, worker_id):
    kind, nonce = channel.recv()
    if kind != wire.CHALLENGE:
        raise RuntimeError("protocol error: expected CHALLENGE")
    mine = wire.new_nonce()
    info = {
        "pid": os.getpid(),
        "version": tuple(sys.version_info[:3]),
        "protocol": codec.PROTOCOL,
        "executable": sys.executable,
    }
    channel.send(wire.AUTH, pickle.dumps((wire.digest(key, nonce), mine, worker_id, info), 4))
    kind, payload = channel.recv()
    if kind != wire.WELCOME or not wire.verify(key, mine, payload[:32]):
        raise RuntimeError("the caller failed authentication")
    return info, pickle.loads(payload[32:])


def _configure(config, runtime_dir) -> None:
    if config.get("sys_path") is not None:
        sys.path[:] = [runtime_dir] + [p for p in config["sys_path"] if p != runtime_dir]
    for p in config.get("append_path", ()):
        if p not in sys.path:
            sys.path.append(p)
    codec.add_roots(config.get("roots", ()))
    authkey = config.get("authkey")
    if authkey:
        # the caller's multiprocessing key, as a spawned child would have it, so
        # Manager proxies and other multiprocessing objects can connect back
        import multiprocessing.process

        multiprocessing.process.current_process().authkey = authkey


def _run_task(channel, payload) -> None:
    """Run one task and send its RESULT; no reference to its arguments or result survives."""
    status, data = _call(payload)
    task_id = payload[0]
    if status == wire.OK:
        message = pickle.dumps((task_id, status, data), codec.PROTOCOL)
    else:
        message = pickle.dumps((task_id, status, data), 4)
    del data
    channel.send(wire.RESULT, message)


def _call(payload):
    """(status, data) for a decoded TASK; everything the call made is dropped on return."""
    task_id, call_kind, fn_record, args_blob, roots = payload
    context.begin(task_id)
    try:
        try:
            if roots:
                codec.add_roots(roots)
            fn = codec.resolve(fn_record)
            args = codec.loads(args_blob)
        except BaseException as exc:
            return wire.LOAD_FAILED, codec.error_record(exc, skip=1)
        try:
            if call_kind == wire.CALL:
                result = fn(*args[0], **args[1])
            else:
                result = [fn(*a) for a in args]
        except BaseException as exc:
            return wire.RAISED, codec.error_record(exc, skip=1)
        finally:
            del fn, args
        try:
            return wire.OK, codec.dumps(result)
        except Exception as exc:
            note = "result of type %s" % codec.type_name(type(result))
            return wire.RESULT_UNPICKLABLE, codec.error_record(exc, note=note)
        except BaseException as exc:
            return wire.RAISED, codec.error_record(exc)
        finally:
            del result
    finally:
        context.end()


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    runtime_dir, sock_path, worker_id, parent_pid = argv[0], argv[1], int(argv[2]), int(argv[3])
    _set_pdeathsig()
    if os.getppid() != parent_pid:
        os._exit(1)
    key = _read_key()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass
    faulthandler.enable()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    channel = Channel(sock)
    try:
        info, config = _handshake(channel, key, worker_id)
    except (EOFError, OSError):
        os._exit(1)
    del key
    _configure(config, runtime_dir)
    context.install(channel.send)
    threading.Thread(
        target=_io_loop,
        args=(channel, parent_pid, config.get("heartbeat_interval")),
        name="bayou-io",
        daemon=True,
    ).start()

    if config.get("initializer") is not None:
        try:
            initializer, initargs = codec.loads(config["initializer"])
            initializer(*initargs)
        except BaseException as exc:
            channel.send(wire.INIT_FAILED, pickle.dumps(codec.error_record(exc), 4))
            sys.stderr.flush()
            os._exit(1)
    channel.send(wire.READY, pickle.dumps(info, 4))

    while True:
        try:
            kind, payload = channel.recv()
            if kind == wire.TASK:
                task, payload = pickle.loads(payload), None  # no pickled args kept while idle
                _run_task(channel, task)
                del task
            elif kind == wire.SHUTDOWN:
                break
        except KeyboardInterrupt:
            continue
        except (EOFError, OSError):
            _die(0)
    try:
        sock.close()
    except OSError:
        pass
