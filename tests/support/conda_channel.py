"""A local ``file://`` conda channel for the test suite, built once per machine.

The test machines reach PyPI but no conda channel, so the suite provisions real conda
environments (with py-rattler) from a channel made here out of what the machine has:

1. ``find_interpreter("3.11")`` discovers a CPython 3.11 (pyenv's ``versions/3.11.*``
   first, then ``PATH`` without pyenv shims) and ``_probe`` asks it for its version and
   layout (prefix, stdlib, libdir, ...).
2. ``build_channel`` hashes the inputs (each interpreter's full version, real path and
   mtime, plus ``RECIPE_VERSION``) into a key.  If ``<root>/channel-<key>`` exists it is
   returned at once.  Otherwise, under an ``fcntl`` lock on ``<root>/channel-<key>.lock``,
   the channel is built in a temporary sibling directory and ``os.rename``-d into place,
   so concurrent callers (pytest-xdist workers, several processes) see either nothing or
   a complete channel.
3. Each package is staged as a directory tree holding its payload plus ``info/``
   (``index.json``, ``paths.json``, ``files``, ``about.json``, ``link.json`` for noarch
   python) and packed as ``.conda`` with conda-package-handling:

   * ``linux-64/python-X.Y.Z``: the interpreter repackaged.  Its ELF files lose their
     DWARF debug info (``strip --strip-debug``, when binutils is there: 52 -> 26 MB) and
     carry an absolute RUNPATH to the source prefix, rewritten in place to ``$ORIGIN``-
     relative paths (``bin/python3.X`` -> ``$ORIGIN/../lib``, ``libpython`` ->
     ``$ORIGIN``, lib-dynload modules -> ``$ORIGIN/../..``).  ``libpython`` still holds
     the source prefix as its compiled-in ``PREFIX``, which ``getpath`` only falls back to
     when ``<prefix>/lib/pythonX.Y/os.py`` is missing; it is deliberately not declared as
     a binary placeholder (those only allow shorter target prefixes).  Text files that contain the source prefix (sysconfigdata,
     ``python3.X-config``, Makefile, ``python-config.py``, ``.pc`` files) are declared in
     ``paths.json`` with the source prefix itself as ``prefix_placeholder``, so the
     installer rewrites them to the target prefix.  The test suite, IDLE, tkinter,
     ensurepip, the static ``libpython*.a``, ``__pycache__`` and site-packages contents are
     left out; nothing is byte-compiled (Python writes ``__pycache__`` on first import).
   * ``noarch/bayou-demo-lib`` 1.0 and 2.0 (``noarch: python``): ``bayou_demo_lib``
     with ``__version__`` set to the package version, plus a ``.dist-info`` so pip/uv see
     it as installed (by conda).  The installer relinks ``site-packages/`` into the
     environment's ``lib/pythonX.Y/site-packages``.
   * ``noarch/bayou-demo-tool`` 0.1 (generic): ``bin/bayou-demo-tool`` (a POSIX sh
     script), ``etc/conda/env_vars.d/bayou-demo-tool.json`` and
     ``etc/conda/activate.d/bayou-demo-tool.sh``, to test activation.
   * ``noarch/bayou-demo-gpu`` 1.0 (generic): ``share/bayou-demo-gpu/README``, depending on
     the virtual package ``__cuda >=12``: it solves only where a CUDA driver is detected or
     ``CONDA_OVERRIDE_CUDA`` says there is one (GPU-ready envs built on CPU machines).

4. The channel is indexed with ``rattler.index.index_fs`` (``repodata.json`` only).

py-rattler can crash at interpreter exit, so every rattler call (indexing here, solving
and installing in ``create_env``) runs in a child ``python -c`` process, never in the
caller.  The channel has no absolute paths in it, so it can be moved or copied freely.

Only Linux (x86_64 / aarch64) CPython builds with the standard ``<prefix>/lib/pythonX.Y``
layout are supported.  Run ``python -m tests.support.conda_channel --python 3.11 --out DIR``
to build a channel by hand; it prints the channel directory.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RECIPE_VERSION",
    "build_channel",
    "create_env",
    "default_cache_root",
    "find_interpreter",
    "read_runpath",
]

#: Bump whenever what this module puts into a channel changes: it is part of the cache key.
RECIPE_VERSION = "2"

#: zstd level for the ``.conda`` payloads.  For python 3.11 (26 MB staged): level 3 -> 7.1 MB in
#: 1.1 s (whole channel build), 9 -> 6.4 MB in 1.6 s, 19 (conda's default) -> 5.6 MB in 9 s.
_ZSTD_LEVEL = 9

DEMO_LIB_VERSIONS = ("1.0", "2.0")
DEMO_TOOL_VERSION = "0.1"
DEMO_GPU_VERSION = "1.0"

_SUBDIRS = {"x86_64": "linux-64", "aarch64": "linux-aarch64"}

# Leave these out of lib/pythonX.Y (names relative to it, or matched anywhere for _ANYWHERE).
_STDLIB_SKIP_TOP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "ensurepip",
}
_STDLIB_SKIP_ANYWHERE = {"__pycache__"}
_STDLIB_SKIP_NESTED = {("lib2to3", "tests")}
_SITE_DIRS = {"site-packages", "dist-packages"}


# --------------------------------------------------------------------------------------
# Interpreter discovery
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpreter:
    """What the channel build needs to know about one CPython installation."""

    executable: Path  # the real (symlink-resolved) binary
    version: str  # "3.11.7"
    prefix: Path  # sys.base_prefix as the interpreter reports it
    stdlib: Path
    include: Path | None
    libdir: Path | None  # where libpythonX.Y.so lives, when built with --enable-shared
    ldlibrary: str | None  # "libpython3.11.so"

    @property
    def short_version(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def fingerprint(self) -> tuple[str, str, int]:
        """Version, path and mtime: what the cache key and the build string hash."""
        return self.version, str(self.executable), self.executable.stat().st_mtime_ns


def _pyenv_roots() -> list[Path]:
    roots: list[Path] = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            if out:
                roots.append(Path(out))
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    return list(dict.fromkeys(roots))


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_interpreter(version: str) -> Path:
    """Find a CPython ``version`` ("3.11") interpreter on this machine.

    Looks in ``<pyenv root>/versions/<version>.N/bin/python<version>`` (pyenv root from
    ``pyenv root``, ``$PYENV_ROOT`` or ``~/.pyenv``; highest ``N`` wins), then for
    ``python<version>`` on ``PATH``, skipping pyenv shims.  Raises ``LookupError``.
    """
    if not re.fullmatch(r"\d+\.\d+", version):
        raise ValueError(f"expected a MAJOR.MINOR version like '3.11', got {version!r}")
    name = f"python{version}"
    pattern = re.compile(rf"{re.escape(version)}\.(\d+)")
    for root in _pyenv_roots():
        versions = root / "versions"
        if not versions.is_dir():
            continue
        found = [
            (int(m.group(1)), d / "bin" / name)
            for d in versions.iterdir()
            if (m := pattern.fullmatch(d.name)) and _is_executable(d / "bin" / name)
        ]
        if found:
            return max(found)[1]
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or "shims" in Path(entry).parts:
            continue
        candidate = Path(entry) / name
        if _is_executable(candidate):
            return candidate
    raise LookupError(f"no {name} found in pyenv versions or on PATH")


_PROBE = """
import json, os, sys, sysconfig
v = sys.version_info
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": "%d.%d.%d" % v[:3],
    "releaselevel": v.releaselevel,
    "executable": os.path.realpath(sys.executable),
    "prefix": sys.base_prefix,
    "stdlib": sysconfig.get_path("stdlib"),
    "include": sysconfig.get_path("include"),
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
}))
"""


@functools.cache
def _probe(executable: Path) -> Interpreter:
    out = subprocess.run(
        [str(executable), "-I", "-S", "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    data = json.loads(out)
    if data["implementation"] != "cpython":
        raise ValueError(f"{executable} is not CPython")
    prefix = Path(data["prefix"])
    short = ".".join(data["version"].split(".")[:2])
    stdlib = Path(data["stdlib"])
    if stdlib != prefix / "lib" / f"python{short}":
        raise ValueError(f"{executable}: unsupported layout (stdlib at {stdlib})")
    include = Path(data["include"]) if data["include"] else None
    return Interpreter(
        executable=Path(data["executable"]),
        version=data["version"],
        prefix=prefix,
        stdlib=stdlib,
        include=include if include and include.is_dir() else None,
        libdir=Path(data["libdir"]) if data["shared"] and data["libdir"] else None,
        ldlibrary=data["ldlibrary"] if data["shared"] else None,
    )


# --------------------------------------------------------------------------------------
# Channel cache
# --------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """``$BAYOU_TEST_CACHE`` or ``~/.cache/bayou-tests``."""
    env = os.environ.get("BAYOU_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bayou-tests"


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def build_channel(python_versions: Sequence[str] = ("3.11",), root: Path | None = None) -> Path:
    """Return the channel directory (its URL is ``path.as_uri()``), building it if needed.

    The channel lives at ``<root>/channel-<key>`` (``root`` defaults to
    ``default_cache_root()``), where ``key`` hashes the discovered interpreters' versions,
    real paths and mtimes and ``RECIPE_VERSION``.  A second call with the same inputs returns
    without building.  Safe to call from several processes at once.
    """
    if not python_versions:
        raise ValueError("python_versions must not be empty")
    interpreters = sorted(
        {_probe(find_interpreter(v)) for v in python_versions},
        key=lambda i: tuple(int(p) for p in i.version.split(".")),
    )
    key = _digest(RECIPE_VERSION, [i.fingerprint for i in interpreters], _subdir())[:16]
    root = Path(root) if root is not None else default_cache_root()
    final = root / f"channel-{key}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"channel-{key}.lock"):
        if final.is_dir():  # built by another process while we waited
            return final
        for stale in root.glob(f".tmp-channel-{key}-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-channel-{key}-", dir=root))
        try:
            _build_into(tmp, interpreters)
            tmp.chmod(0o755)  # mkdtemp makes it 0700
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _subdir() -> str:
    machine = platform.machine()
    if sys.platform != "linux" or machine not in _SUBDIRS:
        raise RuntimeError(f"conda test channel: unsupported platform {sys.platform}/{machine}")
    return _SUBDIRS[machine]


def _build_into(channel: Path, interpreters: Sequence[Interpreter]) -> None:
    subdir = _subdir()
    (channel / subdir).mkdir()
    (channel / "noarch").mkdir()
    with tempfile.TemporaryDirectory(prefix="stage-", dir=channel.parent) as scratch:
        scratch_dir = Path(scratch)
        for interp in interpreters:
            _build_python(interp, scratch_dir / f"python-{interp.version}", channel / subdir)
        for version in DEMO_LIB_VERSIONS:
            _build_demo_lib(version, scratch_dir / f"demo-lib-{version}", channel / "noarch")
        _build_demo_tool(scratch_dir / "demo-tool", channel / "noarch")
        _build_demo_gpu(scratch_dir / "demo-gpu", channel / "noarch")
    _index(channel)


_INDEX = """
import asyncio, os, sys
from rattler.index import index_fs
asyncio.run(index_fs(sys.argv[1], write_zst=False, write_shards=False, force=True))
os._exit(0)  # py-rattler may segfault during interpreter finalization
"""


def _index(channel: Path) -> None:
    _run_child(_INDEX, str(channel))


def _run_child(code: str, *args: str, timeout: float = 600) -> str:
    """Run ``code`` in a fresh interpreter (for rattler calls); return its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"child process failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


