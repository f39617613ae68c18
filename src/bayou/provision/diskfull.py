"""Recognise a full disk in a failed build and say so plainly.

A full disk reaches `provision()` in several shapes: an ``OSError(ENOSPC)``
from bayou's own writes (request file, record, scripts), "No space left on
device (os error 28)" deep inside uv's or rattler's message, or a rattler
child that could not even write its result file (it then reports on stderr,
which lands in the error's output). `no_space_error` turns all of them into
one `ProvisionError` that starts with "no space left on device", names the
build directory and the package cache with the room each file system had
when the build failed, and keeps the tool's line that named the file.

It must be called before the build directory is discarded: discarding it
frees the space again, and the numbers would then look harmless.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from ..errors import ProvisionError, ProvisionTimeout

_NO_SPACE = re.compile(r"no space left on device|os error 28\b|errno 28\b", re.IGNORECASE)
_QUOTA = re.compile(r"disk quota exceeded|os error 122\b|errno 122\b", re.IGNORECASE)


def no_space_error(exc: BaseException, build_dir: Path, pkgs_dir: Path) -> ProvisionError | None:
    """A clear `ProvisionError` when `exc` comes from a full disk, else None."""
    kind = _kind(exc)
    if kind is None:
        return None
    places = []
    seen: set[int] = set()
    for label, path in (("build directory", build_dir), ("package cache", pkgs_dir)):
        room = _room(path)
        if room is None:
            places.append(f"{label} {path}")
            continue
        device, free, total = room
        if device in seen:
            places.append(f"{label} {path} (same file system)")
            continue
        seen.add(device)
        places.append(f"{label} {path} ({_size(free)} free of {_size(total)})")
    output = getattr(exc, "output", "") or ""
    culprit = _culprit_line(f"{exc}\n{output}")
    message = (
        f"{kind} while building in {build_dir}: "
        + "; ".join(places)
        + ". The build was discarded and the store left as it was; free some space, "
        "or move the store ($BAYOU_HOME) or the package caches ($BAYOU_PKGS_DIR) "
        "to a larger disk."
    )
    if culprit:
        message += f"\n{culprit}"
    return ProvisionError(
        message,
        package=getattr(exc, "package", None),
        channels=getattr(exc, "channels", None),
        output=output or f"{type(exc).__name__}: {exc}",
    )


def _kind(exc: BaseException) -> str | None:
    """The kind of failure ("no space left on device", "disk quota exceeded") or None, looking
    through the chain of causes and the tool output a ProvisionError keeps."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, ProvisionTimeout):
            return None
        if isinstance(current, OSError):
            if current.errno == errno.ENOSPC:
                return "no space left on device"
            if current.errno == errno.EDQUOT:
                return "disk quota exceeded"
        if isinstance(current, (OSError, ProvisionError)):
            text = f"{current}\n{getattr(current, 'output', '') or ''}"
            if _NO_SPACE.search(text):
                return "no space left on device"
            if _QUOTA.search(text):
                return "disk quota exceeded"
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _room(path: Path) -> tuple[int, int, int] | None:
    """(device, free bytes, total bytes) of the file system holding `path`."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
        return os.stat(probe).st_dev, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except OSError:
        return None


def _culprit_line(text: str) -> str:
    """The tool's own line about the failed write (it names the file)."""
    for line in text.splitlines():
        if _NO_SPACE.search(line) or _QUOTA.search(line):
            line = line.strip()
            return line if len(line) <= 600 else line[:300] + " ... " + line[-300:]
    return ""


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
