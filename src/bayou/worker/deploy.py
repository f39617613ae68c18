"""Build the worker runtime directory (runs in the caller, never in a worker).

A worker must import our code and the caller's exact cloudpickle and tblib
without touching the environment it runs in. `ensure_runtime()` assembles,
once per distinct set of sources, a directory::

    <root>/runtime/<digest>/
        _bayou_worker/              this package, copied
        _bayou_vendor_cloudpickle/  the caller's cloudpickle, under a private name
        _bayou_vendor_tblib/        the caller's tblib, under a private name
        shim/bayou/__init__.py      in-task API for envs without bayou

The worker puts the directory first on `sys.path` (only our private names
live there, so nothing of the env is shadowed) and `shim/` last, so a real
`bayou` installed in the env always wins over the stand-in. Both vendored
packages use relative imports internally; any absolute self-import is
rewritten to the private name and the copy is checked for leftovers. The
digest covers every copied byte, so upgrading cloudpickle or bayou yields a
new directory and running workers keep the old one. The directory is built
in a temporary sibling and published with an atomic rename.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

WORKER_PACKAGE = "_bayou_worker"
VENDORED = {"cloudpickle": "_bayou_vendor_cloudpickle", "tblib": "_bayou_vendor_tblib"}
SHIM_DIR = "shim"
_COMPLETE = ".complete"

_lock = threading.Lock()
_cache: dict = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def default_root() -> Path:
    """`$BAYOU_HOME`, else the user cache directory."""
    home = os.environ.get("BAYOU_HOME")
    if home:
        return Path(home).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "bayou"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "bayou" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bayou"


def _package_files(directory: Path):
    return sorted(
        p for p in directory.rglob("*.py") if "__pycache__" not in p.parts and p.is_file()
    )


def _sources() -> list:
    """(destination relative path, source file) for everything in the runtime."""
    here = Path(__file__).resolve().parent
    items = [(Path(WORKER_PACKAGE) / p.relative_to(here), p) for p in _package_files(here)]
    for name, private in VENDORED.items():
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"bayou needs the {name!r} package in the caller's environment")
        pkg = Path(list(spec.submodule_search_locations)[0])
        items += [(Path(private) / p.relative_to(pkg), p) for p in _package_files(pkg)]
    items.append((Path(SHIM_DIR) / "bayou" / "__init__.py", here / "_shim_bayou.py"))
    return items


def _rewrite(text: str, name: str, private: str) -> str:
    pattern = re.compile(rf"^(\s*)(from|import)\s+{name}(\.|\s|$)", re.MULTILINE)

    def fix(m):
        if m.group(2) == "import" and m.group(3) != ".":
            return f"{m.group(1)}import {private} as {name}{m.group(3)}"
        return f"{m.group(1)}{m.group(2)} {private}{m.group(3)}"

    return pattern.sub(fix, text)


def _content(dest: Path, src: Path) -> bytes:
    data = src.read_bytes()
    top = dest.parts[0]
    for name, private in VENDORED.items():
        if top == private:
            data = _rewrite(data.decode("utf-8"), name, private).encode("utf-8")
    return data


def ensure_runtime(root=None) -> Path:
    """The runtime directory for this caller installation, built if needed."""
    root = Path(root) if root is not None else default_root()
    key = str(root)
    with _lock:
        found = _cache.get(key)
        if found is not None and (found / _COMPLETE).exists():
            return found
        files = [(dest, _content(dest, src)) for dest, src in _sources()]
        h = hashlib.sha256()
        for dest, data in files:
            h.update(str(dest).encode() + b"\0" + data + b"\0")
        h.update(sys.implementation.cache_tag.encode())
        try:
            target = _publish(root / "runtime", h.hexdigest()[:20], files)
        except OSError:
            # Unwritable cache: build a private copy for this process only.
            tmp = Path(tempfile.mkdtemp(prefix="bayou-runtime-"))
            target = _publish(tmp, "rt", files)
            import atexit

            atexit.register(_remove_private_runtime, tmp, os.getpid())
        _cache[key] = target
        return target


def _remove_private_runtime(path: Path, owner: int) -> None:
    """At exit, in the process that made it only: a forked child exits too."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def _publish(parent: Path, name: str, files) -> Path:
    target = parent / name
    if (target / _COMPLETE).exists():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=parent))
    try:
        for dest, data in files:
            out = tmp / dest
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        for name_, private in VENDORED.items():
            leftover = re.compile(rf"^\s*(from|import)\s+{name_}\b", re.MULTILINE)
            for p in (tmp / private).rglob("*.py"):
                if leftover.search(p.read_text("utf-8")):
                    raise RuntimeError(f"absolute import of {name_!r} left in {p}")
        (tmp / _COMPLETE).write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _COMPLETE).exists():
                # A stale half-built target (should not happen): replace it.
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- debugpy for debug workers (EnvExecutor(..., debug=True)) ------------------------


def ensure_debugpy(root=None) -> Path:
    """A directory holding the caller's debugpy package, to append to a debug worker's path.

    debugpy is not vendored under a private name (it imports itself and its
    bundled pydevd by their own names), so it gets a directory of its own
    that holds nothing else: ``<root>/debugpy/<version>-<digest>/debugpy``,
    hard-linked (else copied) from the caller's installation once per
    distinct installation. The env is never modified.
    """
    spec = importlib.util.find_spec("debugpy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "debug=True needs the debugpy package where bayou runs (not in the env): "
            "pip install debugpy"
        )
    package = Path(list(spec.submodule_search_locations)[0]).resolve()
    root = Path(root) if root is not None else default_root()
    key = ("debugpy", str(root), str(package))
    with _lock:
        found = _cache.get(key)
        if found is not None and (found / _COMPLETE).exists():
            return found
        files = [
            p for p in sorted(package.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
        ]
        h = hashlib.sha256(str(package).encode())
        for p in files:
            st = p.stat()
            h.update(f"{p.relative_to(package)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        version = "unknown"
        version_file = package / "_version.py"
        if version_file.is_file():
            match = re.search(r'"version":\s*"([^"]+)"', version_file.read_text("utf-8"))
            version = match.group(1) if match else version
        parent = root / "debugpy"
        target = parent / f"{version}-{h.hexdigest()[:16]}"
        if not (target / _COMPLETE).exists():
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".debugpy-", dir=parent))
            try:
                for p in files:
                    out = tmp / "debugpy" / p.relative_to(package)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(p, out)
                    except OSError:
                        shutil.copy2(p, out)
                (tmp / _COMPLETE).write_text("ok\n")
                try:
                    os.rename(tmp, target)
                except OSError:
                    if not (target / _COMPLETE).exists():
                        raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        _cache[key] = target
        return target
