"""Task functions the cluster scenario sends to the workers.

They live in a module (importable on the workers through PYTHONPATH) and
use only the standard library and `packaging`, whose version tells which
environment ran them.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def probe(tag: str) -> dict:
    """Where this call ran: prefix, packaging version, process id."""
    try:
        import packaging

        version = packaging.__version__
    except ImportError:
        version = None
    return {"tag": tag, "prefix": sys.prefix, "packaging": version, "pid": os.getpid()}


def parse(text: str) -> dict:
    """packaging 21.3 accepts any string (LegacyVersion); 24.1 rejects non-PEP 440."""
    import packaging.version

    try:
        parsed = repr(packaging.version.parse(text))
    except packaging.version.InvalidVersion:
        parsed = "InvalidVersion"
    return {**probe("parse"), "parsed": parsed}


def combine(old: dict, new: dict) -> dict:
    """A plain task (no env) that receives results of both envs."""
    return {"old": old, "new": new, "plain": probe("combine")}


def crash_once(marker: str) -> dict:
    """SIGKILL the process running this on the first attempt; succeed on the next."""
    path = Path(marker)
    attempts = int(path.read_text()) if path.exists() else 0
    path.write_text(str(attempts + 1))
    if attempts == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return {**probe("crash_once"), "attempt": attempts + 1}


def always_crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
