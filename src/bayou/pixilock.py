"""``pixi.lock`` as an env spec: one environment, this machine's platform.

pixi.lock (versions 5 to 7) lists, per environment and platform, references
to package entries (``conda: URL`` / ``pypi: URL``, with more keys when one
location has several variants); the entries carry hashes and metadata. This
module picks the environment (``environment=``, default ``default``) and the
platform (version 7 names platforms, each with a subdir), keeps the
references and entries they point to, makes relative paths absolute, and
checks every package has a hash: see `bayou.lockfiles` for the rest.
A pypi entry that is a local source tree (pixi's editable install of the
project itself) is left out, with a warning: bayou installs what the code
needs, the code travels with the functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SpecError
from .lockfiles import (
    _PIP_ARCHIVE,
    LockedPackage,
    LockedSpec,
    _absolute,
    _channel_text,
    _conda_from_location,
    _line,
    _local_path,
    _Map,
    _plain,
    _python_version,
    digest_of,
    load_yaml,
    locked_pypi,
    log,
)
from .spec_entries import conda_platform


def _pick_environment(environments: Any, wanted: str | None, file: str | None) -> str:
    if not isinstance(environments, Mapping) or not environments:
        raise SpecError("the lock has no environments", file=file)
    name = wanted or "default"
    if name not in environments:
        raise SpecError(
            f"no environment {name!r} in this lock (it has: {', '.join(sorted(environments))})",
            file=file,
            entry=name,
        )
    return name


# -- pixi.lock --------------------------------------------------------------------


def read_pixi_lock(path: Path, environment: str | None = None) -> LockedSpec:
    data = load_yaml(path)
    if not isinstance(data, Mapping):
        raise SpecError("expected a mapping at the top level", file=str(path), line=1)
    return pixi_spec(data, str(path), environment, conda_platform(), path.parent)


def pixi_spec(
    data: Mapping[str, Any],
    file: str | None,
    environment: str | None,
    platform: str,
    base: Path,
) -> LockedSpec:
    version = data.get("version")
    if not isinstance(version, int) or not 5 <= version <= 7:
        raise SpecError(
            "unsupported pixi.lock version (bayou reads versions 5 to 7; "
            "`pixi update` rewrites an older one)",
            file=file,
            line=_line(data),
            entry=str(version),
        )
    name = _pick_environment(data.get("environments"), environment, file)
    env_data = data["environments"][name]
    by_platform = env_data.get("packages") or {}
    key, platform_entry = _pixi_platform_key(data, by_platform, platform)
    if key is None:
        raise SpecError(
            f"the lock's environment {name!r} has no packages for this platform "
            f"({platform}; it has: {', '.join(sorted(by_platform)) or 'none'})",
            file=file,
            line=_line(env_data),
            entry=platform,
        )
    entries: dict[tuple[str, str], list[Any]] = {}
    for entry in data.get("packages") or []:
        kind, location = _pixi_entry_location(entry)
        entries.setdefault((kind, location), []).append(entry)
    refs, chosen, conda, pypi, skipped = [], [], [], [], []
    for ref in by_platform[key] or []:
        kind, location = _pixi_entry_location(ref)
        if kind not in ("conda", "pypi"):
            raise SpecError(
                "a source package (built by pixi) cannot be installed from a lock",
                file=file,
                line=_line(ref),
                entry=location,
            )
        candidates = [e for e in entries.get((kind, location), []) if _selects(ref, e)]
        if not candidates:
            raise SpecError(
                "the lock's environment lists a package its 'packages' section lacks",
                file=file,
                line=_line(ref),
                entry=location,
            )
        entry = candidates[0]
        if kind == "pypi" and _is_source_tree(location):
            skipped.append(f"{entry.get('name', location)} ({location})")
            continue
        absolute = _absolute(location, base)
        if absolute != location:
            ref, entry = _relocated(ref, kind, absolute), _relocated(entry, kind, absolute)
        refs.append(ref)
        chosen.append(entry)
        if kind == "conda":
            conda.append(_pixi_conda(entry, absolute, file))
        else:
            pypi.append(locked_pypi(entry, absolute, file))
    if skipped:
        log.warning("%s: local source trees are not installed from a lock: %s", file, skipped)
    env_out = {k: v for k, v in env_data.items() if k != "packages"}
    env_out["packages"] = {key: refs}
    trimmed: dict[str, Any] = {"version": version}
    if platform_entry is not None:
        trimmed["platforms"] = [platform_entry]
    trimmed["environments"] = {name: env_out}
    trimmed["packages"] = chosen
    document = _plain(trimmed)
    conda_t = tuple(conda)
    return LockedSpec(
        format="pixi.lock",
        environment=name,
        platform=platform,
        document=document,
        python=_python_version(conda_t, file),
        conda=conda_t,
        pypi=tuple(pypi),
        channels=tuple(_channel_text(c) for c in env_data.get("channels") or []),
        skipped=tuple(skipped),
        digest=digest_of(document),
    )


def _pixi_platform_key(
    data: Mapping[str, Any], by_platform: Mapping[str, Any], platform: str
) -> tuple[str | None, Any]:
    """The key of this machine's packages; v7 names platforms, each with a subdir."""
    declared = data.get("platforms")
    if isinstance(declared, list):
        matching = [
            p
            for p in declared
            if isinstance(p, Mapping) and (p.get("subdir") or p.get("name")) == platform
        ]
        matching.sort(key=lambda p: p.get("name") != platform)  # the plain name first
        for entry in matching:
            if entry.get("name") in by_platform:
                return entry["name"], entry
        return None, None
    return (platform, None) if platform in by_platform else (None, None)


def _pixi_entry_location(entry: Any) -> tuple[str, str]:
    if not isinstance(entry, Mapping):
        return "?", str(entry)
    for kind in ("conda", "pypi", "conda_source", "source"):
        if kind in entry:
            return kind, str(entry[kind])
    kind = str(entry.get("kind", "?"))  # version 5: `kind` and `url`/`path`
    return kind, str(entry.get("url") or entry.get("path") or "")


def _selects(ref: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """A reference with more keys than its location picks one of same-location entries."""
    return all(entry.get(k) in (None, v) for k, v in ref.items() if k not in ("conda", "pypi"))


def _relocated(entry: Mapping[str, Any], kind: str, location: str) -> _Map:
    out = _Map(entry)
    out.line = _line(entry)
    if kind in out:
        out[kind] = location
    elif "path" in out:
        out["path"] = location
    else:
        out["url"] = location
    return out


def _is_source_tree(location: str) -> bool:
    if location.startswith(("git+", "hg+", "svn+", "bzr+")):
        return False
    local = _local_path(location)
    return local is not None and not _PIP_ARCHIVE.search(location)


def _pixi_conda(entry: Mapping[str, Any], location: str, file: str | None) -> LockedPackage:
    name, version, build = _conda_from_location(location)
    sha256, md5 = entry.get("sha256"), entry.get("md5")
    if not sha256 and not md5:
        raise SpecError(
            "a locked conda package needs a sha256 or md5 hash",
            file=file,
            line=_line(entry),
            entry=location,
        )
    return LockedPackage(
        kind="conda",
        name=str(entry.get("name") or name),
        version=str(entry.get("version") or version),
        url=location,
        sha256=sha256,
        md5=md5,
        build=str(entry.get("build") or build),
    )
