"""The store: where built environments live, and how they are published.

Layout under the root (`$BAYOU_HOME`, else the user cache dir + ``/bayou``)::

    envs/<hash>/              a published environment (its prefix)
    envs/<hash>/.bayou/record.json   what was asked, solved, installed; activation
    envs/<hash>/.bayou/used   its mtime is the env's "last used" time
    builds/<hash>-<random>/   builds in progress (never used as an env)
    trash/                    envs being deleted (renamed here first)
    locks/<hash>.lock         one cross-process lock per env hash
    locks/<hash>.use          shared-locked by every executor using the env (`hold`):
                              `remove` refuses and `gc` skips an env in use
    pkgs/conda/  pkgs/uv/     package caches shared by all envs (hard links;
                              $BAYOU_PKGS_DIR puts them elsewhere)
    logs/                     build logs and worker logs

Publishing is a single ``rename(builds/<hash>-x, envs/<hash>)`` done by the
holder of ``locks/<hash>.lock`` after the record has been written into the
build directory, so an env directory either has its record and is complete
or does not exist. A build killed at any moment leaves only a directory under
``builds/``; the next holder of the lock deletes it before building again.
Deletion mirrors publication: rename into ``trash/`` (atomic: readers see the
whole env or none), then remove.

Shared stores (``$BAYOU_STORE_PATH``) are further roots with this layout,
searched by `find` after this one and never written: see `shared_store`.
How the two locks of an env are taken: see `store_locks`.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EnvInUseError
from .shared_store import STORE_PATH_VAR, hold_read_only, same_path, shared_roots
from .shared_store import SharedStoreError as SharedStoreError  # re-exported: raised here
from .store_locks import EnvHold as EnvHold  # re-exported: `hold` returns one
from .store_locks import build_lock, no_holders, open_use_lock, shared_hold

RECORD_DIR = ".bayou"
RECORD_FILE = "record.json"


def default_root() -> Path:
    if os.environ.get("BAYOU_HOME"):
        return Path(os.environ["BAYOU_HOME"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "bayou"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "bayou" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bayou"


@dataclass(frozen=True)
class StoredEnv:
    """A published environment as `list()` reports it."""

    hash: str
    prefix: Path
    record: dict[str, Any]
    last_used: float
    shared: bool = False  # found in a shared store ($BAYOU_STORE_PATH), never modified

    @property
    def size(self) -> int:
        return int(self.record.get("size", 0))

    @property
    def store_root(self) -> Path:
        return self.prefix.parent.parent


class Store:
    """A store root; cheap to create, all state is on disk. `shared=True` opens
    it read-only, as a shared store (see `shared_store`)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        pkgs_dir: str | os.PathLike[str] | None = None,
        *,
        shared: bool = False,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.shared = shared
        # Package caches may be shared between stores ($BAYOU_PKGS_DIR); keep
        # them on the envs' file system so installs are hard links.
        pkgs = pkgs_dir or os.environ.get("BAYOU_PKGS_DIR")
        self.pkgs_dir = Path(pkgs).expanduser() if pkgs else self.root / "pkgs"

    # -- layout ---------------------------------------------------------------

    @property
    def envs_dir(self) -> Path:
        return self.root / "envs"

    @property
    def builds_dir(self) -> Path:
        return self.root / "builds"

    @property
    def conda_cache(self) -> Path:
        return self.pkgs_dir / "conda"

    @property
    def repodata_cache(self) -> Path:
        return self.pkgs_dir / "repodata"

    @property
    def uv_cache(self) -> Path:
        return self.pkgs_dir / "uv"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def state_dir(self) -> Path:
        """Private runtime state (sockets, keys): created 0700."""
        path = self.root / "state"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def env_dir(self, env_hash: str) -> Path:
        return self.envs_dir / env_hash

    def ensure(self) -> None:
        self._writable("create its directories")
        for path in (self.envs_dir, self.builds_dir, self.root / "locks", self.logs_dir):
            path.mkdir(parents=True, exist_ok=True)

    # -- reading ----------------------------------------------------------------

    def lookup(self, env_hash: str) -> dict[str, Any] | None:
        """The record of a published env, or None (never a partial env)."""
        try:
            with open(self.env_dir(env_hash) / RECORD_DIR / RECORD_FILE) as fh:
                record: dict[str, Any] = json.load(fh)
                return record
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            return None  # unreadable record: treated as absent, rebuilt under the lock

    def touch(self, env_hash: str) -> None:
        if self.shared:
            return  # last-used stamps are the primary store's business only
        marker = self.env_dir(env_hash) / RECORD_DIR / "used"
        with contextlib.suppress(OSError):
            marker.touch()

    def names(self, env_hash: str, record: dict[str, Any] | None = None) -> set[str]:
        """Every name this env was asked for by: the same spec may be built under one
        name and asked for under another later, and both should find it. `record`,
        when the caller has read it already, saves reading it again."""
        found = set()
        with contextlib.suppress(OSError):
            found = set((self.env_dir(env_hash) / RECORD_DIR / "names").read_text().split("\n"))
        if record is None:
            record = self.lookup(env_hash) or {}
        return {n for n in found | {record.get("name") or ""} if n}

    def add_name(
        self, env_hash: str, name: str | None, record: dict[str, Any] | None = None
    ) -> None:
        if self.shared or not name or name in self.names(env_hash, record):
            return
        names_file = self.env_dir(env_hash) / RECORD_DIR / "names"
        with contextlib.suppress(OSError), open(names_file, "a") as fh:
            fh.write(name + "\n")  # one short append: atomic on a local fs

    def last_used(self, env_hash: str) -> float:
        base = self.env_dir(env_hash) / RECORD_DIR
        for name in ("used", RECORD_FILE):
            with contextlib.suppress(OSError):
                return (base / name).stat().st_mtime
        return 0.0

    def list(self) -> list[StoredEnv]:
        """Published envs, most recently used first."""
        found: list[StoredEnv] = []
        if not self.envs_dir.is_dir():
            return found
        for child in self.envs_dir.iterdir():
            record = self.lookup(child.name)
            if record is not None and (not self.shared or self.in_place(child.name, record)):
                last_used = self.last_used(child.name)
                found.append(StoredEnv(child.name, child, record, last_used, self.shared))
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    # -- shared stores ----------------------------------------------------------------

    def shared_stores(self) -> builtins.list[Store]:
        """The `$BAYOU_STORE_PATH` stores searched after this one (none after a shared one)."""
        if self.shared:
            return []
        return [Store(r, shared=True) for r in shared_roots() if not same_path(r, self.root)]

    def find(self, env_hash: str) -> tuple[Store, dict[str, Any]] | None:
        """The store holding a published env, and its record: this store first,
        then the shared stores in order; None when none has it."""
        record = self.lookup(env_hash)
        if record is not None:
            return self, record
        for other in self.shared_stores():
            record = other.lookup(env_hash)
            if record is not None and other.in_place(env_hash, record):
                return other, record
        return None

    def in_place(self, env_hash: str, record: dict[str, Any]) -> bool:
        """Whether the env is where it was built (its record's prefix): only then
        can a shared store's env be used, its files name that prefix."""
        prefix = record.get("prefix")
        return prefix is None or same_path(prefix, self.env_dir(env_hash))

    def _writable(self, what: str) -> None:
        if self.shared:
            raise SharedStoreError(
                f"{self.root} is a shared store (${STORE_PATH_VAR}): bayou never writes there, "
                f"so it cannot {what}; its administrator can, with BAYOU_HOME={self.root}"
            )

    def resolve(self, ref: str) -> StoredEnv:
        """Find an env by hash, unique hash prefix, or name (see `pick`)."""
        return pick(self.list(), ref, self.envs_dir)

    # -- building and publishing -----------------------------------------------

    @contextlib.contextmanager
    def lock(self, env_hash: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the cross-process lock of one env (released even on SIGKILL)."""
        self._writable(f"lock {env_hash}")
        self.ensure()
        with build_lock(self.root / "locks" / f"{env_hash}.lock", env_hash, timeout):
            yield

    def hold(self, env_hash: str) -> EnvHold:
        """Mark the env as in use until the hold is released (or the process dies).

        A shared ``flock``: any number of executors, in any processes, hold
        it at once; `remove` takes it exclusively, so it never deletes an env
        under a running executor. Call `lookup` after holding: a removal that
        finished just before means the env must be provisioned again.

        In a shared store, or one this process may not write, the hold is a
        shared flock on the existing lock file opened read-only, or nothing."""
        if self.shared:
            return self._read_only_hold(env_hash)
        try:
            self.ensure()
            fd = open_use_lock(self._use_file(env_hash))
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            return self._read_only_hold(env_hash)
        return shared_hold(fd)

    def _read_only_hold(self, env_hash: str) -> EnvHold:
        return EnvHold(hold_read_only(self._use_file(env_hash)))

    def _use_file(self, env_hash: str) -> Path:
        return self.root / "locks" / f"{env_hash}.use"

    def new_build_dir(self, env_hash: str) -> Path:
        """A fresh directory to build into; call with the env's lock held."""
        self._writable("build an environment")
        self.discard_stale_builds(env_hash)
        path = self.builds_dir / f"{env_hash}-{secrets.token_hex(4)}"
        path.mkdir(parents=True)
        return path

    def discard_stale_builds(self, env_hash: str) -> None:
        """Remove what killed builds of this env left (lock held: none is live)."""
        if self.builds_dir.is_dir():
            for stale in self.builds_dir.glob(f"{env_hash}-*"):
                self._delete(stale)
        target = self.env_dir(env_hash)
        if target.exists() and self.lookup(env_hash) is None:
            # A directory without a record was never published by bayou.
            self._delete(target)
        self.sweep_trash()

    def sweep_trash(self) -> None:
        """Finish deletions that a killed process left half done in ``trash/``.

        Nothing under ``trash/`` is ever used, so removing it is always safe,
        even while another process is removing the same tree."""
        if self.shared:
            return
        trash = self.root / "trash"
        if trash.is_dir():
            for leftover in trash.iterdir():
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        leftover.unlink()

    def publish(self, build_dir: Path, env_hash: str, record: dict[str, Any]) -> None:
        """Write the record, then make the env visible in one rename. The env's
        use-lock file is made too: shared read-only, it still takes holds."""
        self._writable("publish an environment")
        os.close(open_use_lock(self._use_file(env_hash)))
        meta = build_dir / RECORD_DIR
        meta.mkdir(exist_ok=True)
        tmp = meta / (RECORD_FILE + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, meta / RECORD_FILE)
        (meta / "used").touch()
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        os.rename(build_dir, self.env_dir(env_hash))
        _fsync_dir(self.envs_dir)

    def abandon(self, build_dir: Path) -> None:
        self._delete(build_dir)

    # -- removal ------------------------------------------------------------------

    def remove(
        self, env_hash: str, *, unused_since: float | None = None, force: bool = False
    ) -> bool:
        """Delete one env; True if it existed (and was deleted).

        The env leaves ``envs/`` in one rename under its lock, so a reader
        sees the whole env or none. With `unused_since` (what `gc` saw), an
        env used after that time is kept: someone picked it up meanwhile.
        An env a running executor holds (`hold`) raises `EnvInUseError`,
        unless `force`."""
        with self.lock(env_hash):
            target = self.env_dir(env_hash)
            if not target.exists():
                return False
            if unused_since is not None and self.last_used(env_hash) > unused_since:
                return False
            with no_holders(self._use_file(env_hash), env_hash, force):
                self._delete(target)
            return True

    def gc(
        self,
        max_age: float | None = None,
        max_size: int | None = None,
        *,
        dry_run: bool = False,
    ) -> builtins.list[StoredEnv]:
        """Evict envs unused for `max_age` seconds, then the least recently
        used until the envs fit in `max_size` bytes. Returns what was evicted.
        Only this store's envs: the shared stores are never collected."""
        self._writable("collect garbage")
        envs = self.list()  # most recently used first
        now = time.time()
        evict: list[StoredEnv] = []
        keep: list[StoredEnv] = []
        for env in envs:
            if max_age is not None and now - env.last_used > max_age:
                evict.append(env)
            else:
                keep.append(env)
        if max_size is not None:
            total = sum(e.size for e in keep)
            while keep and total > max_size:
                victim = keep.pop()  # least recently used
                total -= victim.size
                evict.append(victim)
        if dry_run:
            return evict
        self.sweep_trash()
        removed = []
        for env in evict:
            try:
                if self.remove(env.hash, unused_since=env.last_used):
                    removed.append(env)
            except EnvInUseError:
                pass  # a running executor uses it: kept, whatever its age
        return removed

    @classmethod
    def containing(cls, prefix: str | os.PathLike[str]) -> Store | None:
        """The store a published env's prefix lives in, or None (not one of ours);
        opened as shared when it is one of `$BAYOU_STORE_PATH`'s (and not the
        primary store)."""
        prefix = Path(prefix)
        if prefix.parent.name != "envs" or not (prefix / RECORD_DIR / RECORD_FILE).is_file():
            return None
        root = prefix.parent.parent
        shared = not same_path(root, default_root()) and any(
            same_path(root, r) for r in shared_roots()
        )
        return cls(root, shared=shared)

    def _delete(self, path: Path) -> None:
        """Rename out of sight first, so nobody sees a half-deleted tree."""
        trash = self.root / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        moved = trash / f"{path.name}-{secrets.token_hex(4)}"
        try:
            os.rename(path, moved)
        except FileNotFoundError:
            return
        shutil.rmtree(moved, ignore_errors=True)


def pick(envs: list[StoredEnv], ref: str, where: object) -> StoredEnv:
    """The env `ref` names among `envs`: its hash, a unique hash prefix, or one
    of its names; the first of equal hashes (stores are searched in order)."""
    exact = [e for e in envs if e.hash == ref]
    if exact:
        return exact[0]
    matches = [e for e in envs if e.hash.startswith(ref)] or [
        e for e in envs if ref in Store(e.store_root, shared=e.shared).names(e.hash, e.record)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise KeyError(f"no environment matches {ref!r} in {where}")
    names = ", ".join(e.hash[:12] for e in matches)
    raise KeyError(f"{ref!r} is ambiguous: it matches {names}")


def tree_size(path: Path) -> int:
    """Bytes used by a tree, each hard-linked inode counted once."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