# --------------------------------------------------------------------------------------
# Package writing
# --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_package(
    stage: Path,
    out_dir: Path,
    index: dict[str, object],
    placeholders: dict[str, str] | None = None,
    noarch_python: bool = False,
) -> Path:
    """Write ``info/`` for the payload already in ``stage`` and pack it as ``.conda``."""
    import conda_package_handling.api as cph

    placeholders = placeholders or {}
    payload = sorted(
        p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_symlink() or p.is_file()
    )
    entries = []
    for rel in payload:
        path = stage / rel
        if path.is_symlink():
            entry: dict[str, object] = {"_path": rel, "path_type": "softlink"}
        else:
            entry = {
                "_path": rel,
                "path_type": "hardlink",
                "sha256": _sha256(path),
                "size_in_bytes": path.stat().st_size,
            }
            if rel in placeholders:
                entry.update(file_mode="text", prefix_placeholder=placeholders[rel])
        entries.append(entry)

    info = stage / "info"
    info.mkdir()
    index = {"build_number": 0, "timestamp": int(time.time() * 1000), **index}
    (info / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (info / "paths.json").write_text(
        json.dumps({"paths": entries, "paths_version": 1}, indent=2) + "\n"
    )
    (info / "files").write_text("".join(f"{rel}\n" for rel in payload))
    about = {"summary": f"bayou test channel: {index['name']}", "license": index["license"]}
    (info / "about.json").write_text(json.dumps(about, indent=2) + "\n")
    if noarch_python:
        link = {"noarch": {"type": "python"}, "package_metadata_version": 1}
        (info / "link.json").write_text(json.dumps(link, indent=2) + "\n")

    name = f"{index['name']}-{index['version']}-{index['build']}.conda"
    files = payload + sorted(p.relative_to(stage).as_posix() for p in info.iterdir())
    cph.create(str(stage), files, str(out_dir / name), compression_level=_ZSTD_LEVEL)
    return out_dir / name


# --- python ---------------------------------------------------------------------------


def _stdlib_ignore(stdlib: Path) -> Callable[[str, list[str]], set[str]]:
    """A ``shutil.copytree`` ignore callback that trims the stdlib (see ``_STDLIB_SKIP_*``)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(stdlib).parts
        skip = {n for n in names if n in _STDLIB_SKIP_ANYWHERE or n.endswith((".pyc", ".pyo"))}
        if not rel:
            skip |= _STDLIB_SKIP_TOP & set(names)
        elif rel[0] in _SITE_DIRS and len(rel) == 1:
            skip |= {n for n in names if n != "README.txt"}
        elif rel[0].startswith("config-"):
            skip |= {n for n in names if n.startswith("libpython") and n.endswith(".a")}
        elif rel == ("lib-dynload",):
            skip |= {n for n in names if n.startswith("_tkinter")}
        skip |= {n for n in names if (*rel, n) in _STDLIB_SKIP_NESTED}
        return skip

    return ignore


def _copy_entry(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst)


def _stage_python(interp: Interpreter, stage: Path) -> None:
    short = interp.short_version
    exe = f"python{short}"
    _copy_entry(interp.executable, stage / "bin" / exe)
    for link in ("python", "python3"):
        os.symlink(exe, stage / "bin" / link)
    config = interp.prefix / "bin" / f"{exe}-config"
    if config.is_file():
        _copy_entry(config, stage / "bin" / config.name)
        for link in ("python-config", "python3-config"):
            os.symlink(config.name, stage / "bin" / link)

    if interp.libdir is not None and interp.ldlibrary:
        lib = stage / "lib"
        for src in sorted(interp.libdir.glob("libpython*.so*")):
            _copy_entry(src, lib / src.name)
        pkgconfig = interp.libdir / "pkgconfig"
        if pkgconfig.is_dir():
            for src in sorted(pkgconfig.glob("python*.pc")):
                _copy_entry(src, lib / "pkgconfig" / src.name)
    elif (interp.prefix / "lib" / "pkgconfig").is_dir():
        for src in sorted((interp.prefix / "lib" / "pkgconfig").glob("python*.pc")):
            _copy_entry(src, stage / "lib" / "pkgconfig" / src.name)

    shutil.copytree(
        interp.stdlib,
        stage / "lib" / exe,
        symlinks=True,
        ignore=_stdlib_ignore(interp.stdlib),
    )
    if interp.include is not None:
        shutil.copytree(interp.include, stage / "include" / interp.include.name, symlinks=True)


def _prefix_spellings(prefix: Path) -> list[bytes]:
    spellings = {str(prefix), os.path.realpath(prefix)}
    return sorted((s.encode() for s in spellings), key=len, reverse=True)


def _relocate(stage: Path, prefix: Path) -> dict[str, str]:
    """Make ELF RUNPATHs ``$ORIGIN``-relative; return ``{text file: placeholder}``."""
    spellings = _prefix_spellings(prefix)
    placeholders: dict[str, str] = {}
    files = [p for p in sorted(stage.rglob("*")) if p.is_file() and not p.is_symlink()]
    elf_files = [p for p in files if _is_elf(p)]
    _strip_debug(elf_files)
    for path in elf_files:
        _patch_runpath(path, stage, spellings)
    for path in set(files).difference(elf_files):
        data = path.read_bytes()
        found = next((s for s in spellings if s in data), None)
        if found is None:
            continue
        if b"\0" in data:
            raise RuntimeError(f"binary non-ELF file refers to the source prefix: {path}")
        placeholders[path.relative_to(stage).as_posix()] = found.decode()
    return placeholders


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"\x7fELF"


def _strip_debug(paths: Sequence[Path]) -> None:
    """Drop DWARF debug info (libpython and lib-dynload are ~2/3 debug info in pyenv builds).

    Uses binutils' ``strip`` when there is one; without it the package is just bigger.
    """
    strip = shutil.which("strip")
    if strip and paths:
        subprocess.run([strip, "--strip-debug", *map(str, paths)], check=True)


def _build_python(interp: Interpreter, stage: Path, out_dir: Path) -> Path:
    _stage_python(interp, stage)
    placeholders = _relocate(stage, interp.prefix)
    build_hash = _digest(RECIPE_VERSION, interp.fingerprint)[:8]
    index = {
        "name": "python",
        "version": interp.version,
        "build": f"h{build_hash}_0_cpython",
        "depends": [],
        "license": "PSF-2.0",
        "platform": "linux",
        "arch": platform.machine(),
        "subdir": _subdir(),
    }
    return _write_package(stage, out_dir, index, placeholders)


# --- ELF RUNPATH rewriting --------------------------------------------------------------

_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 14, 15, 29
_SHT_DYNSYM = 11


def _dynamic(data: bytes | bytearray) -> tuple[int, list[tuple[int, int]]] | None:
    """``(file offset of the dynamic string table, dynamic tags)`` of a 64-bit LE ELF."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    # (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz)
    segments = [struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    dynamic = next((s for s in segments if s[0] == _PT_DYNAMIC), None)
    if dynamic is None:
        return None
    tags: list[tuple[int, int]] = []
    offset = dynamic[2]
    while (entry := struct.unpack_from("<qQ", data, offset))[0] != _DT_NULL:
        tags.append(entry)
        offset += 16
    vaddr = next(v for t, v in tags if t == _DT_STRTAB)
    strtab = next(
        s[2] + vaddr - s[3] for s in segments if s[0] == _PT_LOAD and s[3] <= vaddr < s[3] + s[5]
    )
    return strtab, tags


def read_runpath(path: Path) -> list[str]:
    """The DT_RUNPATH / DT_RPATH strings of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    parsed = _dynamic(data)
    if parsed is None:
        return []
    strtab, tags = parsed
    return [
        data[strtab + v : data.index(b"\0", strtab + v)].decode()
        for t, v in tags
        if t in (_DT_RPATH, _DT_RUNPATH)
    ]


def _dynstr_references(data: bytes | bytearray, tags: list[tuple[int, int]]) -> set[int]:
    """Dynamic string table offsets used by DT_NEEDED/DT_SONAME and ``.dynsym`` names."""
    refs = {v for t, v in tags if t in (_DT_NEEDED, _DT_SONAME)}
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    for i in range(shnum if shoff else 0):
        # (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info,
        #  sh_addralign, sh_entsize)
        sh = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        if sh[1] == _SHT_DYNSYM and sh[9]:
            refs.update(
                struct.unpack_from("<I", data, sh[4] + j * sh[9])[0] for j in range(sh[5] // sh[9])
            )
    return refs


def _patch_runpath(path: Path, stage: Path, spellings: Sequence[bytes]) -> None:
    """Rewrite RUNPATH entries under the source prefix as ``$ORIGIN``-relative, in place.

    The new string is never longer than the old one (``$ORIGIN/../lib`` vs
    ``/some/prefix/lib``), so it is written over the old one and padded with NULs: no
    section moves, no patchelf.  Refuses if another dynamic string shares the old bytes
    (linkers may merge string tails).
    """
    data = bytearray(path.read_bytes())
    parsed = _dynamic(data)
    if parsed is None:
        return  # static executable, object file, ...
    strtab, tags = parsed
    changed = False
    for tag, value in tags:
        if tag not in (_DT_RPATH, _DT_RUNPATH):
            continue
        start = strtab + value
        end = data.index(b"\0", start)
        old = data[start:end].decode()
        new = ":".join(_relative_entry(entry, path, stage, spellings) for entry in old.split(":"))
        if new == old:
            continue
        if len(new) > len(old):
            raise RuntimeError(f"{path}: new RUNPATH {new!r} is longer than {old!r}")
        if any(value < ref < value + len(old) for ref in _dynstr_references(data, tags)):
            raise RuntimeError(f"{path}: RUNPATH string shares bytes with another symbol")
        data[start:end] = new.encode().ljust(end - start, b"\0")
        changed = True
    if changed:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR)
        path.write_bytes(data)
        path.chmod(mode)


def _relative_entry(entry: str, path: Path, stage: Path, spellings: Sequence[bytes]) -> str:
    for spelling in spellings:
        prefix = spelling.decode()
        if entry == prefix or entry.startswith(prefix + "/"):
            rel = os.path.relpath(stage / entry[len(prefix) :].lstrip("/"), path.parent)
            return "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"
    return entry


# --- demo packages --------------------------------------------------------------------


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _build_demo_lib(version: str, stage: Path, out_dir: Path) -> Path:
    site = stage / "site-packages"
    _write_file(
        site / "bayou_demo_lib" / "__init__.py",
        f'"""Demo package of the bayou test channel."""\n\n__version__ = "{version}"\n',
    )
    dist_info = site / f"bayou_demo_lib-{version}.dist-info"
    _write_file(
        dist_info / "METADATA",
        f"Metadata-Version: 2.1\nName: bayou-demo-lib\nVersion: {version}\n",
    )
    _write_file(dist_info / "INSTALLER", "conda\n")
    record = [
        f"{p.relative_to(site).as_posix()},sha256={_sha256(p)},{p.stat().st_size}"
        for p in sorted(site.rglob("*"))
        if p.is_file()
    ]
    record.append(f"{dist_info.name}/RECORD,,")
    _write_file(dist_info / "RECORD", "\n".join(record) + "\n")
    index = {
        "name": "bayou-demo-lib",
        "version": version,
        "build": f"pyh{_digest(RECIPE_VERSION, version)[:8]}_0",
        "depends": ["python"],
        "license": "MIT",
        "noarch": "python",
        "subdir": "noarch",
    }
    return _write_package(stage, out_dir, index, noarch_python=True)


_DEMO_TOOL = """\
#!/bin/sh
echo "bayou-demo-tool ok"
echo "BAYOU_DEMO_VAR=${BAYOU_DEMO_VAR-}"
echo "BAYOU_DEMO_ACTIVATED=${BAYOU_DEMO_ACTIVATED-}"
"""


def _build_demo_tool(stage: Path, out_dir: Path) -> Path:
    _write_file(stage / "bin" / "bayou-demo-tool", _DEMO_TOOL, 0o755)
    _write_file(
        stage / "etc" / "conda" / "env_vars.d" / "bayou-demo-tool.json",
        json.dumps({"BAYOU_DEMO_VAR": "from-env-vars-d"}, indent=2) + "\n",
    )
    _write_file(
        stage / "etc" / "conda" / "activate.d" / "bayou-demo-tool.sh",
        'export BAYOU_DEMO_ACTIVATED="yes:$CONDA_PREFIX"\n',
    )
    index = {
        "name": "bayou-demo-tool",
        "version": DEMO_TOOL_VERSION,
        "build": f"h{_digest(RECIPE_VERSION, DEMO_TOOL_VERSION)[:8]}_0",
        "depends": [],
        "license": "MIT",
        "noarch": "generic",
        "subdir": "noarch",
    }
    return _write_package(stage, out_dir, index)


def _build_demo_gpu(stage: Path, out_dir: Path) -> Path:
    _write_file(
        stage / "share" / "bayou-demo-gpu" / "README",
        "A package that needs a CUDA driver (the virtual package __cuda >=12).\n",
    )
    index = {
        "name": "bayou-demo-gpu",
        "version": DEMO_GPU_VERSION,
        "build": f"cuda12_h{_digest(RECIPE_VERSION, DEMO_GPU_VERSION)[:8]}_0",
        "depends": ["__cuda >=12"],
        "license": "MIT",
        "noarch": "generic",
        "subdir": "noarch",
    }
    return _write_package(stage, out_dir, index)


# --------------------------------------------------------------------------------------
# Provisioning (test helper)
# --------------------------------------------------------------------------------------

_CREATE_ENV = """
import asyncio, json, os, sys
import rattler

channel, prefix, alternative, specs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

async def main():
    records = await rattler.solve(
        sources=[channel], specs=specs, virtual_packages=rattler.VirtualPackage.detect()
    )
    await rattler.install(
        records, prefix, show_progress=False, alternative_target_prefix=alternative or None
    )
    return records

records = asyncio.run(main())
print(json.dumps({r.name.normalized: str(r.version) for r in records}), flush=True)
os._exit(0)  # py-rattler may segfault during interpreter finalization
"""


def create_env(
    channel: Path,
    specs: Sequence[str],
    prefix: Path,
    *,
    alternative_target_prefix: Path | None = None,
) -> dict[str, str]:
    """Solve ``specs`` against ``channel`` and install into ``prefix``, in a child process.

    Returns ``{package name: version}`` of what was installed.  Test helper only: bayou's
    own provisioning code is what the tests exercise.  Note that py-rattler parses specs
    strictly: ``"bayou-demo-lib 1.0"`` is an error, write ``"bayou-demo-lib ==1.0"``.
    """
    out = _run_child(
        _CREATE_ENV,
        channel.as_uri(),
        str(prefix),
        str(alternative_target_prefix or ""),
        *specs,
    )
    return json.loads(out.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.conda_channel",
        description="Build (or find cached) the bayou test conda channel; print its path.",
    )
    parser.add_argument(
        "--python",
        action="append",
        dest="pythons",
        metavar="X.Y",
        help="Python version to package (repeatable; default: 3.11)",
    )
    parser.add_argument("--out", type=Path, help="cache root (default: %(default)s)")
    parser.set_defaults(out=None)
    args = parser.parse_args(argv)
    print(build_channel(tuple(args.pythons or ("3.11",)), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
