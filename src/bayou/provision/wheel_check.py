"""Check what uv just installed against each distribution's RECORD.

uv installs a wheel by hard-linking the files of its unpacked copy in the
shared cache (``pkgs/uv/archive-v0/...``) and does not re-check that copy.
A file there that was truncated or modified (a crash, a full disk, a stray
editor) would silently land in every new env. Each installed distribution
carries a RECORD with the size and sha256 of its files, so after an install

    installed_by(result) ──▶ damaged(site-packages, packages)
                               │ for each file inside site-packages listed
                               │ with a hash: size, then sha256 (mode "full")
                               ▼
                         [(distribution, file, what is wrong)]

`uv_step.install` then drops those packages from the uv cache and reinstalls
them once. Files outside site-packages (scripts, data) are skipped: installers
rewrite them (shebangs), so the wheel's hashes do not describe them.

``BAYOU_PIP_CACHE_VALIDATION``: ``full`` (default: size and sha256), ``fast``
(size only), or ``skip``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.utils import canonicalize_name

MODES = ("full", "fast", "skip")


def validation_mode() -> str:
    mode = os.environ.get("BAYOU_PIP_CACHE_VALIDATION", "full").strip().lower() or "full"
    if mode not in MODES:
        raise ValueError(f"BAYOU_PIP_CACHE_VALIDATION={mode!r}: expected 'full', 'fast' or 'skip'")
    return mode


def site_packages(python: Path) -> list[Path]:
    """The site-packages directories of the env whose interpreter is `python`."""
    prefix = python.parent.parent
    return sorted(p for p in prefix.glob("lib/python3*/site-packages") if p.is_dir())


def damaged(
    site_dirs: list[Path], packages: list[dict[str, str]], mode: str = "full"
) -> list[tuple[str, str, str]]:
    """(distribution name, file, problem) for every installed file that does
    not match its RECORD entry; empty when all match or mode is "skip"."""
    if mode == "skip":
        return []
    todo: list[tuple[str, str, Path, str, int | None]] = []
    for package in packages:
        record = _record_of(site_dirs, package["name"], package["version"])
        if record is None:
            continue  # nothing to check against (uv always writes one)
        for path, digest, size in _entries(record):
            todo.append((package["name"], path, record.parent.parent / path, digest, size))

    def check(item: tuple[str, str, Path, str, int | None]) -> tuple[str, str, str] | None:
        name, path, full_path, digest, size = item
        problem = _check(full_path, digest, size, mode)
        return (name, path, problem) if problem else None

    # hashlib releases the GIL on large buffers: threads use every core.
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return [found for found in pool.map(check, todo, chunksize=64) if found]


def _record_of(site_dirs: list[Path], name: str, version: str) -> Path | None:
    wanted = canonicalize_name(name)
    for site in site_dirs:
        for info in site.glob("*.dist-info"):
            dist, _, dist_version = info.name[: -len(".dist-info")].rpartition("-")
            if canonicalize_name(dist) == wanted and dist_version == version:
                record = info / "RECORD"
                return record if record.is_file() else None
    return None


def _entries(record: Path) -> Iterator[tuple[str, str, int | None]]:
    with open(record, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) < 3 or not row[1].startswith("sha256="):
                continue
            path = row[0]
            if path.startswith(("/", "..")) or ".." in Path(path).parts:
                continue  # outside site-packages: rewritten on install
            size = int(row[2]) if row[2].isdigit() else None
            yield path, row[1][len("sha256=") :], size


def _check(path: Path, digest: str, size: int | None, mode: str) -> str | None:
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size is not None and actual_size != size:
        return f"size {actual_size}, RECORD says {size}"
    if mode == "fast":
        return None
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    actual = base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode()
    return None if actual == digest else "sha256 differs from RECORD"
