"""PEP 751 ``pylock.toml`` as an env spec: a pip-only env installed exactly as locked.

A pylock.toml lists, per package, every wheel (for many platforms) and the
sdist, each with its hashes; the installer picks the file that fits. So the
env's Python must be chosen before the lock can be checked:

    python= given ── else the caller's X.Y when requires-python allows it (its
        functions then travel by value) ── else the newest interpreter found here
    ▼
    requires-python, `environments` markers, and for every package whose marker
    holds: a wheel whose tags CPython X.Y accepts on this machine, or an sdist

so a lock made for another platform fails when it is read, naming the
package, not half-way through an install. uv installs it (`uv pip install -r
pylock.toml`) and checks every hash. The digest of the parsed file (not its
text: comments and layout don't count) and the chosen X.Y are the identity.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from .errors import SpecError
from .lockfiles import LockedPackage, LockedSpec, digest_of
from .spec_entries import conda_platform


def read_pylock(path: Path, python: str | None = None) -> LockedSpec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=str(path))
    return pylock_spec(text, str(path), python, conda_platform())


def pylock_spec(text: str, file: str | None, python: str | None, platform: str) -> LockedSpec:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    data = _load_toml(text, file)
    version = str(data.get("lock-version", ""))
    if not version.startswith("1."):
        raise SpecError(
            "not a PEP 751 lock of version 1.x (no 'lock-version = \"1.0\"')",
            file=file,
            line=_toml_line(text, r"lock-version\s*="),
            entry=version or None,
        )
    try:
        requires = SpecifierSet(str(data.get("requires-python", "")))
    except InvalidSpecifier:
        raise SpecError(
            "requires-python is not a version specifier",
            file=file,
            line=_toml_line(text, r"requires-python\s*="),
            entry=str(data.get("requires-python")),
        )
    chosen = python or choose_python(requires, file, _toml_line(text, r"requires-python\s*="))
    if not allows(requires, chosen):
        raise SpecError(
            f"python {chosen} does not satisfy the lock's requires-python {requires}",
            file=file,
            line=_toml_line(text, r"requires-python\s*="),
            entry=str(requires),
        )
    marker_env = _marker_environment(chosen)
    environments = data.get("environments")
    if environments and not any(_marker_true(m, marker_env) for m in environments):
        raise SpecError(
            f"the lock has no environment for this machine (Python {chosen} on {platform}; "
            f"it has: {'; '.join(environments)})",
            file=file,
            line=_toml_line(text, r"environments\s*="),
            entry=platform,
        )
    tags = _target_tags(chosen)
    pypi = []
    for index, package in enumerate(data.get("packages") or []):
        name, pkg_version = str(package.get("name")), str(package.get("version", ""))
        if package.get("marker") and not _marker_true(package["marker"], marker_env):
            continue
        wheels = package.get("wheels") or []
        fits = [w for w in wheels if _wheel_fits(w, tags)]
        if not fits and not any(package.get(k) for k in ("sdist", "vcs", "directory", "archive")):
            raise SpecError(
                f"no wheel of {name} {pkg_version} in the lock fits this machine "
                f"(CPython {chosen} on {platform}) and it has no sdist",
                file=file,
                line=_toml_package_line(text, index),
                entry=name,
            )
        best = fits[0] if fits else package.get("sdist") or package.get("archive") or {}
        pypi.append(
            LockedPackage(
                kind="pypi",
                name=name,
                version=pkg_version,
                url=str(best.get("url") or best.get("path") or ""),
                sha256=(best.get("hashes") or {}).get("sha256"),
            )
        )
    return LockedSpec(
        format="pylock.toml",
        environment=None,
        platform=platform,
        document=text,
        python=chosen,
        pypi=tuple(pypi),
        digest=digest_of(data),
    )


def _load_toml(text: str, file: str | None) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise SpecError(
            f"invalid TOML: {exc}", file=file, line=int(match.group(1)) if match else None
        )


def _toml_line(text: str, pattern: str) -> int | None:
    match = re.search(rf"^\s*{pattern}", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _toml_package_line(text: str, index: int) -> int | None:
    starts = [m.start() for m in re.finditer(r"^\s*\[\[packages\]\]", text, re.MULTILINE)]
    return text.count("\n", 0, starts[index]) + 1 if index < len(starts) else None


def choose_python(requires: Any, file: str | None, line: int | None) -> str:
    """The X.Y for a pip env that `requires` allows: the caller's when it is allowed
    (functions then travel by value), else the newest interpreter on this machine."""
    from . import interpreters

    caller = f"{sys.version_info.major}.{sys.version_info.minor}"
    if allows(requires, caller):
        return caller
    found = sorted({i.version[:2] for i in interpreters.discover()}, reverse=True)
    for major, minor in found:
        if allows(requires, f"{major}.{minor}"):
            return f"{major}.{minor}"
    seen = ", ".join(f"{a}.{b}" for a, b in found) or "none"
    raise SpecError(
        f"no Python on this machine satisfies requires-python {requires} (found: {seen})",
        file=file,
        line=line,
        entry=str(requires),
    )


def allows(requires: Any, python: str) -> bool:
    """Whether a requires-python specifier admits some release of `python` (X.Y or X.Y.Z)."""
    if python.count(".") >= 2:
        return requires.contains(python, prereleases=True)
    return any(requires.contains(f"{python}.{patch}", prereleases=True) for patch in (0, 99))


def _marker_environment(python: str) -> dict[str, str]:
    from packaging.markers import default_environment

    env = cast("dict[str, str]", dict(default_environment()))  # all its values are strings
    xy = ".".join(python.split(".")[:2])
    env["python_version"] = xy
    if not env["python_full_version"].startswith(xy + "."):
        env["python_full_version"] = python if python.count(".") == 2 else f"{xy}.0"
    env["implementation_version"] = env["python_full_version"]
    return env


def _marker_true(marker: str, environment: dict[str, str]) -> bool:
    from packaging.markers import InvalidMarker, Marker

    try:
        return Marker(str(marker)).evaluate(environment)
    except InvalidMarker:
        return False


def _target_tags(python: str) -> set[Any]:
    """The wheel tags CPython X.Y accepts on this machine (not only the caller's)."""
    from packaging import tags

    major, minor = (int(p) for p in python.split(".")[:2])
    platforms = list(tags.platform_tags())
    found = set(tags.cpython_tags(python_version=(major, minor), platforms=platforms))
    found |= set(
        tags.compatible_tags(
            python_version=(major, minor), interpreter=f"cp{major}{minor}", platforms=platforms
        )
    )
    return found


def _wheel_fits(wheel: Mapping[str, Any], accepted: set[Any]) -> bool:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    name = str(wheel.get("name") or str(wheel.get("url") or wheel.get("path") or ""))
    try:
        _n, _v, _b, wheel_tags = parse_wheel_filename(name.rsplit("/", 1)[-1])
    except InvalidWheelFilename:
        return False
    return bool(wheel_tags & accepted)
