"""Compute an environment's activation once, at build time.

`conda activate` prepends the env's bin directory to PATH, sets
CONDA_PREFIX, applies ``etc/conda/env_vars.d/*.json`` and
``conda-meta/state``, and sources ``etc/conda/activate.d/*.sh``. bayou starts
processes without a shell, so it does that work once while building: the
scripts are sourced by ``bash`` with the final prefix in CONDA_PREFIX (script
paths are passed as arguments, never pasted into a command line), the
variables they changed are diffed out, and the result is stored in the env's
record as ``{"path": [...], "set": {...}, "unset": [...]}``, which
`Environment.environ()` applies to every process started later.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

_IGNORED = {"PWD", "OLDPWD", "SHLVL", "_", "PS1", "BASH_EXECUTION_STRING"}


def venv_activation(final_prefix: Path) -> dict[str, Any]:
    return {
        "path": [str(final_prefix / "bin")],
        "set": {"VIRTUAL_ENV": str(final_prefix)},
        "unset": [],
        "warnings": [],
    }


def conda_activation(build_dir: Path, final_prefix: Path, name: str) -> dict[str, Any]:
    path = [str(final_prefix / "bin")]
    variables: dict[str, str] = {
        "CONDA_PREFIX": str(final_prefix),
        "CONDA_DEFAULT_ENV": name,
        "CONDA_SHLVL": "1",
    }
    warnings: list[str] = []
    env_vars_d = build_dir / "etc" / "conda" / "env_vars.d"
    if env_vars_d.is_dir():
        for file in sorted(env_vars_d.glob("*.json")):
            try:
                variables.update({k: str(v) for k, v in json.loads(file.read_text()).items()})
            except (ValueError, AttributeError) as exc:
                warnings.append(f"ignored {file.name}: {exc}")
    state = build_dir / "conda-meta" / "state"
    if state.is_file():
        try:
            variables.update(json.loads(state.read_text()).get("env_vars", {}))
        except (ValueError, AttributeError) as exc:
            warnings.append(f"ignored conda-meta/state: {exc}")

    unset: list[str] = []
    scripts = sorted((build_dir / "etc" / "conda" / "activate.d").glob("*.sh"))
    if scripts:
        bash = shutil.which("bash")
        if bash is None:
            warnings.append("bash not found: activate.d scripts were not applied")
        else:
            changed, removed, new_path, problem = _source_scripts(
                bash, scripts, variables, path, final_prefix
            )
            variables.update(changed)
            unset += removed
            path = new_path
            if problem:
                warnings.append(problem)
    return {"path": path, "set": variables, "unset": unset, "warnings": warnings}


def _source_scripts(
    bash: str,
    scripts: list[Path],
    variables: dict[str, str],
    path: list[str],
    final_prefix: Path,
) -> tuple[dict[str, str], list[str], list[str], str | None]:
    base = {
        "HOME": os.environ.get("HOME", "/"),
        "PATH": os.pathsep.join(path + ["/usr/local/bin", "/usr/bin", "/bin"]),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        **variables,
    }
    program = 'for f in "$@"; do . "$f" >/dev/null 2>&1 || exit 3; done; exec env -0'
    argv = [bash, "--noprofile", "--norc", "-c", program, "bayou-activate"]
    argv += [str(s) for s in scripts]
    try:
        out = subprocess.run(
            argv, env=base, capture_output=True, timeout=60, cwd=str(scripts[0].parent)
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, [], path, f"activate.d scripts could not run: {exc}"
    if out.returncode != 0:
        return {}, [], path, f"an activate.d script failed (exit {out.returncode})"
    after = {}
    for item in out.stdout.decode(errors="replace").split("\0"):
        key, sep, value = item.partition("=")
        if sep and key not in _IGNORED:
            after[key] = value
    changed = {k: v for k, v in after.items() if k != "PATH" and base.get(k) != v}
    removed = [k for k in base if k not in after and k not in ("PATH",)]
    new_path = path
    old_entries = base["PATH"].split(os.pathsep)
    entries = after.get("PATH", base["PATH"]).split(os.pathsep)
    added = [e for e in entries if e not in old_entries]
    if added:
        new_path = added + path
    return changed, removed, new_path, None
