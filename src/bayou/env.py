"""`Env`: an immutable, validated description of an environment.

An `Env` is only a description; nothing is built until `bayou.provision` (or
an executor) asks for it. Its identity is `Env.hash`, a digest of a canonical
form so that the same environment written two ways shares one directory on
disk:

    Env(...) / Env.from_file(...)
        │ validate every entry (SpecError names file, line and entry; see
        ▼ `bayou.spec_entries`)
    canonical form ── json (sorted keys) ── sha256 ──▶ Env.hash

What is in the hash: the kind of env, the Python version, conda specs
(normalised: lower-case names, whitespace removed, sorted), pip requirements
(normalised with `packaging`: canonical names, sorted extras and specifiers,
sorted), pip index options, channels (in order: conda's channel priority
depends on it) and the platform (`linux-64`, ...). What is not: `name` (a
label), `env_vars` (they change no file on disk, they are applied when a
process starts), `backend` (the tool that builds the conda part changes how
the env is built, not what is in it; the record says which tool built it) and
the source file's path.

A locked env (`Env.from_file` of a pixi.lock, conda-lock.yml or pylock.toml,
kind ``"lock"``) is different: its identity is the digest of what the lock
installs on this platform (see `bayou.lockfiles`), with the Python version a
pylock.toml is installed for.

The file readers (`specfiles`, `pyproject`, `lock_formats`) return the
constructor's arguments or a lock, never an `Env`: this module is the one
that makes Envs, and nothing it imports imports it back.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from .errors import SpecError
from .lock_formats import lock_label, locked_from_dict, replaced_lock
from .lockfiles import LockedSpec
from .spec_entries import BACKENDS as BACKENDS  # importable from bayou.env too, as before
from .spec_entries import DEFAULT_CHANNELS as DEFAULT_CHANNELS
from .spec_entries import EnvArgs, canonical_spec, valid_env_vars
from .spec_entries import caller_python_version as caller_python_version
from .spec_entries import conda_platform as conda_platform
from .spec_entries import conda_spec_name as conda_spec_name
from .spec_entries import normalize_conda_spec as normalize_conda_spec
from .spec_entries import normalize_pip_requirement as normalize_pip_requirement
from .spec_entries import normalize_python as normalize_python
from .spec_entries import pip_requirement_name as pip_requirement_name

_HASH_VERSION = 1  # bump when the canonical form changes meaning


class Env:
    """An environment description; equal descriptions have equal `hash`.

    Build one with the constructor (inline specs), `Env.from_file` (an
    environment.yml, requirements.txt, pixi.toml, pyproject.toml or a lock:
    pixi.lock, conda-lock.yml, pylock.toml), `Env.from_script` (PEP 723),
    `Env.existing` (an env made elsewhere) or `Env.current` (the caller's
    interpreter).
    """

    __slots__ = (
        "_kind",
        "_python",
        "_conda",
        "_pip",
        "_pip_options",
        "_channels",
        "_env_vars",
        "_name",
        "_path",
        "_source",
        "_backend",
        "_lock",
        "_hash",
    )
    _kind: str
    _python: str | None
    _conda: tuple[str, ...]
    _pip: tuple[str, ...]
    _pip_options: tuple[str, ...]
    _channels: tuple[str, ...]
    _env_vars: MappingProxyType[str, str]
    _name: str | None
    _path: Path | None
    _source: str | None
    _backend: str | None
    _lock: LockedSpec | None
    _hash: str

    def __init__(
        self,
        python: str | None = None,
        conda: Iterable[str] = (),
        pip: Iterable[str] = (),
        channels: Iterable[str] = DEFAULT_CHANNELS,
        env_vars: Mapping[str, str] | None = None,
        name: str | None = None,
        *,
        pip_options: Iterable[str] = (),
        backend: str | None = None,
        _source: str | None = None,
        _lines: Mapping[str, int | None] | None = None,
    ) -> None:
        spec = canonical_spec(
            python, conda, pip, channels, env_vars, pip_options, backend, _source, _lines or {}
        )
        self._set(
            _kind="spec",
            _python=spec.python,
            _conda=spec.conda,
            _pip=spec.pip,
            _pip_options=spec.pip_options,
            _channels=spec.channels,
            _env_vars=spec.env_vars,
            _name=name,
            _path=None,
            _source=_source,
            _backend=backend,
            _lock=None,
        )
        self._set(_hash=self._compute_hash())

    # -- other ways to make one ------------------------------------------------

    @classmethod
    def from_file(
        cls, path: str | Path, *, environment: str | None = None, python: str | None = None
    ) -> Env:
        """Read an environment file: environment.yml, requirements.txt, pixi.toml,
        pyproject.toml, a script with PEP 723 metadata, or a lock (pixi.lock,
        conda-lock.yml, pylock.toml; installed exactly as locked).

        `environment` picks one of a pixi.lock's environments (default
        ``"default"``); `python` is the X.Y a pylock.toml is installed for
        (default: the caller's, when the lock allows it)."""
        from .specfiles import read_spec_file  # the readers load when a file is read

        file = Path(path)
        found = read_spec_file(file, environment=environment, python=python)
        if isinstance(found, LockedSpec):
            return cls._from_lock(found, name=lock_label(file, found), source=str(file))
        return cls._from_args(found)

    @classmethod
    def from_script(cls, path: str | Path) -> Env:
        """The env a script's PEP 723 metadata asks for (``# /// script`` block:
        ``requires-python``, ``dependencies``, and conda packages from a
        ``[tool.bayou]`` or ``[tool.pixi]`` table)."""
        from .pyproject import read_script

        return cls._from_args(read_script(Path(path)))

    @classmethod
    def _from_args(cls, args: EnvArgs) -> Env:
        """The env a spec file asks for (its entries were checked as it was read)."""
        return cls(
            python=args.python,
            conda=args.conda,
            pip=args.pip,
            channels=args.channels,
            env_vars=args.env_vars,
            name=args.name,
            pip_options=args.pip_options,
            _source=args.source,
            _lines=args.lines,
        )

    @classmethod
    def _from_lock(
        cls,
        lock: LockedSpec,
        *,
        name: str | None = None,
        env_vars: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> Env:
        """An env installed exactly as `lock` (a `lockfiles.LockedSpec`) pins it."""
        env = cls.__new__(cls)
        env._set(
            _kind="lock",
            _python=lock.python,
            _conda=tuple(p.pin for p in lock.conda),
            _pip=tuple(p.pin for p in lock.pypi),
            _pip_options=(),
            _channels=tuple(lock.channels),
            _env_vars=MappingProxyType(valid_env_vars(env_vars, source)),
            _name=name,
            _path=None,
            _source=source,
            _backend="rattler" if lock.conda else None,
            _lock=lock,
        )
        env._set(_hash=env._compute_hash())
        return env

    @classmethod
    def existing(cls, path: str | Path, env_vars: Mapping[str, str] | None = None) -> Env:
        """An environment made elsewhere: its prefix, or its python executable."""
        from .interpreters import python_in_prefix

        given = Path(path).expanduser()
        if not given.exists():
            raise SpecError("no such environment or python executable", entry=str(path))
        if given.is_dir():
            python = python_in_prefix(given)
            if python is None:
                raise SpecError("no python executable in this prefix", entry=str(given))
        else:
            python = given
        env = cls.__new__(cls)
        env._set(
            _kind="existing",
            # Keep the link the user gave (a venv's bin/python is a symlink to
            # the base interpreter; resolving it would lose the venv).
            _path=Path(python).absolute(),
            _python=None,
            _conda=(),
            _pip=(),
            _pip_options=(),
            _channels=(),
            _env_vars=MappingProxyType({str(k): str(v) for k, v in (env_vars or {}).items()}),
            _name=given.name,
            _source=None,
            _backend=None,
            _lock=None,
        )
        env._set(_hash=env._compute_hash())
        return env

    @classmethod
    def current(cls, env_vars: Mapping[str, str] | None = None) -> Env:
        """The caller's own interpreter: nothing is built."""
        env = cls.existing(sys.executable, env_vars=env_vars)
        env._set(_kind="current", _name="current")
        env._set(_hash=env._compute_hash())
        return env

    # -- read-only view --------------------------------------------------------

    @property
    def kind(self) -> str:
        """'spec', 'lock', 'existing' or 'current'."""
        return self._kind

    @property
    def python(self) -> str | None:
        """Requested Python version, or None."""
        return self._python

    @property
    def conda(self) -> tuple[str, ...]:
        """Canonical conda specs, sorted."""
        return self._conda

    @property
    def pip(self) -> tuple[str, ...]:
        """Canonical pip requirements, sorted."""
        return self._pip

    @property
    def pip_options(self) -> tuple[str, ...]:
        return self._pip_options

    @property
    def channels(self) -> tuple[str, ...]:
        return self._channels

    @property
    def env_vars(self) -> Mapping[str, str]:
        return self._env_vars

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def path(self) -> Path | None:
        """The python of an existing env."""
        return self._path

    @property
    def source(self) -> str | None:
        """The file this spec was read from."""
        return self._source

    @property
    def backend(self) -> str | None:
        """Tool for the conda part ('micromamba', 'pixi', 'conda', 'rattler'), or None."""
        return self._backend

    @property
    def hash(self) -> str:
        """Content identity (hex, 16 chars)."""
        return self._hash

    @property
    def lock(self) -> LockedSpec | None:
        """What a lock file pins (`bayou.lockfiles.LockedSpec`), or None."""
        return self._lock

    @property
    def is_conda(self) -> bool:
        return bool(self._conda)

    def canonical(self) -> dict[str, Any]:
        """The data the hash is computed from (see the module docstring)."""
        if self._kind == "lock":
            lock = cast(LockedSpec, self._lock)
            return {
                "v": _HASH_VERSION,
                "kind": "lock",
                "format": lock.format,
                "lock_digest": lock.digest,
                "python": self._python,
                "platform": lock.platform,
            }
        if self._kind != "spec":
            return {"v": _HASH_VERSION, "kind": self._kind, "python": str(self._path)}
        return {
            "v": _HASH_VERSION,
            "kind": "spec",
            "python": self._python,
            "conda": list(self._conda),
            "pip": list(self._pip),
            "pip_options": list(self._pip_options),
            "channels": list(self._channels),
            "platform": conda_platform(),
        }

    def _compute_hash(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to recreate this Env (stored in the env's record)."""
        data = self.canonical()
        data.update(name=self._name, env_vars=dict(self._env_vars), source=self._source)
        if self._kind == "lock":
            # The pins are for people and `env export`; the lock is what rebuilds it.
            data.update(
                lock=cast(LockedSpec, self._lock).to_dict(),
                conda=list(self._conda),
                pip=list(self._pip),
                channels=list(self._channels),
            )
            return data
        if self._backend is not None:
            data["backend"] = self._backend
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Env:
        if data.get("kind") == "current":
            return cls.current(env_vars=data.get("env_vars"))
        if data.get("kind") == "existing":
            return cls.existing(data["python"], env_vars=data.get("env_vars"))
        if data.get("kind") == "lock":
            return cls._from_lock(
                locked_from_dict(data["lock"]),
                name=data.get("name"),
                env_vars=data.get("env_vars"),
                source=data.get("source"),
            )
        return cls(
            python=data.get("python"),
            conda=data.get("conda", ()),
            pip=data.get("pip", ()),
            channels=data.get("channels") or DEFAULT_CHANNELS,
            env_vars=data.get("env_vars"),
            name=data.get("name"),
            pip_options=data.get("pip_options", ()),
            backend=data.get("backend"),
        )

    def replace(self, **changes: Any) -> Env:
        """A copy with some fields changed (an Env itself never changes)."""
        if self._kind == "lock":
            lock = cast(LockedSpec, self._lock)
            return Env._from_lock(
                replaced_lock(lock, changes, source=self._source, python=self._python),
                name=changes.get("name", self._name),
                env_vars=changes.get("env_vars", dict(self._env_vars)),
                source=self._source,
            )
        if self._kind != "spec":
            raise TypeError("replace() applies to spec environments only")
        fields: dict[str, Any] = {
            "python": self._python,
            "conda": [s for s in self._conda if not s.startswith("python ")]
            if "python" in changes
            else self._conda,
            "pip": self._pip,
            "channels": self._channels or DEFAULT_CHANNELS,
            "env_vars": dict(self._env_vars),
            "name": self._name,
            "pip_options": self._pip_options,
            "backend": self._backend,
        }
        fields.update(changes)
        return Env(**fields)

    # -- value semantics -------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Env):
            return NotImplemented
        return (
            self._hash == other._hash
            and dict(self._env_vars) == dict(other._env_vars)
            and self._backend == other._backend
        )

    def __hash__(self) -> int:
        return hash(self._hash)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Env is immutable; use Env.replace(...)")

    def __reduce__(self) -> tuple[Callable[[Mapping[str, Any]], Env], tuple[dict[str, Any]]]:
        # Rebuilt through the validating constructor from its description: a pickled
        # Env (to a Dask worker, a persistent pool) is the same spec there, hashed for
        # that machine's platform (the same hash on the same platform).
        return (Env.from_dict, (self.to_dict(),))

    def _set(self, **fields: Any) -> None:
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    def __repr__(self) -> str:
        if self._kind == "lock":
            lock = cast(LockedSpec, self._lock)
            which = lock.environment
            more = f", environment={which!r}" if which not in (None, "default") else ""
            return f"Env.from_file({self._source or lock.format!r}{more}) #{self._hash[:8]}"
        if self._kind != "spec":
            return f"Env.{self._kind}({str(self._path)!r})"
        parts = []
        if self._name:
            parts.append(f"name={self._name!r}")
        if self._python:
            parts.append(f"python={self._python!r}")
        if self._conda:
            parts.append(f"conda={list(self._conda)!r}")
        if self._pip:
            parts.append(f"pip={list(self._pip)!r}")
        if self._backend:
            parts.append(f"backend={self._backend!r}")
        return f"Env({', '.join(parts)}) #{self._hash[:8]}"

    def describe(self) -> str:
        """A short human label: name, or the first packages."""
        if self._name:
            return self._name
        if self._kind == "lock":
            lock = cast(LockedSpec, self._lock)
            return f"{lock.format} ({len(self._conda) + len(self._pip)} packages)"
        if self._kind != "spec":
            return str(self._path)
        pkgs = [s for s in self._conda if not s.startswith("python")] + list(self._pip)
        label = ", ".join(pkgs[:3]) + (", ..." if len(pkgs) > 3 else "")
        return label or f"python {self._python}"
