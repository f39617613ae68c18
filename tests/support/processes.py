"""Whether a test's processes are still running."""

from __future__ import annotations

import psutil


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a dead child nobody reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
