"""Bundles: one archive that rebuilds an env with no network (`pack`; `unpack` is
`bayou.provision.unpack`).

A bundle is a compressed tar whose first member is its manifest, so a reader
knows what it holds (platform, Python, the env's identity) before reading the
rest::

    bayou-bundle/manifest.json     format, the env's spec and hash, platform, Python,
                                   its packages, and the sha256 of every other member
    bayou-bundle/pixi.lock         conda envs: the solved records as rattler wrote them
                                   (plus the pip part, as `bayou env export` gives it)
    bayou-bundle/requirements.txt  the pip part: ``name==version --hash=sha256:...``
    bayou-bundle/conda/<name-version-build>/...   each conda package, extracted,
                                   copied from the package cache
    bayou-bundle/wheels/<file>.whl the wheel each pip package was installed from

Why these pieces:

* **Conda packages as extracted trees.** py-rattler's package cache keeps no
  archives, only their extracted contents. Each tree is checked against its
  own ``info/paths.json`` (every file's sha256) when it is packed, and the
  unpacking side hands the trees to rattler as its package cache (full
  validation: every file checked again), installing the lock's records with
  their original URLs, channels and hashes. Nothing is re-downloaded, and the
  env's records are those of the env that was packed.
* **Wheels fetched at pack time.** uv's cache keeps wheels unzipped, in a
  layout private to each uv version, so the original files are looked up
  (`lockexport.pypi_entries`: the wheel whose tags the env's ``WHEEL`` files
  list, with the index's sha256) and downloaded, each checked against that
  hash; a locked env's own URLs and hashes are used as they are. Packing
  therefore needs the package index once (for the pip part only). A package
  installed from an sdist has no wheel to carry and is refused, named.
* **tar.gz, from the standard library.** Every Python (and ``tar``) reads it,
  the workers unpacking it need nothing installed, and gzip costs little
  time: the wheels and most binaries are compressed already. ``xz`` is
  offered for smaller bundles at several times the packing time; zstd would
  need a package on both sides (it is in the standard library only from
  Python 3.14).

The archive is written to a temporary file beside the target and renamed
into place, so a failed or interrupted pack leaves no partial bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from .env import Env, conda_platform
from .errors import BundleError, ProvisionError
from .store import Store, StoredEnv, pick

FORMAT = "bayou-bundle"
FORMAT_VERSION = 1
ROOT = "bayou-bundle"  # every member lives under this directory
MANIFEST = "manifest.json"
LOCK = "pixi.lock"
REQUIREMENTS = "requirements.txt"
COMPRESSIONS = {"gz": ("w:gz", {"compresslevel": 6}), "xz": ("w:xz", {"preset": 6})}
_BLOCK = 1 << 20

__all__ = ["pack", "bundle_file_name", "FORMAT", "FORMAT_VERSION", "ROOT", "MANIFEST"]


@dataclass(frozen=True)
class _Member:
    """One member to write: `source` on disk (a file, a symlink, a directory) or `data`."""

    name: str  # relative to ROOT
    source: Path | None = None
    data: bytes | None = None


def bundle_file_name(env: Env, compression: str = "gz") -> str:
    """The file name `EnvPlugin.from_store` gives an env's bundle: its hash names it."""
    return f"bayou-{env.hash}.tar.{compression}"


