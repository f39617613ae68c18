"""The descriptors the supervisor's selector loop watches, besides its workers'.

    LoopIO() ─▶ a listening Unix socket (workers connect; `connection.Handshakes`
                authenticates them), a selector, and a wakeup pipe:
        wake()   another thread (submit, cancel, shutdown, a follower) wants the
                 loop's attention: one byte into the pipe, never blocking
        drain()  the loop empties the pipe when it wakes
        pause()  a follower reads this worker's socket: the loop stops watching it
        resume() ...and watches it again (on epoll: one EPOLL_CTL_MOD each, the
                 selector's own records untouched; elsewhere unregister/register)
        close()  once, when the loop ends

Made when the pool starts (the first submit), not in `Pool.__init__`: an
executor that is never used opens nothing.
"""

from __future__ import annotations

import os
import select
import selectors
import socket

from .. import protocol
from .connection import Handshakes


class LoopIO:
    def __init__(self) -> None:
        self.listener = protocol.Listener()
        self.selector = selectors.DefaultSelector()
        self.handshakes = Handshakes(self.listener, self.selector)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake",))
        self.selector.register(self.listener.sock, selectors.EVENT_READ, ("listen",))
        # the epoll object under an EpollSelector (its only attribute of that name)
        self._epoll = getattr(self.selector, "_selector", None)
        if not isinstance(self._epoll, getattr(select, "epoll", ())):
            self._epoll = None

    def pause(self, sock: socket.socket) -> bool:
        """Stop watching `sock`; False when it is not watched (closing, or not yet)."""
        try:
            if self._epoll is None:
                self.selector.unregister(sock)
            elif sock.fileno() in self.selector.get_map():
                self._epoll.modify(sock.fileno(), 0)
            else:
                return False
            return True
        except (KeyError, ValueError, OSError):
            return False

    def resume(self, sock: socket.socket, data: object) -> None:
        try:
            if self._epoll is None:
                self.selector.register(sock, selectors.EVENT_READ, data)
            else:
                self._epoll.modify(sock.fileno(), select.EPOLLIN)
        except (KeyError, ValueError, OSError):
            pass  # the pool is closing

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # full (a wake-up is pending anyway) or closed (the loop ended)

    def drain(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self.handshakes.close()
        self.listener.close()
        self.selector.close()
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
