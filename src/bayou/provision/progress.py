"""Progress of a build: events, and the default ways to show them.

Each build step reports `ProgressEvent`s. The stages, in build order:

    solve, download, link   the conda part (py-rattler; external backends too)
    venv                    a pip-only env's venv
    pip                     the pip part starts (0/N requirements) and ends (N/N)
    pip-resolve             uv resolving: the requirement it looks at, then N/N packages
    pip-download            uv downloading (and building) what is not in its cache:
                            packages k/n, bytes (`bytes_done`/`bytes_total`)
    pip-install             uv installing: k/n packages, the one being installed
    publish, done           (or failed)

`download` events carry bytes too, and `link`/`pip-install` events name the
package. `provision(progress=...)` accepts a callable that receives them;
without one, events are drawn as a one-line status on stderr when it is a
terminal (`TerminalProgress`), and logged on the ``bayou.provision`` logger
otherwise (`LogProgress`: plain lines, no carriage returns, a few per stage).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

logger = logging.getLogger("bayou.provision")


def format_bytes(count: int) -> str:
    """``512 B``, ``17.4 MiB``, ``2.0 GiB``."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ProgressEvent:
    env_hash: str
    stage: str
    done: int | None = None
    total: int | None = None
    message: str = ""
    bytes_done: int | None = None  # downloads: bytes so far, of bytes_total (when known)
    bytes_total: int | None = None

    def __str__(self) -> str:
        count = ""
        if self.done is not None:
            count = f" {self.done}/{self.total}" if self.total else f" {self.done}"
        size = ""
        if self.bytes_done is not None:
            size = f" {format_bytes(self.bytes_done)}"
            if self.bytes_total:
                percent = min(100, 100 * self.bytes_done // self.bytes_total)
                size += f"/{format_bytes(self.bytes_total)} ({percent}%)"
        text = f" {self.message}" if self.message else ""
        return f"[bayou {self.env_hash[:8]}] {self.stage}{count}{size}{text}"


ProgressCallback = Callable[[ProgressEvent], None]


class TerminalProgress:
    """Redraws one status line, cut to the terminal's width (a longer line
    would wrap, and the next redraw could not erase it). A new stage or count
    is drawn at once; byte and message updates at most every 0.1 s."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._width = 0
        self._counts: tuple[str, int | None, int | None] | None = None

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            return 80

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        final = event.stage in ("done", "failed")
        counts = (event.stage, event.done, event.total)
        if not final and counts == self._counts and now - self._last < 0.1:
            return
        self._last, self._counts = now, counts
        text = str(event)
        if not final:  # the last line stays as it is: it is never redrawn
            text = text[: max(self._columns() - 1, 20)]
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        if final:
            self.stream.write("\n")
        self.stream.flush()


class LogProgress:
    """Log lines for builds without a terminal: the first event of each stage,
    the one that completes it (done == total), the stage boundaries, and a line
    every `interval` seconds in between, so a long download shows it moves
    without flooding the log."""

    BOUNDARIES = ("venv", "pip", "publish", "done", "failed")

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._stage: str | None = None
        self._complete: tuple[str, int | None, int | None] | None = None
        self._last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        complete = event.done is not None and event.done == event.total
        if event.stage != self._stage or event.stage in self.BOUNDARIES:
            pass
        elif complete:
            if self._complete == (event.stage, event.done, event.bytes_done):
                return  # said already (uv's last bar, then its summary line)
        elif now - self._last < self.interval:
            return
        self._stage, self._last = event.stage, now
        if complete:
            self._complete = (event.stage, event.done, event.bytes_done)
        logger.info("%s", event)


def default_progress() -> ProgressCallback:
    isatty = getattr(sys.stderr, "isatty", lambda: False)
    return TerminalProgress() if isatty() else LogProgress()
