"""Installing a locked env (`Env.lock`): exactly what the lock pins, no solve.

    Env.lock (bayou.lockfiles.LockedSpec)
      ├─ conda packages: `child_request` writes the trimmed lock into the build's
      │  .bayou/ and the rattler child installs its records for this platform,
      │  after checking each local archive's hash (rattler checks downloads) and
      │  each ``__cuda``-like dependency against this machine's virtual packages
      │  (CONDA_OVERRIDE_* honoured); the env keeps the lock as rattler writes it
      │  (.bayou/conda-lock.yml, pixi.lock format), so `env export` gives it back
      └─ pip packages: `install_pip`, uv with every hash checked:
           pixi.lock / conda-lock.yml: one ``name @ URL --hash=sha256:...`` line
             each, ``--require-hashes --no-deps`` (the lock is the whole
             resolution: nothing is resolved again);
           pylock.toml: ``uv pip install -r pylock.toml`` (uv picks the wheel
             for this interpreter and checks its hash).

A hash that does not match raises `ProvisionError` naming the package; the
build is discarded, as for any failed build.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ..env import Env
from ..errors import ProvisionError
from ..lockfiles import LockedPackage, LockedSpec
from .tools import Deadline, ToolResult
from .uv_tool import install_argv, run_install, uv_message


def child_request(lock: LockedSpec, meta: Path) -> dict[str, Any]:
    """The ``lock`` part of the rattler child's request; writes the lock it reads."""
    import yaml

    path = meta / "locked-input.yml"
    path.write_text(yaml.safe_dump(lock.document, sort_keys=False))
    if lock.format == "pixi.lock":
        environment = str(lock.environment)
        platform = next(iter(lock.document["environments"][environment]["packages"]))
    else:  # conda-lock.yml: rattler reads it as one environment, "default"
        environment, platform = "default", lock.platform
    return {"lock": {"path": str(path), "environment": environment, "platform": platform}}


def requirements_with_hashes(packages: tuple[LockedPackage, ...]) -> str:
    """A requirements file pinning each package to its URL and sha256."""
    lines = []
    for package in packages:
        url = package.url if "://" in package.url else Path(package.url).as_uri()
        lines.append(f"{package.name} @ {url} --hash=sha256:{package.sha256}")
    return "\n".join(lines) + "\n"


def install_pip(
    env: Env,
    python: Path,
    cache_dir: Path,
    deadline: Deadline,
    on_line: Callable[[str], None] | None = None,
    *,
    offline: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> ToolResult:
    lock = cast(LockedSpec, env.lock)  # a locked env has one
    argv = install_argv(python, offline=offline)
    work = Path(tempfile.mkdtemp(prefix="bayou-lock-"))
    try:
        if lock.format == "pylock.toml":
            path = work / "pylock.toml"
            path.write_text(lock.document)
            argv += ["--preview-features", "pylock", "-r", str(path)]
        else:
            path = work / "requirements.txt"
            path.write_text(requirements_with_hashes(lock.pypi))
            argv += ["--no-deps", "--require-hashes", "-r", str(path)]
        result = run_install(
            argv,
            deadline,
            "installing the locked pip packages",
            cache_dir,
            on_line,
            on_event=on_event,  # progress, as for any pip install
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.returncode != 0:
        message = uv_message(result)
        message = message[message.find("error:") + 6 :].strip() if "error:" in message else message
        if offline:
            message = (
                f"offline ($BAYOU_OFFLINE): only the uv cache {cache_dir} was read, "
                f"the package index was not contacted: {message}"
            )
        raise ProvisionError(
            f"installing the locked pip packages failed: {message}",
            package=_culprit(message, lock.pypi),
            output=result.output,
        )
    return result


def _culprit(message: str, packages: tuple[LockedPackage, ...]) -> str | None:
    """The locked package uv's message is about (it quotes `name==version` or `name @ url`)."""
    by_name = {p.name: p.pin for p in packages}
    for match in re.finditer(r"`([A-Za-z0-9_.\-]+)(?:==|\s*@)", message):
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        if name in by_name:
            return by_name[name]
    for name, pin in by_name.items():
        if re.search(rf"(?<![\w.\-]){re.escape(name)}(?![\w\-])", message, re.IGNORECASE):
            return pin
    return None


def virtual_hint(name: str | None) -> str:
    """How to build for a virtual package this machine lacks (a GPU env on a CPU node)."""
    if not name:
        return ""
    variable = f"CONDA_OVERRIDE_{name.lstrip('_').upper()}"
    if name == "__cuda":
        return (
            "\nthis machine has no __cuda (no CUDA driver was found); to build a GPU env "
            f"on it anyway, set {variable}=12.4 (the CUDA version the env will run with)"
        )
    return f"\nthis machine lacks {name} (or the version needed); {variable}=VERSION builds as if"
