"""The host's messages to one client, in order, without a thread hop when possible.

Every message to a client goes through its `Outbox`. Two ways in::

    send(m)  the session's own thread (it follows its worker, so it settles
             its client's quick tasks itself): nothing queued and nobody
             sending? then ─▶ link.send(m) here, at once; else queued
    post(m)  any other thread (the supervisor, another session's follower):
             queued ─▶ the writer thread ─▶ link.send(m)

A message goes out after every message given before it, whichever way it
came in: `send` writes directly only when the queue is empty and no other
thread is writing. Only the session's thread may block on its client's socket
(a client that does not read stalls its own session, never the supervisor or
another client's session): everything else goes through the writer thread.

`close` lets the writer flush what is queued, then closes the connection.
"""

from __future__ import annotations

import collections
import pickle
import threading

from ..worker import wire
from .link import Link


class Outbox:
    """Ordered sends to one client connection: direct or through a writer thread."""

    def __init__(self, link: Link, name: str = "bayou-host-writer") -> None:
        self.link = link
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)  # the writer waits on it
        self._queue: collections.deque = collections.deque()
        self._busy = False  # a thread is in link.send
        self._closing = False
        self.broken = False  # a send failed: the client is gone
        self.writer = threading.Thread(target=self._write_loop, name=name, daemon=True)
        self.writer.start()

    def send(self, message: tuple, fds: list[int] | None = None) -> None:
        """From the thread that may block on this client (its session's): at once
        when nothing is queued before it. `fds` go with it, and are closed here."""
        with self._lock:
            if self._closing or self.broken:
                wire.close_fds(fds or ())
                return
            if self._busy or self._queue:
                self._queue.append((message, fds))
                self._more.notify()
                return
            self._busy = True
        try:
            self._deliver(message, fds)
        finally:
            with self._lock:
                self._busy = False
                if self._queue or self._closing:
                    self._more.notify()

    def post(self, message: tuple, fds: list[int] | None = None) -> None:
        """From any thread: the writer sends it, after everything before it."""
        with self._lock:
            if self._closing or self.broken:
                wire.close_fds(fds or ())
                return
            self._queue.append((message, fds))
            if not self._busy:
                self._more.notify()

    def close(self, last: tuple | None = None, timeout: float | None = None) -> None:
        """Queue `last`, take no more, and let the writer flush and close the
        connection (waiting up to `timeout` seconds for it when given)."""
        with self._lock:
            if not self._closing and last is not None and not self.broken:
                self._queue.append((last, None))
            self._closing = True
            self._more.notify()
        if timeout is not None and threading.current_thread() is not self.writer:
            self.writer.join(timeout)

    def _write_loop(self) -> None:
        lock = self._lock
        with lock:
            while True:
                while not self._closing and (self._busy or not self._queue):
                    self._more.wait()
                if self._busy:  # closing while a direct send is under way: it tells us
                    self._more.wait(0.1)
                    continue
                if not self._queue or self.broken:
                    break
                message, fds = self._queue.popleft()
                self._busy = True
                lock.release()
                try:
                    self._deliver(message, fds)
                finally:
                    lock.acquire()
                    self._busy = False
            for _, fds in self._queue:
                wire.close_fds(fds or ())
            self._queue.clear()
        self.link.close()

    def _deliver(self, message: tuple, fds: list[int] | None) -> None:
        try:
            self.link.send(message)
            if fds:
                self.link.send_fds(fds)
        except (OSError, ValueError, pickle.PicklingError):
            self.broken = True
        finally:
            wire.close_fds(fds or ())
