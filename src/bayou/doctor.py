"""``bayou doctor``: what bayou sees on this machine, for a bug report or a setup check.

The store and its size, the shared stores ($BAYOU_STORE_PATH) and the envs
they cannot serve (mounted elsewhere than where they were built), offline
mode, the conda/pip backends and the external tools found, and the Python
interpreters discovered. Reads only; never builds or downloads.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from . import interpreters
from .errors import ProvisionError
from .store import Store


def report(store: Store) -> int:
    """Print what bayou sees on this machine; the exit status (0)."""
    print(f"bayou {version()} on Python {sys.version.split()[0]} ({sys.executable})")
    print(f"store: {store.root}")
    envs = store.list()
    print(f"  {len(envs)} environment(s), {human_size(sum(e.size for e in envs))}")
    _shared_stores(store)
    offline = os.environ.get("BAYOU_OFFLINE", "").strip()
    print(f"offline: {'$BAYOU_OFFLINE=' + offline if offline else 'no'}")
    print("backends:")
    for dist in ("py-rattler", "uv"):
        try:
            print(f"  {dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            print(f"  {dist}: MISSING (reinstall bayou)")
    from .provision.uv_step import uv_binary

    print(f"  uv binary: {uv_binary()}")
    from .provision import external

    for tool in ("micromamba", "pixi", "conda"):
        try:
            found = external.find_tool(tool, store, allow_download=False)
        except ProvisionError:
            print(f"  {tool}: not found (optional; see docs/backends.md)")
        else:
            print(f"  {tool}: {found.path} (from {found.source})")
    print(f"  default backend: {os.environ.get('BAYOU_BACKEND') or 'rattler'}")
    print("python interpreters found:")
    for interp in interpreters.discover():
        print(f"  {interp.version_text:<8} {interp.path}")
    return 0


def _shared_stores(store: Store) -> None:
    """Each shared store: its envs, whether it is read-only or missing, and the
    envs it cannot serve because it is mounted elsewhere than where they were built."""
    shared = store.shared_stores()
    if not shared:
        print("shared stores ($BAYOU_STORE_PATH): none")
        return
    print("shared stores ($BAYOU_STORE_PATH), searched in this order after the store:")
    for other in shared:
        if not other.envs_dir.is_dir():
            print(f"  {other.root}: MISSING (no envs/ directory)")
            continue
        envs = other.list()
        mode = "read-only" if not os.access(other.root, os.W_OK) else "writable, never written"
        size = human_size(sum(e.size for e in envs))
        print(f"  {other.root} ({mode}): {len(envs)} environment(s), {size}")
        for env in envs:
            print(f"    {env.hash[:12]}  {env.record.get('name') or ''}")
        records = [(c.name, other.lookup(c.name)) for c in other.envs_dir.iterdir()]
        elsewhere = [r for h, r in records if r is not None and not other.in_place(h, r)]
        if elsewhere:
            print(
                f"    {len(elsewhere)} env(s) not used: built at another path "
                f"(e.g. {elsewhere[0].get('prefix')}); mount the store there"
            )


def version() -> str:
    from ._version import __version__

    return __version__


def human_size(size: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"
