"""Fetch micromamba or pixi into the store, checksum-verified, when allowed.

The external conda backends (`external`) normally use an executable the user
already has. When it is missing and the user opted in (`allow_download=True`
or ``$BAYOU_ALLOW_DOWNLOAD=1``), the tool is fetched from its publisher's
GitHub releases (or a mirror of them) into the store:

    release_for(tool)  ─▶ URL of the binary (micromamba) or archive (pixi)
                          and URL of the ``.sha256`` file published beside it
    fetch_tool(tool, store)                 (under locks/tool-<tool>.lock)
      │ already at <store>/tools/<tool>-<version>/<tool>? ─▶ return it
      ▼
    expected digest: $BAYOU_<TOOL>_SHA256 if pinned, else the published file
    GET the asset, streamed and hashed as it arrives, into tools/.tmp-<random>/
      │ digest differs ─▶ delete tools/.tmp-<random>, ToolDownloadError
      ▼            (names the URL and both digests; nothing is left behind)
    extract (pixi: member ``pixi`` of the .tar.gz), chmod 0755
    rename tools/.tmp-<random> ─▶ tools/<tool>-<version>   (atomic publish)

The published checksum guards against truncated, corrupted or swapped
downloads and a mirror serving something else than the release; it cannot
guard against a compromised release itself: pin ``$BAYOU_<TOOL>_SHA256`` for
that. Settings: ``$BAYOU_TOOLS_MIRROR`` replaces ``https://github.com`` (a
mirror with the same path layout), ``$BAYOU_MICROMAMBA_VERSION`` and
``$BAYOU_PIXI_VERSION`` choose other releases than the pinned ones. Offline
(``$BAYOU_OFFLINE``) nothing is fetched: `fetch_tool` refuses before any
connection (`external.find_tool` already refuses for ``offline=True``).
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import secrets
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProvisionError, ProvisionTimeout
from ..store import Store
from .tools import Deadline, offline_requested

if TYPE_CHECKING:
    import requests

DEFAULT_MIRROR = "https://github.com"
DEFAULT_VERSIONS = {"micromamba": "2.3.0-1", "pixi": "v0.66.0"}
DOWNLOADABLE = tuple(DEFAULT_VERSIONS)
_CHUNK = 1 << 16
_HEX64 = re.compile(r"\b([0-9a-fA-F]{64})\b")


class ToolDownloadError(ProvisionError):
    """A tool could not be downloaded, or what was downloaded failed verification."""


@dataclass(frozen=True)
class Release:
    """One downloadable build of a tool for this machine."""

    tool: str
    version: str
    url: str
    checksum_url: str
    member: str | None  # the executable inside an archive; None: the asset is the executable

    def install_dir(self, store: Store) -> Path:
        return tools_dir(store) / f"{self.tool}-{self.version}"

    def executable(self, store: Store) -> Path:
        return self.install_dir(store) / self.tool


def tools_dir(store: Store) -> Path:
    return store.root / "tools"


def release_for(tool: str, version: str | None = None, mirror: str | None = None) -> Release:
    """Where `tool` for this machine is published (pinned version by default)."""
    if tool not in DEFAULT_VERSIONS:
        raise ValueError(f"bayou can download {' and '.join(DOWNLOADABLE)}, not {tool!r}")
    version = version or os.environ.get(f"BAYOU_{tool.upper()}_VERSION") or DEFAULT_VERSIONS[tool]
    base = (mirror or os.environ.get("BAYOU_TOOLS_MIRROR") or DEFAULT_MIRROR).rstrip("/")
    if tool == "micromamba":
        asset = f"micromamba-{_conda_subdir()}"
        url = f"{base}/mamba-org/micromamba-releases/releases/download/{version}/{asset}"
        member = None
    else:
        asset = f"pixi-{_rust_triple()}.tar.gz"
        url = f"{base}/prefix-dev/pixi/releases/download/{version}/{asset}"
        member = "pixi"
    return Release(tool, version, url, url + ".sha256", member)


def installed(tool: str, store: Store) -> Path | None:
    """The store's copy of `tool` (the selected version), if it was fetched before."""
    if tool not in DEFAULT_VERSIONS:
        return None
    path = release_for(tool).executable(store)
    return path if os.access(path, os.X_OK) else None


