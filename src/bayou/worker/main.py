"""Worker process entry point: handshake, then one task at a time until told to stop.

Started by the caller's pool as::

    <env python> [-s] -c "<bootstrap>" <runtime dir> <socket path> <worker id> <caller pid>

with the pool key on stdin (read, then stdin is replaced by /dev/null), fd 1
and fd 2 on pipes the caller reads, and its own process group. The bootstrap
only puts the runtime dir first on `sys.path` and calls `main()`.

Threads:

* main thread: receives TASK frames, runs them, sends exactly one RESULT per
  task; reads the socket only while idle. When the TASK's meta says tasks come
  back to back, it polls for the next one for the caller's `spin` seconds
  before it sleeps (`Channel.next_task`): on a virtual machine a sleeping
  process is woken late.
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

from . import actor, codec, context, shm, wire

TYPE_CHECKING = False  # typing is not imported at run time: the worker starts fast
if TYPE_CHECKING:
    from typing import Any

TICK = 0.1


class Channel:
    """The protocol socket, shared by the main and io threads."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.reader = wire.FrameReader()
        self.send_lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.stash: collections.deque[tuple[int, Any]] = collections.deque()
        self.spin = 0.0  # s `next_task` polls before sleeping (the caller's setting)
        self.poller: select.poll | None = None

    def set_spin(self, seconds) -> None:
        if seconds and hasattr(select, "poll"):
            self.poller = select.poll()
            self.poller.register(self.sock, select.POLLIN)
            self.spin = seconds

    def send(self, kind, payload=b"", fds=()) -> None:
        with self.send_lock:
            wire.send_frame(self.sock, kind, payload, fds)

    def recv(self):
        with self.read_lock:
            if self.stash:
                return self.stash.popleft()
            return wire.recv_frame(self.sock, self.reader)

    def next_task(self, spin):
        """`recv` for the idle main thread. With `spin` (the caller said tasks come back
        to back), poll for up to `self.spin` seconds first: a sleeping process is
        woken late on a virtual machine, a polling one at once."""
        if spin and self.spin and not self.stash and not self.reader.frames:
            wire.poll_briefly(self.poller, self.spin)
        return self.recv()

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
    if config.get("debug"):
        # EnvExecutor(debug=True): listen with the caller's debugpy before READY
        from . import debughook

        debughook.start(config["debug"])


# ids of the caller's args segments no longer mapped here (weakref callbacks)
_released: list[int] = []
_segment_name = "bayou"


_WORKER_PID = os.getpid()


class _next:
    spin = False  # the last TASK asked us to poll for the next one (its meta says)


def _leave_if_forked(status) -> None:
    """A process the task forked has returned (or raised) out of the task: it must not
    answer, nor read the next TASK from the worker's socket it shares. It exits here."""
    if os.getpid() == _WORKER_PID:
        return
    try:
        sys.stderr.write(
            "bayou: process %d, forked by a task, left the task instead of exiting; "
            "it exits now (os._exit)\n" % os.getpid()
        )
        sys.stderr.flush()
    finally:
        os._exit(0 if status == wire.OK else 1)


def _run_task(channel, frame) -> None:
    """Run one TASK frame (a one-item list, emptied here) and send exactly one RESULT.

    No reference to the task's payload, arguments or result survives: the
    payload is dropped once the arguments are loaded, the result once it is
    sent, so an idle worker holds none of a big task's data.
    """
    task_id, reply_fd, reply_size, status, blob, buffers, seconds = _call(frame)
    _leave_if_forked(status)
    try:
        desc, fds, inline, places = _place_result(blob, buffers, reply_fd, reply_size)
    finally:
        if reply_fd is not None:  # before the RESULT: the caller may reuse it at once
            wire.close_fds([reply_fd])
    del buffers  # what was copied to shared memory is no longer needed here
    released = tuple(_released)
    del _released[: len(released)]
    meta = (task_id, status, len(blob), desc, released, seconds)
    parts = wire.pack(meta, blob, inline, places)
    del blob, inline
    try:
        channel.send(wire.RESULT_FDS if fds else wire.RESULT, parts, fds)
    finally:
        wire.close_fds(fds)


def _place_result(blob, buffers, reply_fd, reply_size):
    """(oob description, descriptors, inline buffers, inline places) for a result's buffers."""
    if not buffers:
        return None, [], (), ()
    if shm.ENABLED and shm.total(buffers) >= shm.THRESHOLD:
        try:
            places, size = shm.layout([b.nbytes for b in buffers])
            if reply_fd is not None and size <= reply_size:
                shm.write_at(reply_fd, buffers, places)
                return (wire.OOB_REPLY, places, size), [], (), ()
            fd, places, size = shm.write_fresh(_segment_name, buffers)
            return (wire.OOB_FD, places, size), [fd], (), ()
        except OSError:
            pass  # no shared memory to be had: send them inline
    places = wire.layout(len(blob), [b.nbytes for b in buffers])
    return (wire.OOB_INLINE, places), [], buffers, places


def _arg_buffers(payload, body, desc, fds):
    if desc is None:
        return None
    if desc[0] == wire.OOB_INLINE:
        return wire.inline_views(payload, body, desc[1])
    _, places, size, seg_id, private = desc
    return shm.map_views(fds[0], size, places, private, lambda: _released.append(seg_id))


