"""Progress of a build: events, and the default ways to show them.

Each build step reports `ProgressEvent`s (stage ∈ solve, download, link, pip,
publish, done). `provision(progress=...)` accepts a callable that receives
them; without one, events are drawn as a one-line status on stderr when it is
a terminal, and logged on the ``bayou.provision`` logger otherwise (so CI logs
get plain lines and no carriage returns).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("bayou.provision")


@dataclass(frozen=True)
class ProgressEvent:
    env_hash: str
    stage: str
    done: int | None = None
    total: int | None = None
    message: str = ""

    def __str__(self) -> str:
        count = ""
        if self.done is not None:
            count = f" {self.done}/{self.total}" if self.total else f" {self.done}"
        text = f" {self.message}" if self.message else ""
        return f"[bayou {self.env_hash[:8]}] {self.stage}{count}{text}"


ProgressCallback = Callable[[ProgressEvent], None]


class TerminalProgress:
    """Redraws one status line; throttled so a fast link step stays cheap."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._width = 0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        final = event.stage in ("done", "failed")
        if not final and now - self._last < 0.1:
            return
        self._last = now
        text = str(event)
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        if final:
            self.stream.write("\n")
        self.stream.flush()


def log_progress(event: ProgressEvent) -> None:
    # Per-package events would flood a log; keep the stage boundaries.
    if event.done is None or event.done == event.total or event.stage in ("pip", "done"):
        logger.info("%s", event)


def default_progress() -> ProgressCallback:
    isatty = getattr(sys.stderr, "isatty", lambda: False)
    return TerminalProgress() if isatty() else log_progress