def pack(
    env: Env | str,
    path: str | os.PathLike[str],
    *,
    store: Store | str | os.PathLike[str] | None = None,
    compression: str = "gz",
) -> Path:
    """Write one archive holding everything that rebuilds `env` without a network.

    `env` is a `bayou.Env` (built first if no store has it) or the hash, hash
    prefix or name of a built env. The env is looked up in `store` (default:
    ``$BAYOU_HOME``), then in the shared stores. `compression` is ``"gz"``
    (default) or ``"xz"`` (smaller, slower). Returns the bundle's path; install
    it with `bayou.unpack` (``bayou env unpack``)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    home = store if isinstance(store, Store) else Store(store)
    found = _locate(env, home)
    record = found.record
    target = Path(path).expanduser().absolute()
    spec = record.get("spec") or {}
    if record.get("kind") not in ("conda", "venv") or spec.get("kind") not in ("spec", "lock"):
        raise BundleError(f"{found.hash}: only envs bayou built can be packed", bundle=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    if record["kind"] == "conda":
        _lock_path(record, found)  # refused before anything is downloaded
    work = Path(tempfile.mkdtemp(prefix=".bayou-pack-", dir=target.parent))
    try:
        wheels = _fetch_wheels(record, found, home, work / "wheels", str(target))
        members = [_Member(REQUIREMENTS, data=_requirements(wheels).encode())]
        conda: list[dict[str, str]] = []
        trees: list[Path] = []
        if record["kind"] == "conda":
            members.append(_Member(LOCK, data=_lock_text(record, found, wheels).encode()))
            for package in record.get("conda_packages") or []:
                tree = _cached_tree(package, found, home, str(target))
                conda.append({"pin": _pin(package), "dir": f"conda/{tree.name}"})
                trees.append(tree)
                members += _tree_members(tree, f"conda/{tree.name}")
        for wheel in wheels:
            members.append(
                _Member(f"wheels/{wheel['file']}", source=work / "wheels" / wheel["file"])
            )
        files = _checksums(members)
        _check_trees(conda, trees, files, str(target))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bayou_version": _bayou_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hash": record["hash"],
            "name": record.get("name"),
            "kind": record["kind"],
            "platform": record.get("platform") or conda_platform(),
            "python": ".".join(str(record["python_version"]).split(".")[:2]),
            "python_version": record["python_version"],
            "spec": spec,
            "virtual_packages": (record.get("virtual_packages") or {}).get("required", []),
            "conda": conda,
            "pip": [{k: w[k] for k in ("name", "version", "file", "sha256")} for w in wheels],
            "lock": LOCK if record["kind"] == "conda" else None,
            "requirements": REQUIREMENTS,
            "files": files,
        }
        _write(target, manifest, members, compression)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# -- which env --------------------------------------------------------------------


def _locate(env: Env | str, home: Store) -> StoredEnv:
    """The built env: an `Env` (provisioned when no store has it) or a reference."""
    if isinstance(env, str):
        stores = [home, *home.shared_stores()]
        envs = [e for s in stores for e in s.list()]
        try:
            return pick(envs, env, " or ".join(str(s.envs_dir) for s in stores))
        except KeyError as exc:
            raise BundleError(f"cannot pack: {exc.args[0]}") from None
    if not isinstance(env, Env):
        raise TypeError(f"pack() takes a bayou.Env or an env's name or hash, not {type(env)}")
    if env.kind in ("existing", "current"):
        raise BundleError(f"cannot pack {env!r}: only envs bayou built (in a store) can be packed")
    found = home.find(env.hash)
    if found is None:
        from .provision import provision

        provision(env, store=home)
        found = home.find(env.hash)
    assert found is not None
    owner, record = found
    return StoredEnv(env.hash, owner.env_dir(env.hash), record, 0.0, owner.shared)


# -- the pip part -----------------------------------------------------------------


def _fetch_wheels(
    record: dict[str, Any], found: StoredEnv, home: Store, into: Path, bundle: str
) -> list[dict[str, str]]:
    """The wheel of each pip package, downloaded (or copied) into `into`, hash checked."""
    installed = record.get("pip_packages") or []
    if not installed:
        return []
    files = _pip_sources(record, found, home)
    into.mkdir(parents=True, exist_ok=True)
    wheels = []
    for package in installed:
        source = files.get(package["name"])
        if source is None:
            raise BundleError(
                f"no file is known for the pip package {package['name']} {package['version']}",
                bundle=bundle,
                package=f"{package['name']}=={package['version']}",
            )
        url, sha256 = source
        name = unquote(urlparse(url).path.rsplit("/", 1)[-1]) if "://" in url else Path(url).name
        if not name.endswith(".whl"):
            raise BundleError(
                f"{package['name']} {package['version']} was installed from a source "
                f"distribution ({name}): a bundle carries wheels only (build a wheel, e.g. "
                "with `uv build --wheel`, and install the env from it)",
                bundle=bundle,
                package=f"{package['name']}=={package['version']}",
            )
        _download(url, into / name, sha256, f"{package['name']}=={package['version']}", bundle)
        wheels.append({**package, "file": name, "url": url, "sha256": sha256})
    return wheels


def _pip_sources(
    record: dict[str, Any], found: StoredEnv, home: Store
) -> dict[str, tuple[str, str]]:
    """name -> (URL or path, sha256) of the file each pip package was installed from."""
    spec = record.get("spec") or {}
    if spec.get("kind") == "lock":  # the lock names its files and their hashes
        lock = Env.from_dict(spec).lock
        assert lock is not None  # a locked env has one
        return {p.name: (p.url, p.sha256 or "") for p in lock.pypi}
    from .lockexport import pypi_entries
    from .provision.tools import offline_requested

    if offline_requested():
        raise BundleError(
            f"offline ($BAYOU_OFFLINE): {found.hash} has pip packages, and packing them "
            "looks up and downloads their wheels from the package index once (uv's cache "
            "keeps no wheel files); pack where the index is reachable"
        )
    try:
        entries = pypi_entries(record, found.prefix, home.uv_cache)
    except ProvisionError as exc:
        raise BundleError(
            f"packing the pip part needs the package index once: {exc}",
            package=exc.package,
            output=exc.output,
        ) from None
    return {e["name"]: (e["pypi"], e["sha256"]) for e in entries}


def _download(url: str, path: Path, sha256: str, package: str, bundle: str) -> None:
    digest = hashlib.sha256()
    try:
        with open(path, "wb") as out:
            for block in _read_url(url):
                digest.update(block)
                out.write(block)
    except OSError as exc:
        raise BundleError(
            f"could not fetch {url} for {package}: {exc}", bundle=bundle, package=package
        ) from None
    if sha256 and digest.hexdigest() != sha256:
        raise BundleError(
            f"{url} does not match its sha256 ({digest.hexdigest()}, expected {sha256})",
            bundle=bundle,
            package=package,
        )


def _read_url(url: str) -> Iterator[bytes]:
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        import requests

        from .provision.tools import offline_requested

        if offline_requested():
            raise OSError("offline ($BAYOU_OFFLINE): not downloading it")

        try:
            with requests.get(url, stream=True, timeout=(15, 120)) as response:
                response.raise_for_status()
                yield from response.iter_content(_BLOCK)
        except requests.RequestException as exc:
            raise OSError(str(exc)) from None
        return
    local = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
    with open(local, "rb") as fh:
        yield from iter(lambda: fh.read(_BLOCK), b"")


def _requirements(wheels: list[dict[str, str]]) -> str:
    """pip's hash-checking format: ``pip install --no-index --find-links wheels/
    --require-hashes -r requirements.txt`` installs it too."""
    lines = [f"{w['name']}=={w['version']} --hash=sha256:{w['sha256']}" for w in wheels]
    return "".join(line + "\n" for line in lines)


# -- the conda part ---------------------------------------------------------------


def _lock_text(record: dict[str, Any], found: StoredEnv, wheels: list[dict[str, str]]) -> str:
    """The env's lock as rattler wrote it, with its pip part (as `env export` adds it)."""
    import yaml

    text = _lock_path(record, found).read_text()
    if record["spec"].get("kind") == "lock" or not wheels:
        return text  # a locked env's lock has its pip part already
    data = yaml.safe_load(text)
    entries = [
        {"pypi": w["url"], "name": w["name"], "version": w["version"], "sha256": w["sha256"]}
        for w in wheels
    ]
    environment = data["environments"]["default"]["packages"]
    key = next(iter(environment))
    environment[key] += [{"pypi": e["pypi"]} for e in entries]
    data["packages"] += entries
    return str(yaml.safe_dump(data, sort_keys=False))


