"""The store's cross-process locks: one writer per env, and the executors running it.

Two lock files per env hash, under the store's ``locks/``, both plain
``flock`` locks, so the kernel lets go of them when their holder dies, even
by SIGKILL, and no stale lock ever needs breaking:

    <hash>.lock  exclusive, waited for (`build_lock`): whoever builds, publishes
                 or removes the env; a second builder waits, then finds it published
    <hash>.use   shared (`shared_hold`): every executor running the env, for as
                 long as it runs (an `EnvHold`)
                 exclusive, not waited for (`no_holders`): a removal, which
                 refuses with `EnvInUseError` while any executor holds it

`Store` decides when each is taken and where the files are; this module only
takes them, so the flock details live in one place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import EnvInUseError


class EnvHold:
    """An executor's claim on an env (`Store.hold`); `release` ends it. `fd` is
    None where no hold could be placed (see `shared_store.hold_read_only`)."""

    def __init__(self, fd: int | None) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    __del__ = release  # an executor that failed to start lets go too


@contextlib.contextmanager
def build_lock(lock_file: Path, env_hash: str, timeout: float | None) -> Iterator[None]:
    """Hold `lock_file` exclusively, waiting at most `timeout` seconds for it."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for the build lock of {env_hash}")
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def open_use_lock(use_file: Path) -> int:
    """The env's use-lock file, opened (and made, when missing) for a flock."""
    return os.open(use_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def shared_hold(fd: int) -> EnvHold:
    """Share the use lock open on `fd`; waits only while a removal is deciding."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return EnvHold(fd)


@contextlib.contextmanager
def no_holders(use_file: Path, env_hash: str, force: bool) -> Iterator[None]:
    """Hold the env's use lock exclusively, or raise `EnvInUseError` (unless `force`)."""
    fd = open_use_lock(use_file)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if not force:
                raise EnvInUseError(
                    f"environment {env_hash} is in use by a running executor; shut it "
                    f"down first (or remove with force=True / --force)"
                ) from None
        yield
    finally:
        os.close(fd)
