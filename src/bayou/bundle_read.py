"""Reading a bundle (`bayou.bundle`): fetching it, its manifest, a verified extraction.

A bundle is read as a stream, member by member, so a URL's download and a
file on a shared file system are read once: the manifest first (what the
bundle holds, before anything is written), then every member, each checked
against the manifest as it is written (sha256 and size, a link's target, its
kind) and refused when it is not listed, is there twice, would land outside
the extraction directory or links out of it. A member the manifest lists that
never comes is a missing package, named. Any error of the archive itself
(gzip/xz data, tar headers, an early end) means a corrupted or truncated
bundle; every such failure is a `BundleError` naming the bundle.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import lzma
import os
import secrets
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from ._version import __version__
from .bundle import FORMAT, FORMAT_VERSION, MANIFEST, ROOT
from .errors import BundleError
from .provision.tools import Deadline
from .store import Store

__all__ = ["local_copy", "read_manifest", "extract", "source_of"]

_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
_BLOCK = 1 << 20
Emit = Callable[..., None]  # emit(stage, done=None, total=None, msg="")
# What unpacking reads from a manifest, and its type.
_MANIFEST_KEYS: dict[str, type] = {
    "hash": str,
    "kind": str,
    "platform": str,
    "python": str,
    "spec": dict,
    "conda": list,
    "pip": list,
    "files": dict,
}


def source_of(label: str) -> str:
    """The file or URL an error label (``"bundle <source>"``) names."""
    return label.removeprefix("bundle ")


@contextlib.contextmanager
def local_copy(
    source: str | os.PathLike[str], store: Store, deadline: Deadline, label: str
) -> Iterator[Path]:
    """The bundle as a local file: a path as it is, a URL downloaded first."""
    text = str(source)
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https"):
        store.ensure()
        partial = store.builds_dir / f"bundle-{secrets.token_hex(4)}.download"
        try:
            _download(text, partial, deadline, label)
            yield partial
        finally:
            partial.unlink(missing_ok=True)
        return
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(text).expanduser()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise BundleError(
            f"cannot read the {label}: {exc.strerror or exc}", bundle=source_of(label)
        )
    yield path


def _download(url: str, path: Path, deadline: Deadline, label: str) -> None:
    import requests

    got = 0
    try:
        with requests.get(url, stream=True, timeout=(15, 60)) as response:
            response.raise_for_status()
            expected = int(response.headers.get("Content-Length") or 0) or None
            with open(path, "wb") as out:
                for block in response.iter_content(_BLOCK):
                    out.write(block)
                    got += len(block)
                    deadline.check(f"downloading the {label}")
    except requests.RequestException as exc:
        raise BundleError(f"cannot read the {label}: {exc}", bundle=source_of(label)) from None
    if expected is not None and got != expected:
        raise BundleError(
            f"the {label} was cut short: {got} of {expected} bytes arrived",
            bundle=source_of(label),
        )


def read_manifest(path: Path, label: str | None = None) -> dict[str, Any]:
    """The manifest of the bundle at `path` (its first member), read without the rest."""
    label = label or f"bundle {path}"
    try:
        with tarfile.open(path, "r|*") as tar:
            first = tar.next()
            if first is None or first.name != f"{ROOT}/{MANIFEST}" or not first.isfile():
                raise BundleError(
                    f"the {label} is not a bayou bundle (its first member is not "
                    f"{ROOT}/{MANIFEST})",
                    bundle=source_of(label),
                )
            reader = tar.extractfile(first)
            assert reader is not None
            data = reader.read()
    except _READ_ERRORS as exc:
        raise BundleError(
            f"the {label} is not a readable bundle (corrupted, truncated or not a "
            f"tar archive): {exc}",
            bundle=source_of(label),
        ) from None
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise BundleError(f"the {label} has a damaged manifest: {exc}", bundle=source_of(label))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"the {label} is not a bayou bundle", bundle=source_of(label))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"the {label} has format version {manifest.get('format_version')} (made by "
            f"bayou {manifest.get('bayou_version')}); this bayou ({__version__}) reads "
            f"version {FORMAT_VERSION}",
            bundle=source_of(label),
        )
    wrong = [
        key for key, kind in _MANIFEST_KEYS.items() if not isinstance(manifest.get(key), kind)
    ]
    if wrong or manifest["kind"] not in ("conda", "venv"):
        raise BundleError(
            f"the {label} has a damaged manifest (bad or missing: {', '.join(wrong) or 'kind'})",
            bundle=source_of(label),
        )
    return manifest


def extract(
    path: Path,
    staging: Path,
    manifest: dict[str, Any],
    label: str,
    emit: Emit,
    deadline: Deadline,
) -> None:
    """Every member into `staging`, each checked against the manifest as it streams."""
    files: dict[str, dict[str, Any]] = manifest["files"]
    total, done = len(files), 0
    seen: set[str] = set()
    root = staging.resolve()
    emit("unpack", 0, total, "files")
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                rel = _relative(member.name, label)
                if rel == MANIFEST:
                    continue
                meta = files.get(rel)
                if meta is None or rel in seen:
                    raise BundleError(
                        f"the {label} was altered: {rel} is "
                        + ("there twice" if meta else "not listed in its manifest"),
                        bundle=source_of(label),
                    )
                target = staging / rel
                if target.parent.resolve() != root / PurePosixPath(rel).parent:
                    raise BundleError(
                        f"the {label} was altered: {rel} leaves the bundle",
                        bundle=source_of(label),
                    )
                _extract_member(tar, member, meta, target, rel, manifest, label)
                seen.add(rel)
                done += 1
                if done % 500 == 0:
                    emit("unpack", done, total, "files")
                    deadline.check("unpacking the bundle")
    except _READ_ERRORS as exc:
        raise BundleError(
            f"the {label} is corrupted or truncated (after {done} of {total} files): {exc}",
            bundle=source_of(label),
        ) from None
    missing = [rel for rel in files if rel not in seen]
    if missing:
        package = _package_of(missing[0], manifest)
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise BundleError(
            f"the {label} lacks {missing[0]}{more}, which its manifest lists"
            + (f": the package {package} is missing" if package else ""),
            bundle=source_of(label),
            package=package,
        )
    emit("unpack", total, total, "files")


def _extract_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    meta: dict[str, Any],
    target: Path,
    rel: str,
    manifest: dict[str, Any],
    label: str,
) -> None:
    kind = "dir" if "dir" in meta else "link" if "link" in meta else "file"
    actual = "dir" if member.isdir() else "link" if member.issym() else "file"
    if kind != actual or not (member.isdir() or member.issym() or member.isfile()):
        raise BundleError(
            f"the {label} was altered: {rel} is not a {kind}", bundle=source_of(label)
        )
    if kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":
        link = member.linkname
        inside = os.path.normpath(os.path.join(os.path.dirname(rel), link))
        if link != meta["link"] or os.path.isabs(link) or inside.startswith(".."):
            raise BundleError(
                f"the {label} was altered: {rel} links out of it", bundle=source_of(label)
            )
        os.symlink(link, target)
        return
    reader = tar.extractfile(member)
    assert reader is not None
    digest, size = hashlib.sha256(), 0
    with open(target, "xb") as out:
        for block in iter(lambda: reader.read(_BLOCK), b""):
            digest.update(block)
            size += len(block)
            out.write(block)
    if digest.hexdigest() != meta["sha256"] or size != meta["size"]:
        package = _package_of(rel, manifest)
        raise BundleError(
            f"the {label} is damaged: {rel} does not match its sha256 in the manifest"
            + (f" (package {package})" if package else ""),
            bundle=source_of(label),
            package=package,
        )
    os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)


def _relative(name: str, label: str) -> str:
    """A member's path under the bundle's root; anything else is refused."""
    path = PurePosixPath(name)
    parts = path.parts
    if not parts or parts[0] != ROOT or len(parts) < 2 or ".." in parts or path.is_absolute():
        raise BundleError(
            f"the {label} was altered: unexpected member {name!r}", bundle=source_of(label)
        )
    return "/".join(parts[1:])


def _package_of(rel: str, manifest: dict[str, Any]) -> str | None:
    """The package a bundle file belongs to (for errors)."""
    for package in manifest.get("conda", []):
        if rel == package["dir"] or rel.startswith(package["dir"] + "/"):
            return str(package["pin"])
    for wheel in manifest.get("pip", []):
        if rel == f"wheels/{wheel['file']}":
            return f"{wheel['name']}=={wheel['version']}"
    return None
