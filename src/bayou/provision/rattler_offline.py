"""Offline builds in the rattler child: what the package cache can stand in for.

An online install notes, beside the package cache, the repodata record each
package came with (`remember_origins`: the cache itself does not keep where
a package came from). Offline (``BAYOU_OFFLINE=1``), the child's solver sees
only (`offline_sources`):

    each channel that is a local ``file://`` directory ─▶ itself (a disk)
    every other channel ─▶ the cached packages it served, written as a small
                           repodata.json per subdir, read as SparseRepoData

and a solved record neither cached nor local is reported missing at once
(`uncached`), never after the installer's network retries.

Stdlib only (rattler imported where used): it runs in the child, imported as
a sibling script module (see `rattler_child`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


def origins_dir(package_cache: str) -> Path:
    """Where the origins of the packages in `package_cache` are noted (beside it)."""
    cache = Path(package_cache)
    return cache.with_name(cache.name + "-origins")


def remember_origins(records: list[Any], package_cache: str) -> None:
    """Note each installed package's repodata record (url, channel, hashes,
    dependencies) next to the package cache, one file per URL, so an offline
    solve can offer exactly the cached packages as their channels served them."""
    origins = origins_dir(package_cache)
    try:
        origins.mkdir(parents=True, exist_ok=True)
        for record in records:
            path = origins / (hashlib.sha256(str(record.url).encode()).hexdigest()[:32] + ".json")
            if not path.exists():
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                tmp.write_text(record.to_json())
                os.replace(tmp, path)
    except OSError:
        pass  # only offline builds need them; they then report the package missing


def local_channel_dir(channel: Any) -> Path | None:
    """The directory of a ``file://`` channel that exists here, else None."""
    url = urlparse(str(channel.base_url))
    if url.scheme != "file":
        return None
    path = Path(unquote(url.path))
    return path if path.is_dir() else None


def offline_sources(
    request: dict[str, Any], channels: list[Any], scratch: Path
) -> tuple[list[Any], list[str]]:
    """The solver's sources offline: each channel that is an existing local
    directory as itself, every other channel as the cached packages it served
    (written as a small repodata.json per subdir and read as SparseRepoData).
    Returns (sources, the local channels read)."""
    import rattler

    cache = Path(request["package_cache"])
    served: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    origins = origins_dir(request["package_cache"])
    for path in sorted(origins.glob("*.json")) if origins.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            cached = cache / f"{data['name']}-{data['version']}-{data['build']}"
            key = (str(data.pop("channel")), str(data["subdir"]))
            file_name = str(data.pop("fn"))
            data.pop("url", None)
        except (OSError, ValueError, KeyError):
            continue
        if (cached / "info" / "index.json").is_file():
            served.setdefault(key, {})[file_name] = data
    sources: list[Any] = []
    local: list[str] = []
    for number, channel in enumerate(channels):
        if local_channel_dir(channel) is not None:
            sources.append(channel)
            local.append(str(channel.base_url))
            continue
        for subdir in (request["platform"], "noarch"):
            entries = served.get((str(channel.base_url), subdir))
            if not entries:
                continue
            repodata = {
                "info": {"subdir": subdir},
                "packages": {f: e for f, e in entries.items() if not f.endswith(".conda")},
                "packages.conda": {f: e for f, e in entries.items() if f.endswith(".conda")},
            }
            path = scratch / str(number) / subdir / "repodata.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(repodata))
            sources.append(rattler.SparseRepoData(channel, subdir, path))
    return sources, local


def uncached(records: list[Any], package_cache: str) -> dict[str, Any] | None:
    """Offline: the first record that neither the package cache nor a local
    channel has, as a failure naming it; the installer would download it (and,
    with no network, retry for seconds before failing)."""
    cache = Path(package_cache)
    for record in records:
        if urlparse(str(record.url)).scheme == "file":
            continue
        name = f"{record.name.normalized}-{record.version}-{record.build}"
        if not (cache / name / "info" / "index.json").is_file():
            return {
                "ok": False,
                "stage": "install",
                "message": f"{record.file_name} is not in the package cache {cache}; "
                f"offline it is not downloaded from {record.url}",
                "package": f"{record.name.normalized}=={record.version}={record.build}",
            }
    return None
