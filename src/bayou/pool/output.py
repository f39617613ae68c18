"""A worker's stdout and stderr: echoed or logged, always kept in a bounded log file.

User code prints on fd 1 and 2, which are pipes the supervisor reads (never
the protocol socket). Each chunk read goes through `WorkerOutput.feed`::

    chunk ─▶ output="inherit": decoded as it comes, written to the caller's
             │                 current sys.stdout / sys.stderr (partial lines too)
             ├▶ split into lines ─▶ the worker's log file, "HH:MM:SS out | text"
             │                     (rotated to <log>.1 past logs.WORKER_LOG_MAX_BYTES,
             │                      before a write, so the newest lines are in <log>)
             ├▶ output="logging": logger bayou.worker.<env>.<slot>, INFO / WARNING
             └▶ stderr lines: the last `STDERR_TAIL` kept for a crash message

A line that never ends (output without newlines) is cut every `MAX_LINE`
bytes, so it is not copied again at every read. `LogDir` is where a pool's
worker logs go: made on first use, a temporary one removed at close unless
something went wrong there (`keep`).
"""

from __future__ import annotations

import codecs
import collections
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from .. import logs

STDERR_TAIL = 20
MAX_LINE = 1 << 16  # bytes of a worker's output line kept whole in its log
MODES = ("inherit", "logging")


class LogDir:
    """The directory of a pool's worker logs."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.own = path is None  # a temporary directory of ours
        self.keep = False  # something failed: a temporary one stays for the user to read

    def open(self, name: str) -> tuple[Path, IO[str] | None]:
        """A new log file (0600: what a task prints is nobody else's business)."""
        try:
            if self.path is None:
                self.path = Path(tempfile.mkdtemp(prefix="bayou-logs-"))
            self.path.mkdir(parents=True, exist_ok=True)
            path = self.path / name
            return path, _open_append(path)
        except OSError:
            return Path(os.devnull), None

    def close(self) -> None:
        if self.own and self.path is not None and not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def _open_append(path: Path) -> IO[str]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return open(fd, "a", encoding="utf-8")  # noqa: SIM115


class WorkerOutput:
    """What one worker printed, and where it went."""

    def __init__(self, mode: str, log_dir: LogDir, env_hash: str, slot: int, pid: int) -> None:
        self.mode = mode
        self.pid = pid
        self._log_dir = log_dir
        self._log_name = f"worker-{env_hash}-{slot}-{pid}.log"
        self.log_path: Path | None = None
        self.log_file: IO[str] | None = None
        self.logger = logging.getLogger(f"bayou.worker.{env_hash}.{slot}")
        self.err_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._partial = {"out": b"", "err": b""}
        self._decoders = {
            tag: codecs.getincrementaldecoder("utf-8")("replace") for tag in ("out", "err")
        }

    def feed(self, tag: str, data: bytes) -> None:
        """Bytes read from fd 1 ("out") or fd 2 ("err")."""
        if self.mode == "inherit":
            _echo(tag, self._decoders[tag].decode(data))
        lines = (self._partial[tag] + data).split(b"\n")
        self._partial[tag] = lines.pop()
        if len(self._partial[tag]) >= MAX_LINE:  # output without newlines: log it in pieces
            lines.append(self._partial[tag])  # (keeping it whole would copy it at every read)
            self._partial[tag] = b""
        if lines:
            self._lines(tag, lines)

    def finish(self, tag: str) -> None:
        """The pipe reached EOF: what is left of a line, and of a UTF-8 sequence."""
        if self.mode == "inherit":
            _echo(tag, self._decoders[tag].decode(b"", final=True))
        if self._partial[tag]:
            self._lines(tag, [self._partial[tag]])
            self._partial[tag] = b""

    def tail(self) -> str:
        """The last stderr lines and the log's path, for a crash message."""
        text = ""
        if self.err_tail:
            text += "\nLast stderr lines:\n  " + "\n  ".join(self.err_tail)
        if self.log_path is not None and self.log_file is not None:
            text += f"\nWorker log: {self.log_path}"
        return text

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()

    def _lines(self, tag: str, lines: list[bytes]) -> None:
        level = logging.INFO if tag == "out" else logging.WARNING
        log_file = self._file()
        if log_file is not None and log_file.tell() >= logs.WORKER_LOG_MAX_BYTES:
            # rotated before writing, not after: the newest lines are always in <log>
            log_file = self._rotate()
        stamp = time.strftime("%H:%M:%S")
        to_logger = self.mode == "logging"
        for raw in lines:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            if log_file is not None:
                log_file.write(f"{stamp} {tag} | {text}\n")
            if tag == "err":
                self.err_tail.append(text)
            if to_logger:
                self.logger.log(level, "%s", text, extra={"worker_pid": self.pid, "stream": tag})
        if log_file is not None:
            log_file.flush()

    def _file(self) -> IO[str] | None:
        if self.log_file is None and self.log_path is None:
            self.log_path, self.log_file = self._log_dir.open(self._log_name)
        return self.log_file

    def _rotate(self) -> IO[str] | None:
        """Keep one chatty worker's log bounded: ``<log>`` becomes ``<log>.1``."""
        assert self.log_file is not None and self.log_path is not None
        self.log_file.close()
        self.log_file = None
        try:
            os.replace(self.log_path, f"{self.log_path}.1")
            self.log_file = _open_append(self.log_path)
        except OSError:
            self.log_path = Path(os.devnull)  # no more log for it; the output still flows
        return self.log_file


def _echo(tag: str, text: str) -> None:
    """`output="inherit"`: write as is to the caller's current sys.stdout / sys.stderr."""
    if not text:
        return
    stream = sys.stdout if tag == "out" else sys.stderr
    if stream is None:
        return
    try:
        try:
            stream.write(text)
        except UnicodeEncodeError:
            encoding = getattr(stream, "encoding", None) or "ascii"
            stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        stream.flush()
    except (OSError, ValueError, LookupError, UnicodeError):
        pass  # closed or unusable: the log file still has the text
