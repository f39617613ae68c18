"""What uv is doing, read from its stderr as it streams, as progress events.

uv 0.13 tells it two ways (both checked against ``uv pip install``):

* On a terminal, which bayou gives it (a pseudo-terminal as its stderr, see
  `tools.run_tool`), it redraws progress bars: a spinner with the requirement
  being resolved, then ``Preparing packages... (3/5)`` with one bar per
  download (``torch  ------  1.20 GiB/2.00 GiB``), then ``[3/5] numpy==1.26.4``
  while installing. Bars are redrawn after ``\\r``/erase sequences, and rows
  padded to the terminal's width wrap instead of ending in ``\\n``.
* On a pipe (where no pseudo-terminal could be had), and with or without
  ``UV_NO_PROGRESS``, only lines: ``Downloading torch (2.0GiB)`` and
  `` Downloaded torch`` for large wheels, no bytes in between.

Both print the same summary lines (``Resolved 5 packages in 871ms``,
``Prepared 5 packages in 544ms``, ``Installed 5 packages in 28ms``), which
alone give counts. `UvProgress` reads both: it turns each text fragment into
an event dict, as the rattler child sends them (stage, done, total, message,
bytes_done, bytes_total), for stages ``pip-resolve``, ``pip-download`` and
``pip-install``. Sizes are uv's rounded figures (``12.43 MiB``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

EventCallback = Callable[[dict[str, Any]], None]

_SIZE = r"\d+(?:\.\d+)?\s?[KMGT]?i?B"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# A fragment ends at a line end, a carriage return or a (non-colour) escape sequence.
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_BREAK = re.compile(r"\r|\n|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_SUMMARY = re.compile(r"^(Resolved|Prepared|Installed|Audited) (\d+) packages? in ")
_DOWNLOADING = re.compile(rf"^Downloading (\S+) \(({_SIZE})\)")
_DOWNLOADED = re.compile(r"^Downloaded (\S+)$")
_BUILDING = re.compile(r"^(Building|Built) (\S+)")
_PREPARING = re.compile(r"Preparing packages\.\.\. \((\d+)/(\d+)\)")
_BAR = re.compile(rf"([A-Za-z0-9][\w.\-]*)\s+[^\w\s]+\s+({_SIZE})/({_SIZE})")
_INSTALLING = re.compile(r"\[(\d+)/(\d+)\] (\S+)")
_SPINNER = re.compile(r"^[\u2800-\u28ff] (\S.*)$")


def parse_size(text: str) -> int:
    """``12.43 MiB`` or ``2.0GiB`` in bytes (uv prints binary units)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s?([KMGT]?)i?B", text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


class UvProgress:
    """Feed it uv's stderr in chunks as they arrive; it calls `on_event` with
    a dict for each change worth telling (byte counts at most every 0.1 s)."""

    def __init__(self, on_event: EventCallback) -> None:
        self.on_event = on_event
        self._pending = ""
        self._last: tuple[Any, ...] | None = None
        self._bytes_at = 0.0
        self._phase = "resolve"
        self._prepared: tuple[int, int | None] = (0, None)
        self._sizes: dict[str, list[int]] = {}  # name: [bytes done, bytes total]

    def feed(self, chunk: str) -> None:
        text = _SGR.sub("", self._pending + chunk)
        cut = max(text.rfind("\r"), text.rfind("\n"), text.rfind("\x1b"))
        if cut < 0:
            self._pending = text
            return
        self._pending = text[cut:]  # an unfinished fragment, or escape sequence
        for fragment in _BREAK.split(text[:cut]):
            fragment = fragment.strip()
            if fragment:
                self._read(fragment)

    def finish(self) -> None:
        """The end of the output: read what was left without a line end."""
        rest, self._pending = self._pending, ""
        for fragment in _BREAK.split(_SGR.sub("", rest)):
            if fragment.strip():
                self._read(fragment.strip())

    def _read(self, text: str) -> None:
        summary = _SUMMARY.match(text)
        if summary is not None:
            self._summary(summary.group(1), int(summary.group(2)))
            return
        match = _DOWNLOADING.match(text)
        if match is not None:  # a pipe: a large wheel starts
            self._sizes[match.group(1)] = [0, parse_size(match.group(2))]
            self._download(match.group(1))
            return
        match = _DOWNLOADED.match(text)
        if match is not None:
            size = self._sizes.setdefault(match.group(1), [0, 0])
            size[0] = size[1]
            self._prepared = (self._prepared[0] + 1, self._prepared[1])
            self._download(match.group(1))
            return
        match = _BUILDING.match(text)
        if match is not None:
            self._download(f"{match.group(1).lower()} {match.group(2)}")
            return
        preparing = _PREPARING.search(text)
        bars = list(_BAR.finditer(text))
        if preparing is not None or bars:
            if preparing is not None and preparing.group(2) != "0":  # (0/0): not counted yet
                self._prepared = (int(preparing.group(1)), int(preparing.group(2)))
            elif not bars:
                return
            for bar in bars:
                done, total = parse_size(bar.group(2)), parse_size(bar.group(3))
                self._sizes[bar.group(1)] = [min(done, total), total]
            self._download(self._slowest())
            return
        installing = _INSTALLING.search(text)
        if installing is not None and installing.group(2) != "0":  # [0/0]: not counted yet
            name = installing.group(3)
            self._phase = "install"
            shown = "" if name == "Installing" else name  # "[0/5] Installing wheels..."
            self._send("pip-install", int(installing.group(1)), int(installing.group(2)), shown)
            return
        spinner = _SPINNER.match(text)
        if spinner is not None and self._phase == "resolve":
            self._send("pip-resolve", None, None, spinner.group(1))

    def _summary(self, what: str, count: int) -> None:
        if what == "Resolved":
            self._send("pip-resolve", count, count, "packages")
        elif what == "Prepared":
            for size in self._sizes.values():
                size[0] = size[1]
            self._prepared = (count, count)
            self._download("", force=True)
        else:  # Installed, or Audited: all were there already
            self._phase = "install"
            message = "packages" if what == "Installed" else "already installed"
            self._send("pip-install", count, count, message)

    def _slowest(self) -> str:
        """The download with the most bytes still to come: what a user waits on."""
        left = {name: total - done for name, (done, total) in self._sizes.items()}
        name = max(left, key=lambda n: left[n], default="")
        return name if left.get(name) else ""

    def _download(self, message: str, force: bool = False) -> None:
        self._phase = "download"
        done, total = self._prepared
        size: tuple[int | None, int | None] = (None, None)
        if self._sizes:
            size = (
                sum(s[0] for s in self._sizes.values()),
                sum(s[1] for s in self._sizes.values()),
            )
        now = time.monotonic()
        last = self._last
        if (
            not force
            and last is not None
            and last[:3] == ("pip-download", done, total)
            and last[3] == message
            and now - self._bytes_at < 0.1
        ):
            return  # only bytes moved, and they were told a moment ago
        self._bytes_at = now
        self._send("pip-download", done, total, message, *size)

    def _send(
        self,
        stage: str,
        done: int | None,
        total: int | None,
        message: str,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
    ) -> None:
        key = (stage, done, total, message, bytes_done, bytes_total)
        if key == self._last:
            return
        self._last = key
        self.on_event(
            {
                "event": "progress",
                "stage": stage,
                "done": done,
                "total": total,
                "message": message,
                "bytes_done": bytes_done,
                "bytes_total": bytes_total,
            }
        )
