"""A provisioned environment: where it is and how to start processes in it.

`provision()` turns an `Env` (a description) into an `Environment` (a prefix
on disk with a Python in it). The record written at build time carries the
activation computed once (PATH entries, CONDA_PREFIX, `env_vars.d`, what the
`activate.d` scripts export), so every later process started in the env gets
the same variables without running a shell. `environ()` is the single place
that turns that record into a child process environment: the executor's
workers and `bayou.run` both use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Variables that describe the *caller's* activation. They are dropped from the
# base environment so a worker never believes it runs in the caller's env.
_CALLER_ACTIVATION_VARS = (
    "VIRTUAL_ENV",
    "VIRTUAL_ENV_PROMPT",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "CONDA_PROMPT_MODIFIER",
    "CONDA_SHLVL",
    "CONDA_PYTHON_EXE",
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONEXECUTABLE",
    "__PYVENV_LAUNCHER__",
)


@dataclass(frozen=True)
class Environment:
    """An environment that exists on disk and can run Python.

    `activation` is ``{"path": [dirs to prepend to PATH], "set": {VAR: value},
    "unset": [VAR, ...]}``; `env_vars` are the user's variables from the spec,
    applied last so they win.
    """

    prefix: Path
    python: Path
    hash: str
    python_version: str
    record: Mapping[str, Any] = field(default_factory=dict, compare=False)
    activation: Mapping[str, Any] = field(default_factory=dict, compare=False)
    env_vars: Mapping[str, str] = field(default_factory=dict, compare=False)
    is_current: bool = False

    @property
    def python_xy(self) -> tuple[int, int]:
        major, minor = self.python_version.split(".")[:2]
        return int(major), int(minor)

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables a process started in this env should see."""
        env = dict(os.environ if base is None else base)
        if self.is_current:
            env.update(self.env_vars)
            return env
        caller_bins = _caller_bin_dirs()
        for name in _CALLER_ACTIVATION_VARS:
            env.pop(name, None)
        for name in self.activation.get("unset", ()):
            env.pop(name, None)
        inherited = [
            p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p not in caller_bins
        ]
        path = list(self.activation.get("path", ())) + inherited
        env["PATH"] = os.pathsep.join(dict.fromkeys(path))
        env.update(self.activation.get("set", {}))
        env.update(self.env_vars)
        return env


def _caller_bin_dirs() -> set[str]:
    """Directories that put the caller's own environment first on PATH."""
    dirs = {os.path.dirname(sys.executable)}
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if os.environ.get(var):
            dirs.add(os.path.join(os.environ[var], "bin"))
    if sys.prefix != sys.base_prefix:
        dirs.add(os.path.join(sys.prefix, "bin"))
    return dirs


def current_environment(env_vars: Mapping[str, str] | None = None) -> Environment:
    """The caller's own interpreter, as an Environment (nothing is built)."""
    version = ".".join(map(str, sys.version_info[:3]))
    return Environment(
        prefix=Path(sys.prefix),
        python=Path(sys.executable),
        hash="current",
        python_version=version,
        env_vars=dict(env_vars or {}),
        is_current=True,
    )
