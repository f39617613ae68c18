"""Shared stores: further store roots, named by ``$BAYOU_STORE_PATH``, that bayou only reads.

A site can build envs once into a store on a shared file system and let every
user run them (``BAYOU_STORE_PATH=/shared/bayou``, ``os.pathsep``-separated
like ``PATH``). `Store.find` searches the primary store (``$BAYOU_HOME``)
first, then these in order, for a published env; a miss is built in the
primary store. Such a store is often mounted read-only, and even when it is
writable it belongs to someone else, so a `Store` opened ``shared`` never
writes: no build locks, no last-used stamps, no names, no builds, no gc, no
trash sweep; each of those raises `SharedStoreError` or does nothing.

* An executor's use-hold (`Store.hold`) on a shared env is a shared ``flock``
  on the env's ``locks/<hash>.use``, opened read-only (flock needs no write
  access; `Store.publish` creates that file for every env). An admin's
  ``bayou env remove``/``gc`` on that store (as its ``$BAYOU_HOME``) then sees
  the users' executors, where the file system shares flocks between
  machines. When the file cannot be opened there is no hold, and nothing to
  protect against: bayou never removes from a shared store.
* An env's files name its prefix, so a shared env is used only at the path
  its record says it was built at (`Store.in_place`): mount the store where
  the admin built it. An env elsewhere is skipped and built in the primary
  store instead; ``bayou doctor`` lists such envs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import BayouError

STORE_PATH_VAR = "BAYOU_STORE_PATH"


class SharedStoreError(BayouError, PermissionError):
    """A change asked of a shared store (`$BAYOU_STORE_PATH`): bayou never writes there."""


def shared_roots() -> list[Path]:
    """The shared stores named by ``$BAYOU_STORE_PATH``, in order, without repeats."""
    roots: list[Path] = []
    for item in os.environ.get(STORE_PATH_VAR, "").split(os.pathsep):
        if item.strip():
            root = Path(item.strip()).expanduser()
            if root not in roots:
                roots.append(root)
    return roots


def same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def hold_read_only(lock_file: Path) -> int | None:
    """A shared flock on an existing lock file opened read-only; its fd, or None
    when the file is missing or unreadable (the hold is then skipped)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an admin's removal decides
    except OSError:
        os.close(fd)
        return None
    return fd
