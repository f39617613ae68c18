"""Lock files as env specs: ``pixi.lock``, ``conda-lock.yml``, PEP 751 ``pylock.toml``.

A lock names every package with its URL and hash, so a locked env is
installed exactly as locked, with no solve (`bayou.provision.locked`):

    pixi.lock / conda-lock.yml ── read, line numbers kept
        │ pick one environment (pixi.lock) and this machine's platform
        ▼
    trimmed document: only what this env installs ── canonical json ── sha256 ──▶ digest
    pylock.toml ── read; requires-python, `environments` and a wheel or sdist
        for each package checked against the env's Python here ──▶ its text, digest

`LockedSpec` carries the trimmed document, so an `Env` made from a lock needs
the file no longer: it pickles to a Dask worker, is kept in the env's record,
and rebuilds from there. The digest is the env's identity: another platform's
packages or another environment of the same pixi.lock may change without
rebuilding this env, any change to what this env installs makes another env.

pixi.lock is read by `bayou.pixilock`, pylock.toml by `bayou.pylock`;
`bayou.lock_formats` picks the reader for a file or a stored lock.
The trimmed document is handed to py-rattler (in the build's child process)
as it is, not converted: rattler reads pixi.lock (versions 5 to 7) and
conda-lock's format itself and derives what the files leave implicit (noarch
type, build number, channel). This module reads only what identity,
validation and error messages need, and every `SpecError` names the file, the
line and the entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .errors import SpecError
from .spec_entries import conda_platform

log = logging.getLogger("bayou.lockfiles")

_ARCHIVE = re.compile(r"\.(conda|tar\.bz2)$")
_PIP_ARCHIVE = re.compile(r"\.(whl|tar\.gz|zip|tar\.bz2|tgz)$")


@dataclass(frozen=True)
class LockedPackage:
    """One package a lock pins: where it comes from and its hash."""

    kind: str  # "conda" or "pypi"
    name: str
    version: str
    url: str  # a URL, or an absolute path for a local archive
    sha256: str | None = None
    md5: str | None = None
    build: str = ""

    @property
    def pin(self) -> str:
        if self.kind == "conda":
            return f"{self.name}=={self.version}={self.build}" if self.build else self.name
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class LockedSpec:
    """What a lock file pins for one environment on one platform."""

    format: str
    environment: str | None
    platform: str
    document: Any  # the trimmed lock (a dict), or pylock.toml's text
    python: str | None  # the locked python's version; the chosen X.Y for pylock.toml
    conda: tuple[LockedPackage, ...] = ()
    pypi: tuple[LockedPackage, ...] = ()
    channels: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # local source trees of a pixi.lock, not installed
    digest: str = field(default="")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "environment": self.environment,
            "platform": self.platform,
            "python": self.python,
            "document": self.document,
        }


def digest_of(document: Any) -> str:
    blob = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# -- reading YAML with line numbers -----------------------------------------------


class _Map(dict):
    """A YAML mapping that remembers the line it starts on (for error messages)."""

    line: int | None = None


def load_yaml(path: Path) -> Any:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type,misc]
        pass

    def mapping(loader: Any, node: Any) -> _Map:
        out = _Map(loader.construct_mapping(node, deep=True))
        out.line = node.start_mark.line + 1
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(
            f"invalid YAML: {getattr(exc, 'problem', exc)}",
            file=str(path),
            line=mark.line + 1 if mark else None,
        )


def _line(obj: Any) -> int | None:
    return getattr(obj, "line", None)


def _plain(document: Any) -> Any:
    """Plain dicts, lists and scalars: what is stored, hashed and written for rattler."""
    return json.loads(json.dumps(document, default=str))


def _absolute(location: str, base: Path) -> str:
    """A relative path in a lock is relative to the lock's directory."""
    if "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())


def _local_path(location: str) -> Path | None:
    if location.startswith("file://"):
        return Path(unquote(urlparse(location).path))
    if "://" not in location:
        return Path(location)
    return None


