"""``bayou env pack`` and ``bayou env unpack``: bundles on the command line.

Kept apart from `bayou.cli` (which only registers them) so the bundle
commands grow without growing the main command module. See `bayou.bundle`
for the format and docs/bundles.md for the guide.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from .store import Store, StoredEnv


def add_parsers(
    env_sub: argparse._SubParsersAction, find: Callable[[Store, str], StoredEnv]
) -> None:
    """`find` is the CLI's own lookup of a REF (its errors carry the exit code)."""
    pack = env_sub.add_parser(
        "pack", help="write one archive that rebuilds an env with no network"
    )
    pack.add_argument("ref", help="hash, hash prefix or name of a built env")
    pack.add_argument("-o", "--output", required=True, help="the bundle to write (.tar.gz)")
    pack.add_argument(
        "--xz", action="store_true", help="compress with xz: smaller, several times slower"
    )
    pack.set_defaults(func=cmd_pack, find=find)

    unpack = env_sub.add_parser(
        "unpack", help="install a bundle into the store as the env it was packed from"
    )
    unpack.add_argument("bundle", help="a bundle file, or an http(s) URL of one")
    unpack.add_argument("--timeout", type=float, help="give up after this many seconds")
    unpack.set_defaults(func=cmd_unpack)


def _store(args: argparse.Namespace) -> Store:
    return Store(args.store) if args.store else Store()


def cmd_pack(args: argparse.Namespace) -> int:
    from .bundle import pack
    from .bundle_read import read_manifest

    store = _store(args)
    found = args.find(store, args.ref)  # not found: exit code 3, as for `env show`
    started = time.monotonic()
    path = pack(found.hash, args.output, store=store, compression="xz" if args.xz else "gz")
    took = time.monotonic() - started
    manifest = read_manifest(path)
    print(
        f"packed {found.hash} into {path}: {path.stat().st_size / 1e6:.1f} MB, "
        f"{len(manifest['conda'])} conda package(s), {len(manifest['pip'])} wheel(s) "
        f"({took:.1f} s)"
    )
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from .provision.unpack import unpack

    started = time.monotonic()
    environment = unpack(args.bundle, store=_store(args), timeout=args.timeout)
    took = time.monotonic() - started
    source = args.bundle if "://" in args.bundle else Path(args.bundle).name
    print(
        f"{environment.hash}  {environment.prefix}  (python {environment.python_version}, "
        f"{took:.1f} s, from {source})"
    )
    return 0