def _call(frame):
    """(task id, reply fd, reply size, status, blob, out-of-band buffers, seconds) for a
    TASK frame; seconds is how long the call itself took (map sizes its batches by it).

    Everything the call made is dropped on return but the pickled outcome.
    """
    kind, payload = frame.pop()
    fds = ()
    if kind == wire.TASK_FDS:
        payload, fds = payload
    meta, body = wire.unpack(payload)
    task_id, call_kind, fn_record, roots, args_len, desc, reply, spin_after = meta
    _next.spin = spin_after
    reply_fd = fds[1] if reply is not None and len(fds) > 1 else None
    wire.close_fds(fds[2:] if reply_fd is not None else fds[1:])
    context.begin(task_id)
    try:
        part = "function"  # what failed to load, for the caller's message
        try:
            try:
                if roots:
                    codec.add_roots(roots)
                fn = codec.resolve(fn_record)
                part = "arguments"
                buffers = _arg_buffers(payload, body, desc, fds)
                args = codec.loads(payload, body, body + args_len, buffers)
            finally:
                if fds:
                    wire.close_fds(fds[:1])
                payload = buffers = None
        except BaseException as exc:
            record = codec.load_error_record(exc, part)
            return task_id, reply_fd, reply, wire.LOAD_FAILED, _dump_record(record), None, None
        start = time.perf_counter()
        try:
            if call_kind == wire.CALL:
                result = fn(*args[0], **args[1])
            elif call_kind == wire.ITEMS:
                result = _items(fn, args)
            else:
                result = [fn(*a) for a in args]
        except BaseException as exc:
            return _error(task_id, reply_fd, reply, wire.RAISED, exc, 1, start)
        finally:
            del fn, args
        seconds = time.perf_counter() - start
        out = []
        try:
            return task_id, reply_fd, reply, wire.OK, codec.dumps(result, out), out, seconds
        except Exception as exc:
            if call_kind == wire.ITEMS:
                result = _items_picklable(result)
                if result is not None:
                    out = []
                    blob = codec.dumps(result, out)
                    return task_id, reply_fd, reply, wire.OK, blob, out, seconds
            note = "result of type %s" % codec.type_name(type(result))
            record = _dump_record(codec.error_record(exc, note=note))
            return task_id, reply_fd, reply, wire.RESULT_UNPICKLABLE, record, None, seconds
        except BaseException as exc:
            return _error(task_id, reply_fd, reply, wire.RAISED, exc, 0, start)
        finally:
            del result, out
    finally:
        context.end()


def _error(task_id, reply_fd, reply, status, exc, skip, start=None):
    seconds = None if start is None else time.perf_counter() - start
    record = codec.error_record(exc, skip=skip)
    return task_id, reply_fd, reply, status, _dump_record(record), None, seconds


def _dump_record(record):
    """Pickle an error record; a traceback too deep to pickle (nested recursion) is
    sent as text only, so the caller still gets the error rather than a crash."""
    try:
        return pickle.dumps(record, 4)
    except RecursionError:
        record = dict(record, tb=None)
    try:
        return pickle.dumps(record, 4)
    except RecursionError:
        return pickle.dumps(dict(record, exc=None), 4)


def _items(fn, args):
    """An ITEMS batch: (values, None), or the values before the first call that raised
    and (status, error record) of that call."""
    values = []
    for a in args:
        try:
            values.append(fn(*a))
        except BaseException as exc:
            return values, (wire.RAISED, codec.error_record(exc, skip=1))
    return values, None


def _items_picklable(result):
    """An ITEMS result that failed to pickle: cut it at the first value that cannot be."""
    values, _ = result
    for k, value in enumerate(values):
        try:
            codec.dumps(value)
        except Exception as exc:
            note = "result of type %s" % codec.type_name(type(value))
            return values[:k], (wire.RESULT_UNPICKLABLE, codec.error_record(exc, note=note))
    return None


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    global _segment_name
    runtime_dir, sock_path, worker_id, parent_pid = argv[0], argv[1], int(argv[2]), int(argv[3])
    _segment_name = shm.segment_name(parent_pid)
    _set_pdeathsig()
    if os.getppid() != parent_pid:
        os._exit(1)
    key = _read_key()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # or fails below
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
    except RuntimeError as exc:  # the peer does not know the key: run nothing for it
        sys.stderr.write("bayou worker: %s\n" % exc)
        sys.stderr.flush()
        os._exit(1)
    del key
    _configure(config, runtime_dir)
    channel.set_spin(config.get("spin"))
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
            channel.send(wire.INIT_FAILED, _dump_record(codec.error_record(exc)))
            sys.stderr.flush()
            os._exit(1)
    if config.get("actor") is not None:
        try:
            cls_blob, args_blob = pickle.loads(config["actor"])
            args, kwargs = codec.loads(args_blob)
            actor.build(codec.loads(cls_blob), args, kwargs)
        except BaseException as exc:
            record = codec.error_record(exc, skip=1)
            record["stage"] = "constructor"
            channel.send(wire.INIT_FAILED, _dump_record(record))
            sys.stderr.flush()
            os._exit(1)
    channel.send(wire.READY)

    while True:
        try:
            frame = [channel.next_task(_next.spin)]
            _next.spin = False
            kind = frame[0][0]
            if kind == wire.TASK or kind == wire.TASK_FDS:
                _run_task(channel, frame)  # empties `frame`: no payload kept while idle
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
