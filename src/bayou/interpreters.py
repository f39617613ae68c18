"""Finding Python interpreters on this machine.

A pip-only env is a uv venv over an interpreter that is already here; bayou
never downloads one behind the user's back. Candidates come from, in order:
`$BAYOU_PYTHONS` (os.pathsep-separated executables), PATH (`python3.X`,
`python3`, skipping pyenv's shims, which only answer for the active version),
the pyenv root (`$PYENV_ROOT`, `pyenv root`, `~/.pyenv`), uv's managed
interpreters, and the usual system directories. Each candidate is asked for
its version once (cached per process); broken ones are skipped. The result of
a failed search lists what was found, so the user sees why nothing matched.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^python3(\.\d{1,2})?$")


@dataclass(frozen=True)
class Interpreter:
    path: Path
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def matches(self, wanted: str) -> bool:
        """True for `3.12` against 3.12.x, and `3.12.1` against 3.12.1 only."""
        parts = tuple(int(p) for p in wanted.split("."))
        return self.version[: len(parts)] == parts


def python_in_prefix(prefix: Path) -> Path | None:
    for rel in ("bin/python3", "bin/python", "python.exe", "Scripts/python.exe"):
        candidate = prefix / rel
        if candidate.exists():
            return candidate
    return None


def _candidate_paths() -> list[Path]:
    found: list[Path] = []
    for item in os.environ.get("BAYOU_PYTHONS", "").split(os.pathsep):
        if item:
            found.append(Path(item))
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or "shims" in Path(directory).parts:
            continue
        for path in sorted(glob.glob(os.path.join(directory, "python3*"))):
            if _NAME.match(os.path.basename(path)):
                found.append(Path(path))
    for root in _pyenv_roots():
        found += [Path(p) for p in sorted(glob.glob(f"{root}/versions/*/bin/python3.*"))]
    uv_dir = os.environ.get("UV_PYTHON_INSTALL_DIR") or os.path.expanduser(
        "~/.local/share/uv/python"
    )
    found += [Path(p) for p in sorted(glob.glob(f"{uv_dir}/*/bin/python3.*"))]
    for directory in ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"):
        found += [Path(p) for p in sorted(glob.glob(f"{directory}/python3.*"))]
    return [p for p in found if _NAME.match(p.name) and os.access(p, os.X_OK)]


def _pyenv_roots() -> list[str]:
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                roots.append(out.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    roots.append(os.path.expanduser("~/.pyenv"))
    return [r for r in dict.fromkeys(roots) if os.path.isdir(r)]


@functools.cache
def _probe(path: str) -> tuple[str, tuple[int, int, int]] | None:
    """(real path, version) of a working interpreter, or None."""
    code = "import sys; print(sys.executable); print(*sys.version_info[:3])"
    try:
        out = subprocess.run([path, "-I", "-c", code], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        executable, version = out.stdout.strip().splitlines()[-2:]
        major, minor, micro = (int(x) for x in version.split())
    except ValueError:
        return None
    return executable, (major, minor, micro)


def discover() -> list[Interpreter]:
    """Every working CPython 3 found, one per real executable, newest first."""
    seen: dict[str, Interpreter] = {}
    for path in [Path(sys.executable), *_candidate_paths()]:
        probed = _probe(str(path))
        if probed is None:
            continue
        real = os.path.realpath(probed[0])
        if real not in seen:
            # Prefer a base interpreter's own path over a venv's link to it.
            seen[real] = Interpreter(
                Path(path) if path != Path(sys.executable) else Path(real), probed[1]
            )
    return sorted(seen.values(), key=lambda i: i.version, reverse=True)


def find(version: str) -> Interpreter | None:
    """The best interpreter for `version` ('3.12' or '3.12.1'), or None.

    The caller's own interpreter wins when it matches: it is known to work and
    needs no search."""
    probed = _probe(sys.executable)
    if probed is not None:
        own = Interpreter(Path(os.path.realpath(probed[0])), probed[1])
        if own.matches(version):
            return own
    matches = [i for i in discover() if i.matches(version)]
    return matches[0] if matches else None
