"""Move a conda prefix that an external tool built somewhere else to its final path.

conda installers write the install prefix into some files (the package's
``prefix_placeholder`` is replaced at link time, text or binary) and into
the shebangs of the scripts they generate. py-rattler can link for a prefix
other than the directory it writes to; micromamba can too
(``--relocate-prefix``); conda and pixi cannot. So after such a tool built
the env at ``old`` and its files were moved under the build directory,
`relocate` rewrites ``old`` into ``new`` (the env's final path in the store)
where the installer put it, as conda-pack does when it unpacks:

    conda-meta/*.json ── paths_data.paths ─▶ files with a prefix_placeholder
                                             (text: replaced; binary: the
                                             C string rewritten and NUL-padded)
    bin/* with a ``#!`` line                ─▶ text replacement

Files are rewritten through a temporary file and a rename, never in place:
an installed file may be a hard link into the shared package cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def relocate(prefix: Path, old: str, new: str) -> list[str]:
    """Rewrite `old` to `new` in the files of the env at `prefix`; return those changed."""
    if old == new:
        return []
    targets: dict[str, str] = {}
    meta = prefix / "conda-meta"
    for record_file in sorted(meta.glob("*.json")) if meta.is_dir() else ():
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue
        for entry in (record.get("paths_data") or {}).get("paths", ()):
            rel = entry.get("_path") or entry.get("path")
            if not rel:
                continue
            if entry.get("prefix_placeholder"):
                targets[rel] = entry.get("file_mode") or "text"
            elif "entry_point" in str(entry.get("path_type", "")):
                targets[rel] = "text"
    bindir = prefix / "bin"
    if bindir.is_dir():
        for item in bindir.iterdir():
            targets.setdefault(f"bin/{item.name}", "shebang")
    changed = []
    for rel, mode in sorted(targets.items()):
        if _rewrite(prefix / rel, old.encode(), new.encode(), mode):
            changed.append(rel)
    return changed


def _rewrite(path: Path, old: bytes, new: bytes, mode: str) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            if mode == "shebang" and head != b"#!":
                return False  # not a script: never edit a binary we know nothing about
            data = head + fh.read()
    except OSError:
        return False
    if old not in data:
        return False
    if mode == "binary":
        updated = replace_binary(data, old, new)
    else:
        updated = data.replace(old, new)
    permissions = path.stat().st_mode
    tmp = path.with_name(path.name + ".bayou-relocate")
    tmp.write_bytes(updated)
    os.chmod(tmp, permissions)
    os.replace(tmp, path)
    return True


def replace_binary(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace `old` with `new` inside NUL-terminated strings, keeping every
    string's length (and so every offset in the file) by padding with NULs."""
    if len(new) > len(old):
        raise ValueError(
            f"cannot relocate a binary file to a longer prefix ({new!r} is longer than {old!r})"
        )
    out = bytearray()
    pos = 0
    while True:
        start = data.find(old, pos)
        if start < 0:
            out += data[pos:]
            return bytes(out)
        end = data.find(b"\0", start)
        end = len(data) if end < 0 else end
        segment = data[start:end]
        rewritten = segment.replace(old, new)
        out += data[pos:start] + rewritten + b"\0" * (len(segment) - len(rewritten))
        pos = end
