"""Running uv (the `uv` PyPI package's binary), for every step that installs with it.

A spec's requirements (`uv_step`), a lock's pinned packages (`locked`) and a
bundle's wheels (`unpack`) are all installed by one ``uv pip install`` into
the env's python, built here the same way for each:

    `install_argv` (target python, --offline, --break-system-packages for a
        conda env) + what to install
        │ `run_install`: with `uv_environ` (the store's uv cache, no downloaded
        │ Pythons, no colour); with `on_event`, on a pseudo-terminal read by
        ▼ `uv_progress` for download bytes
    ToolResult ── failed ──▶ `uv_message`: uv's own words for the ProvisionError

It knows nothing of envs or locks, so `uv_step` and `locked` both import it
and neither imports the other back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from .tools import Deadline, ToolResult, run_tool
from .uv_progress import EventCallback, UvProgress


def uv_binary() -> str:
    import uv

    return uv.find_uv_bin()


def uv_environ(cache_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        UV_CACHE_DIR=str(cache_dir),
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
        NO_COLOR="1",
    )
    return env


def install_argv(python: Path, *, offline: bool) -> list[str]:
    """``uv pip install`` into the env of `python`, before what to install: for a spec's
    requirements, a lock's and a bundle's wheels alike."""
    argv = [uv_binary(), "pip", "install", "--python", str(python), "--no-config"]
    if offline:
        argv.append("--offline")
    if not (python.parent.parent / "pyvenv.cfg").exists():
        # A conda env's python is not a venv: tell uv the target is ours.
        argv.append("--break-system-packages")
    return argv


def run_install(
    argv: list[str],
    deadline: Deadline,
    what: str,
    cache_dir: Path,
    on_line: Callable[[str], None] | None = None,
    *,
    on_event: EventCallback | None = None,
) -> ToolResult:
    """Run a ``uv pip install``; with `on_event`, on a pseudo-terminal (where
    uv draws its progress, bytes included, whatever UV_NO_PROGRESS says
    elsewhere) and read as it streams."""
    environ = uv_environ(cache_dir)
    if on_event is None:
        return run_tool(argv, deadline=deadline, what=what, env=environ, on_line=on_line)
    del environ["UV_NO_PROGRESS"]
    reader = UvProgress(on_event)
    result = run_tool(
        argv,
        deadline=deadline,
        what=what,
        env=environ,
        on_line=on_line,
        on_stderr=reader.feed,
        stderr_tty=True,
    )
    try:
        reader.finish()
    except Exception:  # a progress callback must not break a build
        pass
    return result


def uv_message(result: ToolResult) -> str:
    """uv's error, without its "error:" prefix and its "Using ..." chatter."""
    lines = [
        line.strip()
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("Using ")
    ]
    text = " ".join(lines)
    return re.sub(r"^error:\s*", "", text) or f"uv exited with {result.returncode}"