def _lock_path(record: dict[str, Any], found: StoredEnv) -> Path:
    path = found.prefix / ".bayou" / "conda-lock.yml"
    if not path.is_file():
        backend = record.get("backend") or "?"
        raise BundleError(
            f"{found.hash} was built by {backend}, which leaves no lock of its conda "
            "packages: bundles are made from envs py-rattler built (the default backend)"
        )
    return path


def _pin(package: dict[str, Any]) -> str:
    return f"{package['name']}=={package['version']}={package['build']}"


def _cached_tree(package: dict[str, Any], found: StoredEnv, home: Store, bundle: str) -> Path:
    """The extracted package in a package cache: the env's store's, then the caller's."""
    stem = str(package.get("file_name") or "")
    for suffix in (".conda", ".tar.bz2"):
        stem = stem.removesuffix(suffix)
    stem = stem or f"{package['name']}-{package['version']}-{package['build']}"
    owner = Store(found.store_root, shared=found.shared)
    caches = list(dict.fromkeys([owner.conda_cache, found.store_root / "pkgs" / "conda"]))
    caches += [c for c in [home.conda_cache] if c not in caches]
    for cache in caches:
        if (cache / stem / "info" / "paths.json").is_file():
            return cache / stem
    raise BundleError(
        f"{_pin(package)} is not in the package cache (looked in "
        f"{', '.join(str(c) for c in caches)}): it was removed since the env was built; "
        "build the env once more in a store with this cache to put it back",
        bundle=bundle,
        package=_pin(package),
    )


