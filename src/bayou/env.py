"""`Env`: an immutable, validated description of an environment.

An `Env` is only a description; nothing is built until `bayou.provision` (or
an executor) asks for it. Its identity is `Env.hash`, a digest of a canonical
form so that the same environment written two ways shares one directory on
disk:

    Env(...) / Env.from_file(...)
        │ validate every entry (SpecError names file, line and entry)
        ▼
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
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .errors import SpecError

if TYPE_CHECKING:
    from .lockfiles import LockedSpec

DEFAULT_CHANNELS = ("conda-forge",)
# Tools that can build the conda part (see bayou.provision.external).
BACKENDS = ("rattler", "micromamba", "pixi", "conda")
_HASH_VERSION = 1  # bump when the canonical form changes meaning

# A conda match spec as users write it: optional `channel::`, a package name,
# then an optional version/build part (`=1.2`, `>=1,<2`, ` 1.2.* py_0`, `[build=...]`).
_CONDA_NAME = re.compile(
    r"^(?:(?P<channel>[A-Za-z0-9_.\-:/]+)::)?(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)"
)
_CONDA_REST = re.compile(r"^[A-Za-z0-9_.*<>=!,|~+\-\[\]'\" ]*$")
_PYTHON_VERSION = re.compile(r"^(3)\.(\d{1,2})(?:\.(\d{1,3}))?$")
_PYTHON_CONDA_SIMPLE = re.compile(r"^(?:=?=?|\s*)(3\.\d{1,2}(?:\.\d{1,3})?)(?:\.\*)?$")
_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PIP_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "--pre")


def conda_platform() -> str:
    """The conda subdir of this machine, e.g. `linux-64` or `osx-arm64`."""
    system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(
        _platform.system(), _platform.system().lower()
    )
    machine = _platform.machine().lower()
    arch = {
        "x86_64": "64",
        "amd64": "64",
        "aarch64": "aarch64",
        "arm64": "arm64",
        "ppc64le": "ppc64le",
    }.get(machine, machine)
    if system == "linux" and arch == "arm64":
        arch = "aarch64"
    if system == "osx" and arch == "aarch64":
        arch = "arm64"
    return f"{system}-{arch}"


def caller_python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def normalize_python(value: str, *, file: str | None = None, line: int | None = None) -> str:
    text = str(value).strip()
    if not _PYTHON_VERSION.match(text):
        raise SpecError(
            "python must be a version like '3.12' or '3.12.1'", file=file, line=line, entry=text
        )
    return text


def normalize_conda_spec(spec: str, *, file: str | None = None, line: int | None = None) -> str:
    """Validate a conda match spec and return its canonical text."""
    text = str(spec).strip()
    match = _CONDA_NAME.match(text)
    rest = text[match.end() :] if match else ""
    if not text or not match or not _CONDA_REST.match(rest):
        raise SpecError("not a valid conda package spec", file=file, line=line, entry=text)
    channel = match.group("channel")
    name = match.group("name").lower()
    rest = re.sub(r"\s+", " ", rest).strip()
    if rest and rest[0] not in "=<>!~[":
        rest = " " + rest  # "numpy 1.2.*": the version is separated by a space
    # Whitespace around operators carries no meaning: `>= 1.2` is `>=1.2`.
    rest = re.sub(r"\s*([=<>!~,|])\s*", r"\1", rest)
    return f"{channel + '::' if channel else ''}{name}{rest}"


def conda_spec_name(spec: str) -> str:
    match = _CONDA_NAME.match(spec)
    assert match, spec
    return match.group("name").lower()


def normalize_pip_requirement(
    req: str, *, file: str | None = None, line: int | None = None
) -> str:
    """Validate a PEP 508 requirement and return its canonical text."""
    text = str(req).strip()
    try:
        parsed = Requirement(text)
    except InvalidRequirement as exc:
        raise SpecError(f"not a valid pip requirement: {exc}", file=file, line=line, entry=text)
    out: str = canonicalize_name(parsed.name)
    if parsed.extras:
        out += "[" + ",".join(sorted(canonicalize_name(e) for e in parsed.extras)) + "]"
    if parsed.url:
        out += f" @ {parsed.url}"
    else:
        out += ",".join(sorted(str(s) for s in parsed.specifier))
    if parsed.marker is not None:
        out += f"; {parsed.marker}"
    return out


def pip_requirement_name(req: str) -> str:
    return canonicalize_name(Requirement(req).name)


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
        lines = dict(_lines or {})
        if isinstance(conda, str) or isinstance(pip, str):
            raise SpecError("conda= and pip= take a list of specs, not a single string")
        conda_specs: list[str] = []
        python_from_conda: str | None = None
        for raw in conda:
            spec = normalize_conda_spec(raw, file=_source, line=lines.get(str(raw)))
            if conda_spec_name(spec) == "python":
                python_from_conda = _python_from_conda_spec(spec)
            conda_specs.append(spec)
        if python is not None:
            python = normalize_python(python, file=_source)
            if python_from_conda and python_from_conda != python:
                raise SpecError(
                    f"python={python!r} contradicts the conda spec for python",
                    file=_source,
                    entry=next(s for s in conda_specs if conda_spec_name(s) == "python"),
                )
        python = python or python_from_conda
        if conda_specs and not any(conda_spec_name(s) == "python" for s in conda_specs):
            # Every bayou env runs Python workers: a conda env always gets one. The
            # version is recorded as if asked for, so to_dict/from_dict round-trips.
            python = python or caller_python_version()
            conda_specs.append(f"python {python}.*")
        pip_reqs = [
            normalize_pip_requirement(r, file=_source, line=lines.get(str(r))) for r in pip
        ]
        options = [_normalize_pip_option(o, _source) for o in pip_options]
        chans = [_normalize_channel(c, _source) for c in channels]
        if conda_specs and not chans:
            raise SpecError("a conda environment needs at least one channel", file=_source)
        variables = _valid_env_vars(env_vars, _source)
        if backend is not None and backend not in BACKENDS:
            raise SpecError(
                f"backend must be one of {', '.join(BACKENDS)} (or None: py-rattler, "
                "unless $BAYOU_BACKEND says otherwise)",
                file=_source,
                entry=str(backend),
            )

        self._set(
            _kind="spec",
            _python=python or (None if conda_specs else caller_python_version()),
            _conda=tuple(sorted(set(conda_specs))),
            _pip=tuple(sorted(set(pip_reqs))),
            _pip_options=tuple(options),
            _channels=tuple(dict.fromkeys(chans)) if conda_specs else (),
            _env_vars=MappingProxyType(variables),
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
        from .specfiles import read_spec_file

        return read_spec_file(Path(path), environment=environment, python=python)

    @classmethod
    def from_script(cls, path: str | Path) -> Env:
        """The env a script's PEP 723 metadata asks for (``# /// script`` block:
        ``requires-python``, ``dependencies``, and conda packages from a
        ``[tool.bayou]`` or ``[tool.pixi]`` table)."""
        from .pyproject import read_script

        return read_script(Path(path))

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
            _env_vars=MappingProxyType(_valid_env_vars(env_vars, source)),
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
            lock = cast("LockedSpec", self._lock)
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
                lock=cast("LockedSpec", self._lock).to_dict(),
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
            from .lockfiles import LockedSpec

            return cls._from_lock(
                LockedSpec.from_dict(data["lock"]),
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
            from .lockfiles import replace_locked

            return replace_locked(self, changes)
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
            lock = cast("LockedSpec", self._lock)
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
            lock = cast("LockedSpec", self._lock)
            return f"{lock.format} ({len(self._conda) + len(self._pip)} packages)"
        if self._kind != "spec":
            return str(self._path)
        pkgs = [s for s in self._conda if not s.startswith("python")] + list(self._pip)
        label = ", ".join(pkgs[:3]) + (", ..." if len(pkgs) > 3 else "")
        return label or f"python {self._python}"


def _valid_env_vars(env_vars: Mapping[str, str] | None, source: str | None) -> dict[str, str]:
    variables = {}
    for key, value in (env_vars or {}).items():
        if not _ENV_VAR_NAME.match(str(key)):
            raise SpecError("not a valid environment variable name", file=source, entry=key)
        variables[str(key)] = str(value)
    return variables


def _python_from_conda_spec(spec: str) -> str | None:
    rest = spec[len("python") :].strip()
    match = _PYTHON_CONDA_SIMPLE.match(rest)
    return match.group(1) if match else None


def _normalize_channel(channel: str, source: str | None) -> str:
    text = str(channel).strip().rstrip("/")
    if not text or any(c.isspace() for c in text):
        raise SpecError("not a valid channel", file=source, entry=str(channel))
    if "://" not in text and not text.startswith("/"):
        text = text.lower()
    return text


def _normalize_pip_option(option: str, source: str | None) -> str:
    text = " ".join(str(option).split())
    flag = text.split(" ", 1)[0].split("=", 1)[0]
    if flag not in _PIP_OPTIONS:
        raise SpecError(
            f"unsupported pip option (supported: {', '.join(_PIP_OPTIONS)})",
            file=source,
            entry=text,
        )
    return text.replace("=", " ", 1) if "=" in text.split(" ", 1)[0] else text
