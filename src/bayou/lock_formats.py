"""Every lock format behind one door: for a lock file, and for a lock kept in a record.

A locked `Env` carries its lock (`LockedSpec`), and three moments need the
reader that fits the lock's format:

    a lock file ── `read_lock_file` ──▶ LockedSpec
    an env's record (``Env.to_dict()["lock"]``) ── `locked_from_dict` ──▶ LockedSpec, as read
    ``Env.replace(...)`` of a locked env ── `replaced_lock` ──▶ the same lock, or a
        pylock.toml's lock for another Python

The readers (`lockfiles` for conda-lock.yml and what they all share,
`pixilock`, `pylock`) know neither each other nor `Env`; this module alone
knows them all, and `specfiles` and `env` ask it, so the data flows one way:
lock → reader → `LockedSpec` → `Env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SpecError
from .lockfiles import LockedSpec, conda_lock_spec, read_conda_lock
from .pixilock import pixi_spec, read_pixi_lock
from .pylock import pylock_spec, read_pylock
from .spec_entries import normalize_python

LOCK_KINDS = ("pixi.lock", "conda-lock.yml", "pylock.toml")


def read_lock_file(
    path: Path, kind: str, environment: str | None, python: str | None
) -> LockedSpec:
    """Read a lock of one of `LOCK_KINDS`: a pixi.lock's `environment`, a
    pylock.toml for `python` (see `specfiles.spec_file_kind` for the kind)."""
    if kind == "pixi.lock":
        return read_pixi_lock(path, environment)
    if kind == "conda-lock.yml":
        return read_conda_lock(path)
    return read_pylock(path, python)


def lock_label(path: Path, lock: LockedSpec) -> str | None:
    """The name of an env read from a lock file: the lock's directory, with the
    environment of a pixi.lock when it is not the default one."""
    label = path.parent.name or None
    if label and lock.environment not in (None, "default"):
        label += f"-{lock.environment}"
    return label


def locked_from_dict(data: Mapping[str, Any]) -> LockedSpec:
    """Rebuild from `LockedSpec.to_dict` (the document was validated when it was read)."""
    fmt, doc = data["format"], data["document"]
    if fmt == "pylock.toml":
        return pylock_spec(doc, None, data["python"], data["platform"])
    if fmt == "conda-lock.yml":
        return conda_lock_spec(doc, None, data["platform"], Path("/"))
    return pixi_spec(doc, None, data["environment"], data["platform"], Path("/"))


def replaced_lock(
    lock: LockedSpec, changes: Mapping[str, Any], *, source: str | None, python: str | None
) -> LockedSpec:
    """The lock of a locked env after ``Env.replace(**changes)``: the lock fixes the
    packages, so only the label, the variables and (pylock.toml) the Python it is
    installed for change. `python` is the env's Python before the change."""
    allowed = {"name", "env_vars", "backend", "python"}
    if set(changes) - allowed:
        raise SpecError(
            "a locked env installs exactly what its lock pins; only name, env_vars "
            "and (pylock.toml) python can change",
            file=source,
            entry=", ".join(sorted(set(changes) - allowed)),
        )
    if changes.get("backend") not in (None, "rattler"):
        raise SpecError(
            "a locked env is installed by py-rattler, without a solve",
            file=source,
            entry=str(changes["backend"]),
        )
    if "python" not in changes or changes["python"] == python:
        return lock
    if lock.format != "pylock.toml":
        raise SpecError("the lock pins its own python", file=source, entry="python")
    wanted = normalize_python(changes["python"], file=source)
    return pylock_spec(lock.document, source, wanted, lock.platform)