def _tree_members(tree: Path, name: str) -> list[_Member]:
    members = [_Member(name, source=tree)]
    for dirpath, dirnames, filenames in os.walk(tree):
        base = Path(dirpath)
        rel = base.relative_to(tree)
        for entry in sorted(dirnames) + sorted(filenames):
            members.append(_Member(f"{name}/{(rel / entry).as_posix()}", source=base / entry))
        dirnames.sort()
    return members


def _check_trees(
    conda: list[dict[str, str]], trees: list[Path], files: dict[str, Any], bundle: str
) -> None:
    """Each package tree against its ``info/paths.json``: a damaged cache entry is
    refused here, not carried to machines that could not replace it."""
    for package, tree in zip(conda, trees, strict=True):
        paths = json.loads((tree / "info" / "paths.json").read_text())
        for entry in paths.get("paths", []):
            expected = entry.get("sha256")
            if not expected or entry.get("path_type", "hardlink") != "hardlink":
                continue
            got = files.get(f"{package['dir']}/{entry['_path']}") or {}
            if got.get("sha256") != expected:
                raise BundleError(
                    f"the package cache's copy of {package['pin']} is damaged: "
                    f"{entry['_path']} does not match its sha256 in info/paths.json "
                    "(remove the package from the cache and build the env again)",
                    bundle=bundle,
                    package=package["pin"],
                )


# -- writing ----------------------------------------------------------------------


def _checksums(members: list[_Member]) -> dict[str, Any]:
    """The manifest's view of each member: sha256 and size, a link's target, a dir."""
    files: dict[str, Any] = {}
    for member in members:
        if member.data is not None:
            files[member.name] = {"sha256": _sha256_bytes(member.data), "size": len(member.data)}
            continue
        assert member.source is not None
        if member.source.is_symlink():
            files[member.name] = {"link": os.readlink(member.source)}
        elif member.source.is_dir():
            files[member.name] = {"dir": True}
        else:
            files[member.name] = {
                "sha256": _sha256_file(member.source),
                "size": member.source.stat().st_size,
            }
    return files


def _write(
    target: Path, manifest: dict[str, Any], members: list[_Member], compression: str
) -> None:
    mode, options = COMPRESSIONS[compression]
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    files = manifest["files"]
    try:
        with tarfile.open(partial, mode, **options) as tar:  # type: ignore[call-overload]
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            tar.addfile(_info(MANIFEST, len(data)), io.BytesIO(data))
            for member in members:
                _add(tar, member, files[member.name])
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> Any:
    info = tarfile.TarInfo(f"{ROOT}/{name}")
    info.size, info.type, info.mode = size, kind, mode
    info.mtime = int(datetime.now(timezone.utc).timestamp())
    return info


def _add(tar: tarfile.TarFile, member: _Member, meta: dict[str, Any]) -> None:
    if member.data is not None:
        tar.addfile(_info(member.name, len(member.data)), io.BytesIO(member.data))
        return
    assert member.source is not None
    if "link" in meta:
        info = _info(member.name, kind=tarfile.SYMTYPE, mode=0o777)
        info.linkname = meta["link"]
        tar.addfile(info)
    elif "dir" in meta:
        tar.addfile(_info(member.name, kind=tarfile.DIRTYPE, mode=0o755))
    else:
        executable = os.stat(member.source).st_mode & 0o111
        info = _info(member.name, meta["size"], mode=0o755 if executable else 0o644)
        with open(member.source, "rb") as fh:
            hashing = _HashingReader(fh)
            tar.addfile(info, hashing)
        if hashing.digest.hexdigest() != meta["sha256"]:
            raise BundleError(f"{member.source} changed while it was being packed")


class _HashingReader(io.RawIOBase):
    """A file read through sha256: what was written is what the manifest says."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.digest = fh, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        return data

    def readable(self) -> bool:
        return True


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _bayou_version() -> str:
    from ._version import __version__

    return __version__