def _conda_from_location(location: str) -> tuple[str, str, str]:
    """(name, version, build) from a package's file name, as conda names its files."""
    stem = _ARCHIVE.sub("", location.rstrip("/").rsplit("/", 1)[-1])
    parts = stem.rsplit("-", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (stem, "", "")


def _channel_text(channel: Any) -> str:
    return str(channel.get("url") if isinstance(channel, Mapping) else channel)


def _python_version(conda: tuple[LockedPackage, ...], file: str | None) -> str:
    python = next((p for p in conda if p.name == "python"), None)
    if python is None:
        raise SpecError(
            "the lock has no python package for this platform: bayou runs Python "
            "workers in every env",
            file=file,
        )
    return python.version


def locked_pypi(entry: Mapping[str, Any], location: str, file: str | None) -> LockedPackage:
    from packaging.utils import canonicalize_name

    if location.startswith(("git+", "hg+", "svn+", "bzr+")):
        raise SpecError(
            "a pip package from version control has no hash to check: lock a "
            "released wheel or sdist instead",
            file=file,
            line=_line(entry),
            entry=location,
        )
    sha256 = entry.get("sha256") or (entry.get("hash") or {}).get("sha256")
    if not sha256:
        raise SpecError(
            "a locked pip package needs a sha256 hash",
            file=file,
            line=_line(entry),
            entry=location,
        )
    return LockedPackage(
        kind="pypi",
        name=canonicalize_name(str(entry.get("name", ""))),
        version=str(entry.get("version", "")),
        url=location,
        sha256=str(sha256),
    )


# -- conda-lock.yml ---------------------------------------------------------------


def read_conda_lock(path: Path) -> LockedSpec:
    data = load_yaml(path)
    if not isinstance(data, Mapping):
        raise SpecError("expected a mapping at the top level", file=str(path), line=1)
    return conda_lock_spec(data, str(path), conda_platform(), path.parent)


def conda_lock_spec(
    data: Mapping[str, Any], file: str | None, platform: str, base: Path
) -> LockedSpec:
    if data.get("version") != 1 or not isinstance(data.get("package"), list):
        raise SpecError(
            "not a conda-lock file of version 1 (expected 'version: 1', 'metadata' "
            "and a 'package' list)",
            file=file,
            line=_line(data),
            entry=str(data.get("version")),
        )
    metadata = data.get("metadata") or {}
    platforms = [str(p) for p in metadata.get("platforms") or []]
    if platform not in platforms:
        raise SpecError(
            f"the lock has no packages for this platform ({platform}; it has: "
            f"{', '.join(platforms) or 'none'})",
            file=file,
            line=_line(metadata),
            entry=platform,
        )
    chosen, conda, pypi = [], [], []
    for entry in data["package"]:
        if not isinstance(entry, Mapping) or str(entry.get("platform")) != platform:
            continue
        if entry.get("optional") or entry.get("category", "main") != "main":
            continue  # conda-lock installs the main category unless asked for more
        url = _absolute(str(entry.get("url") or ""), base)
        hashes = entry.get("hash") or {}
        manager = entry.get("manager")
        if manager == "conda":
            if not (hashes.get("sha256") or hashes.get("md5")):
                raise SpecError(
                    "a locked conda package needs a sha256 or md5 hash",
                    file=file,
                    line=_line(entry),
                    entry=str(entry.get("name")),
                )
            _name, _version, build = _conda_from_location(url)
            conda.append(
                LockedPackage(
                    kind="conda",
                    name=str(entry.get("name")),
                    version=str(entry.get("version")),
                    url=url,
                    sha256=hashes.get("sha256"),
                    md5=hashes.get("md5"),
                    build=str(entry.get("build") or build),
                )
            )
        elif manager == "pip":
            pypi.append(locked_pypi(entry, url, file))
        else:
            raise SpecError(
                "unknown package manager (expected conda or pip)",
                file=file,
                line=_line(entry),
                entry=str(manager),
            )
        if url != entry.get("url"):
            entry = {**entry, "url": url}
        chosen.append(entry)
    document = _plain(
        {
            "version": 1,
            "metadata": {"channels": metadata.get("channels") or [], "platforms": [platform]},
            "package": chosen,
        }
    )
    conda_t = tuple(conda)
    return LockedSpec(
        format="conda-lock.yml",
        environment=None,
        platform=platform,
        document=document,
        python=_python_version(conda_t, file),
        conda=conda_t,
        pypi=tuple(pypi),
        channels=tuple(_channel_text(c) for c in metadata.get("channels") or []),
        digest=digest_of(document),
    )
