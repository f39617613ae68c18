"""`allow_current`: use the caller's own interpreter when it already satisfies a spec.

    provision(env, allow_current=True)
      │ why_not_current(env) is None? ─▶ the caller's Environment: nothing built
      ▼ a reason (logged at DEBUG on bayou.provision)
    the normal build

Only pip-only specs qualify; a conda env is never "already satisfied" (its
non-Python parts cannot be checked). The caller qualifies when its Python
matches the spec's (``3.11`` matches any 3.11.x, ``3.11.4`` only that one)
and every requirement whose marker applies is met by a distribution visible
on the caller's ``sys.path`` (``importlib.metadata``, so what a plain
``import`` there would find): name, version (pre-releases included: they are
installed, not chosen) and, for ``pkg[extra]``, the requirements that extra
adds, recursively. Direct URL requirements (``pkg @ https://...``) never
match: an installed version says nothing about where it came from. Pip index
options do not matter: they choose where to download from, not what is
installed.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from importlib import metadata
from typing import cast

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..env import Env
from ..environment import Environment, current_environment

log = logging.getLogger("bayou.provision")


def why_not_current(env: Env) -> str | None:
    """None when the caller's interpreter satisfies `env`, else the reason it doesn't."""
    if env.kind != "spec":
        return f"a {env.kind!r} env is not a spec to check"
    if env.is_conda:
        return "the spec has conda packages"
    if env.python is not None:
        wanted = [int(p) for p in env.python.split(".")]
        have = list(sys.version_info[: len(wanted)])
        if have != wanted:
            caller = ".".join(map(str, sys.version_info[:3]))
            return f"the spec wants python {env.python}, the caller runs {caller}"
    installed = _installed()
    for text in env.pip:
        problem = _unmet(Requirement(text), installed, extra="", seen=set())
        if problem:
            return problem
    return None


def _installed() -> dict[str, metadata.Distribution]:
    """Visible distributions by canonical name; the first on sys.path wins, as for import."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found.setdefault(canonicalize_name(name), dist)
    return found


def _unmet(
    req: Requirement,
    installed: dict[str, metadata.Distribution],
    *,
    extra: str,
    seen: set[tuple[str, str]],
) -> str | None:
    if req.marker is not None:
        environment = cast("dict[str, str]", default_environment())  # a TypedDict, no "extra"
        environment["extra"] = extra
        if not req.marker.evaluate(environment):
            return None
    name = canonicalize_name(req.name)
    if req.url:
        return f"{req} is a direct URL requirement"
    dist = installed.get(name)
    if dist is None:
        return f"{req.name} is not installed in the caller's environment"
    try:
        version = Version(dist.version)
    except InvalidVersion:
        return f"{req.name} {dist.version!r} has a version packaging cannot read"
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        return f"the caller has {req.name} {version}, the spec wants {req}"
    for wanted_extra in sorted(req.extras):
        key = (name, canonicalize_name(wanted_extra))
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or ():
            sub = Requirement(line)
            if sub.marker is None:
                continue  # a base requirement: the extra adds only marked ones
            problem = _unmet(sub, installed, extra=key[1], seen=seen)
            if problem:
                return f"{req} needs {problem}"
    return None


def caller_environment(env: Env) -> Environment:
    """The caller's interpreter standing in for `env` (with `env`'s variables)."""
    found = current_environment(env.env_vars)
    record = {"hash": "current", "kind": "current", "satisfies": env.to_dict()}
    return dataclasses.replace(found, record=record)