def fetch_tool(
    tool: str,
    store: Store,
    *,
    deadline: Deadline | None = None,
    release: Release | None = None,
) -> Path:
    """Download, verify and install `tool` into the store; return the executable."""
    release = release or release_for(tool)
    if offline_requested():
        raise ToolDownloadError(
            f"offline ($BAYOU_OFFLINE): not downloading {tool} from {release.url}",
            package=tool,
        )
    deadline = deadline or Deadline(None)
    target = release.executable(store)
    try:
        with store.lock(f"tool-{release.tool}", timeout=deadline.remaining()):
            return _fetch_locked(release, store, deadline, target)
    except TimeoutError as exc:
        if isinstance(exc, ProvisionError):
            raise
        raise ProvisionTimeout(
            f"provisioning timed out after {deadline.seconds:g} s "
            f"(waiting for another process downloading {release.tool})"
        )


def _fetch_locked(release: Release, store: Store, deadline: Deadline, target: Path) -> Path:
    import requests

    if os.access(target, os.X_OK):
        return target  # fetched by another process while we waited
    root = tools_dir(store)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a killed download (lock held: not live)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        with requests.Session() as session:
            expected = _expected_digest(session, release, deadline)
            blob, actual = _download(session, release.url, deadline)
        if actual != expected:
            raise ToolDownloadError(
                f"checksum mismatch for {release.url}: expected sha256 {expected}, "
                f"got {actual}; the download was discarded",
                package=release.tool,
            )
        _unpack(release, blob, tmp / release.tool)
        install = release.install_dir(store)
        if install.exists():  # an incomplete copy (no executable): replace it
            shutil.rmtree(install)
        os.rename(tmp, install)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _expected_digest(session: requests.Session, release: Release, deadline: Deadline) -> str:
    pinned = os.environ.get(f"BAYOU_{release.tool.upper()}_SHA256")
    if pinned:
        if not _HEX64.fullmatch(pinned.strip()):
            raise ToolDownloadError(
                f"$BAYOU_{release.tool.upper()}_SHA256 is not a sha256 hex digest: {pinned!r}",
                package=release.tool,
            )
        return pinned.strip().lower()
    blob, _ = _download(session, release.checksum_url, deadline, limit=1 << 16)
    found = _HEX64.search(blob.decode("utf-8", "replace"))
    if found is None:
        raise ToolDownloadError(
            f"no sha256 digest in the published checksum file {release.checksum_url}",
            package=release.tool,
        )
    return found.group(1).lower()


def _download(
    session: requests.Session, url: str, deadline: Deadline, limit: int | None = None
) -> tuple[bytes, str]:
    """GET `url` into memory, hashing as it arrives; returns (bytes, sha256 hex)."""
    import requests

    remaining = deadline.remaining()
    timeout = 30.0 if remaining is None else max(0.1, min(30.0, remaining))
    try:
        response = session.get(url, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise ToolDownloadError(f"could not download {url}: {exc}")
    with response:
        if response.status_code != 200:
            raise ToolDownloadError(
                f"could not download {url}: HTTP {response.status_code} {response.reason}"
            )
        digest = hashlib.sha256()
        buffer = io.BytesIO()
        try:
            for chunk in response.iter_content(_CHUNK):
                deadline.check(f"downloading {url}")
                digest.update(chunk)
                buffer.write(chunk)
                if limit is not None and buffer.tell() > limit:
                    raise ToolDownloadError(f"{url} is larger than {limit} bytes")
        except requests.RequestException as exc:
            raise ToolDownloadError(f"download of {url} broke off: {exc}")
    return buffer.getvalue(), digest.hexdigest()


def _unpack(release: Release, blob: bytes, dest: Path) -> None:
    if release.member is None:
        dest.write_bytes(blob)
    else:
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as archive:
                member = next(
                    (m for m in archive.getmembers() if Path(m.name).name == release.member),
                    None,
                )
                if member is None or not member.isfile():
                    raise ToolDownloadError(
                        f"{release.url} has no file {release.member!r}", package=release.tool
                    )
                source = archive.extractfile(member)
                assert source is not None
                dest.write_bytes(source.read())
        except tarfile.TarError as exc:
            raise ToolDownloadError(
                f"{release.url} is not a readable archive: {exc}", package=release.tool
            )
    dest.chmod(dest.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRUSR)


def _conda_subdir() -> str:
    from ..env import conda_platform

    return conda_platform()


def _rust_triple() -> str:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    system = platform.system()
    if system == "Darwin":
        return f"{arch}-apple-darwin"
    if system == "Windows":
        return f"{arch}-pc-windows-msvc"
    return f"{arch}-unknown-linux-musl"
