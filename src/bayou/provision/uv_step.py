"""The pip half of a build, done with uv (the `uv` PyPI package's binary).

Two entry points, both run against a build directory:

* `create_venv`: a pip-only env is a relocatable uv venv over an interpreter
  already on this machine (`interpreters.find`); relocatable, because the
  build directory is renamed into place when it is published.
* `install`: ``uv pip install --python <env python>`` of the requirements,
  for venvs and for conda envs alike, with the store's shared uv cache (hard
  links when the cache and the env share a file system). With `on_event`,
  uv runs with a pseudo-terminal as its stderr, the only place it draws
  download bytes, and `uv_progress` turns what it draws into progress events
  (`uv_tool.run_install`); the output kept is what the terminal shows at the
  end. A locked env's packages go to `locked.install_pip` instead.

Failures raise `ProvisionError` carrying uv's own message, the requirement it
is about when uv names one, and the full output. Offline, both run uv with
``--offline``: only the uv cache is read, and a requirement missing there
fails at once, named, with the cache that was searched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .. import interpreters
from ..env import Env, pip_requirement_name
from ..errors import ProvisionError
from . import wheel_check
from .locked import install_pip
from .tools import Deadline, ToolResult, run_tool
from .uv_progress import EventCallback
from .uv_tool import install_argv as install_argv  # importable from uv_step too, as before
from .uv_tool import run_install as run_install
from .uv_tool import uv_binary as uv_binary
from .uv_tool import uv_environ as uv_environ
from .uv_tool import uv_message


def create_venv(
    env: Env, build_dir: Path, cache_dir: Path, deadline: Deadline, *, offline: bool = False
) -> tuple[Path, str]:
    """(the venv's python, its full version) - the version is known from discovery."""
    wanted = env.python or ""
    interpreter = interpreters.find(wanted)
    if interpreter is None:
        found = ", ".join(sorted({i.version_text for i in interpreters.discover()})) or "none"
        raise ProvisionError(
            f"no Python {wanted} interpreter found on this machine (found: {found}); "
            "install one (e.g. with pyenv or your package manager), list it in "
            "$BAYOU_PYTHONS, or ask for one of the versions found",
            package=f"python={wanted}",
        )
    argv = [
        uv_binary(),
        "venv",
        "--python",
        str(interpreter.path),
        "--relocatable",
        "--no-config",
        "--quiet",
        *(["--offline"] if offline else []),
        str(build_dir),
    ]
    result = run_tool(argv, deadline=deadline, what="creating the venv", env=uv_environ(cache_dir))
    if result.returncode != 0:
        raise ProvisionError(
            f"uv could not create a venv with {interpreter.path}: {uv_message(result)}",
            output=result.output,
        )
    return build_dir / "bin" / "python", interpreter.version_text


def install(
    env: Env,
    python: Path,
    cache_dir: Path,
    deadline: Deadline,
    on_line: Callable[[str], None] | None = None,
    *,
    offline: bool = False,
    on_event: EventCallback | None = None,
) -> ToolResult:
    if env.lock is not None:  # exactly as locked, every hash checked
        return install_pip(
            env, python, cache_dir, deadline, on_line, offline=offline, on_event=on_event
        )
    argv = install_argv(python, offline=offline)
    for option in env.pip_options:
        flag, _, value = option.partition(" ")
        if flag == "--pre":
            argv += ["--prerelease", "allow"]
        else:
            argv += [flag, value]
    argv += list(env.pip)
    result = run_install(
        argv, deadline, "installing pip packages", cache_dir, on_line, on_event=on_event
    )
    if result.returncode != 0:
        message = uv_message(result)
        package = _culprit(message, env.pip)
        if offline:
            about = f"{package} is" if package else "some requirements are"
            message = (
                f"offline ($BAYOU_OFFLINE): {about} not in the uv cache {cache_dir} "
                f"and the package index was not contacted: {message}"
            )
        raise ProvisionError(
            f"pip install failed: {message}", package=package, output=result.output
        )
    return _repair_damaged(env, python, cache_dir, deadline, argv, result, offline)


def _repair_damaged(
    env: Env,
    python: Path,
    cache_dir: Path,
    deadline: Deadline,
    argv: list[str],
    result: ToolResult,
    offline: bool = False,
) -> ToolResult:
    """Files linked from a damaged uv cache entry: drop the entry, reinstall
    those packages once from a fresh download (see `wheel_check`); offline,
    where nothing can be downloaded, the entry is kept and named instead."""
    try:
        mode = wheel_check.validation_mode()
    except ValueError as exc:
        raise ProvisionError(str(exc)) from None
    sites = wheel_check.site_packages(python)
    bad = wheel_check.damaged(sites, installed_by(result), mode)
    if not bad:
        return result
    names = sorted({name for name, _path, _problem in bad})
    if offline:
        details = "; ".join(f"{n}: {path} ({problem})" for n, path, problem in bad[:5])
        raise ProvisionError(
            f"offline ($BAYOU_OFFLINE): the uv cache {cache_dir} holds damaged files "
            f"({details}) and a fresh copy cannot be downloaded offline",
            package=next((r for r in env.pip if pip_requirement_name(r) == names[0]), None),
            output=result.output,
        )
    uv_env = uv_environ(cache_dir)
    run_tool(
        [uv_binary(), "cache", "clean", *names], deadline=deadline, what="cleaning", env=uv_env
    )
    again_argv = argv[: len(argv) - len(env.pip)]
    again_argv += [f"--reinstall-package={name}" for name in names] + list(env.pip)
    again = run_tool(again_argv, deadline=deadline, what="reinstalling pip packages", env=uv_env)
    still = (
        wheel_check.damaged(sites, installed_by(result), mode) if again.returncode == 0 else bad
    )
    if still:
        details = "; ".join(f"{n}: {path} ({problem})" for n, path, problem in still[:5])
        raise ProvisionError(
            f"installed files do not match their RECORD even after a fresh download: {details}",
            package=next((r for r in env.pip if pip_requirement_name(r) == still[0][0]), None),
            output=result.output + "\n" + again.output,
        )
    found = "; ".join(f"{n}: {path} ({problem})" for n, path, problem in bad[:5])
    note = f"bayou: damaged uv cache entries were replaced: {found}\n"
    return ToolResult(result.argv, result.returncode, result.stdout + note, result.stderr)


def installed_by(result: ToolResult) -> list[dict[str, str]]:
    """The distributions an install added (uv prints ``+ name==version``).

    Read from uv's report rather than listing the env, so a conda env's own
    Python packages are not mistaken for pip-installed ones.
    """
    found = re.findall(r"^\s*\+\s+([A-Za-z0-9_.\-]+)==(\S+)", result.stderr, re.MULTILINE)
    return sorted(({"name": n, "version": v} for n, v in found), key=lambda p: p["name"])


def _culprit(message: str, requirements: tuple[str, ...]) -> str | None:
    by_name = {pip_requirement_name(r): r for r in requirements}
    match = re.search(r"Because (?:you require )?([A-Za-z0-9_.\-]+)", message)
    if match and match.group(1).lower() in by_name:
        return by_name[match.group(1).lower()]
    for name, req in by_name.items():
        if re.search(rf"(?<![\w.\-]){re.escape(name)}(?![\w\-])", message, re.IGNORECASE):
            return req
    return None
