"""The conda half of a build, run in a child process by `conda_step`.

py-rattler is an in-process Rust library; it can crash at interpreter exit in
a small fraction of processes, and an in-process solve cannot be interrupted
cleanly. So the parent starts ``python .../rattler_child.py REQUEST.json`` (as
a script: the child imports only the stdlib and rattler) and talks to it
through files and lines:

    parent                                 child
    REQUEST.json (specs, channels, ...) ─▶ solve (virtual packages detected,
                                           CONDA_OVERRIDE_* honoured)
    ◀─ stdout: {"event": ...} per line     download / link into the build dir
    ◀─ RESULT.json (records or error)      write the lock file, exit

Offline (``"offline": true`` in the request) no channel is asked for
repodata: the solve sees only packages already in the package cache (whose
origin every online install notes in ``<cache>-origins/``, since the cache
itself does not keep where a package came from) and local ``file://``
channels that exist, which are disks, not network (conda's offline mode reads
them too). So a package that is not cached is reported missing at once.

Killing the child (timeout, Ctrl-C) leaves only the build directory, which the
parent discards. The child prints nothing else on stdout; rattler's own
messages go to stderr, which the parent keeps for error reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if __package__:  # imported by the parent, as bayou.provision.rattler_child
    from . import rattler_offline
else:  # run as a script (the child): its directory is sys.path[0]
    import rattler_offline  # type: ignore[import-not-found, no-redef]

if TYPE_CHECKING:
    import rattler
    from rattler.package_cache import PackageCache


def _emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def _record_dict(record: Any) -> dict[str, Any]:
    return {
        "name": record.name.normalized,
        "version": str(record.version),
        "build": str(record.build),
        "channel": str(record.channel),
        "subdir": str(record.subdir),
        "url": str(record.url),
        "file_name": str(record.file_name),
        "sha256": record.sha256.hex() if record.sha256 else None,
        "md5": record.md5.hex() if record.md5 else None,
    }


def _make_reporter(records: list[Any], package_cache: str) -> rattler.InstallerReporter:
    """The installer's progress as event lines: downloads (packages and bytes;
    the totals known up front from the records neither cached nor local, and
    the download the install waits on longest named) and each package linked.
    rattler calls it from its worker threads."""
    import threading

    import rattler

    size_of = {r.name.normalized: int(r.size or 0) for r in records}
    cache = Path(package_cache)
    expected = {
        r.name.normalized
        for r in records
        if urlparse(str(r.url)).scheme != "file"
        and not (cache / f"{r.name.normalized}-{r.version}-{r.build}/info/index.json").is_file()
    }
    lock = threading.Lock()
    names: dict[int, str] = {}  # transaction operation: package name
    downloads: dict[int, list[int]] = {}  # operation: [bytes done, bytes total]
    finished: set[int] = set()
    linked: list[int] = []
    operations = [0]  # of the transaction
    told: list[Any] = [0.0, None]  # when bytes were last told, and what

    def tell_downloads(force: bool) -> None:
        now = time.monotonic()
        if not force and now - told[0] < 0.1:
            return  # bytes only: at most 10 lines a second
        told[0] = now
        started = {names.get(op, "") for op in downloads}
        waiting = {op: total - done for op, (done, total) in downloads.items()}
        slowest = max(waiting, key=lambda op: waiting[op], default=None)
        event = dict(
            stage="download",
            done=len(finished),
            total=len(expected | started),
            message=names.get(slowest, "") if slowest is not None and waiting[slowest] else "",
            bytes_done=sum(done for done, _ in downloads.values()),
            bytes_total=sum(total for _, total in downloads.values())
            + sum(size_of.get(name, 0) for name in expected - started),
        )
        if event != told[1]:
            told[1] = event
            _emit("progress", **event)

    class Reporter(rattler.InstallerReporter):
        def on_transaction_start(self, total_operations: int) -> None:
            with lock:
                operations[0] = total_operations
                _emit("progress", stage="link", done=0, total=total_operations)

        def on_populate_cache_start(self, operation: int, package_name: str) -> int:
            names[operation] = package_name
            return operation

        def on_download_start(self, cache_entry: int) -> int:
            with lock:  # the token is the operation (on_populate_cache_start)
                downloads[cache_entry] = [0, size_of.get(names.get(cache_entry, ""), 0)]
                tell_downloads(force=True)
            return cache_entry

        def on_download_progress(
            self, download_idx: int, progress: int, total: int | None
        ) -> None:
            with lock:
                entry = downloads.setdefault(download_idx, [0, 0])
                entry[0], entry[1] = progress, total or max(entry[1], progress)
                tell_downloads(force=False)

        def on_download_completed(self, download_idx: int) -> None:
            with lock:
                entry = downloads.setdefault(download_idx, [0, 0])
                entry[0] = entry[1] = max(entry)
                finished.add(download_idx)
                tell_downloads(force=True)

        def on_link_start(self, operation: int, package_name: str) -> int:
            names[operation] = package_name
            return operation

        def on_transaction_operation_complete(self, operation: int) -> None:
            with lock:
                linked.append(operation)
                name = names.get(operation, "")
                _emit(
                    "progress", stage="link", done=len(linked), total=operations[0], message=name
                )

    # rattler's InstallerReporter is a Protocol whose methods are documented no-ops;
    # mypy reads their docstring-only bodies as abstract
    return Reporter()  # type: ignore[abstract]


def _culprit(message: str, specs: list[str]) -> str | None:
    """The requested spec a solver message is about, when one is named."""
    names = {re.split(r"[\s=<>!~\[]", s.split("::")[-1], maxsplit=1)[0]: s for s in specs}
    patterns = [
        r"No candidates were found for ([A-Za-z0-9_.\-]+)",
        r"cannot install ([A-Za-z0-9_.\-]+)",
        r"([A-Za-z0-9_.\-]+) \S+ cannot be installed",
        r"package ([A-Za-z0-9_.\-]+)",
    ]
    for pattern in patterns:
        for match in re.finditer(pattern, message):
            if match.group(1) in names:
                return names[match.group(1)]
    for name, spec in names.items():
        pattern = rf"(?<![A-Za-z0-9_.\-]){re.escape(name)}(?![A-Za-z0-9_\-])"
        if name != "python" and re.search(pattern, message):
            return spec
    return None


def _package_cache(path: str) -> PackageCache:
    """The shared package cache, checked against each package's paths.json.

    rattler's default (``cache_dir=``) trusts an extracted package whose
    ``info/index.json`` is there: a truncated or modified file in the cache
    would be hard-linked into every new env. ``full`` validation checks each
    file's size and sha256 once per process (every build here) and
    re-extracts a package that fails; ``BAYOU_CONDA_CACHE_VALIDATION=fast``
    (files exist) or ``skip`` trade that safety for speed on huge envs."""
    from rattler.package_cache import PackageCache, ValidationMode

    mode = os.environ.get("BAYOU_CONDA_CACHE_VALIDATION", "full").strip().lower() or "full"
    if mode not in ("full", "fast", "skip"):
        raise ValueError(
            f"BAYOU_CONDA_CACHE_VALIDATION={mode!r}: expected 'full', 'fast' or 'skip'"
        )
    return PackageCache.new_layered([path], validation_mode=getattr(ValidationMode, mode)())


def _missing_name(message: str) -> str | None:
    """The package a solver message says it found no candidates for."""
    match = re.search(r"No candidates were found for ([A-Za-z0-9_.\-]+)", message)
    return match.group(1) if match else None


async def _solve_and_install(request: dict[str, Any]) -> dict[str, Any]:
    import rattler

    alias = request.get("channel_alias")
    config = rattler.ChannelConfig(channel_alias=alias) if alias else None
    channels = [rattler.Channel(c, config) for c in request["channels"]]
    platform = rattler.Platform(request["platform"])
    offline = bool(request.get("offline"))
    sources: list[Any] = channels
    local: list[str] = []
    if offline:
        scratch = Path(request["build_prefix"]) / ".bayou" / "offline-repodata"
        sources, local = rattler_offline.offline_sources(request, channels, scratch)
    reading = "reading the package cache (offline)" if offline else "fetching repodata"
    _emit("progress", stage="solve", done=0, total=None, message=reading)
    gateway = rattler.Gateway(cache_dir=request["repodata_cache"])
    virtual = rattler.VirtualPackage.detect(rattler.VirtualPackageOverrides.from_env())
    try:
        records = await rattler.solve(
            sources=sources,
            specs=request["specs"],
            gateway=gateway,
            platforms=[platform, rattler.Platform("noarch")],
            virtual_packages=virtual,
        )
    except Exception as exc:  # rattler's errors are plain exceptions with text
        message = str(exc)
        package = _culprit(message, request["specs"])
        return {
            "ok": False,
            "stage": "solve",
            "message": message,
            "package": package or (_missing_name(message) if offline else None),
            "local_channels": local,
        }
    _emit("progress", stage="solve", done=1, total=1, message=f"{len(records)} packages")
    missing = rattler_offline.uncached(records, request["package_cache"]) if offline else None
    if missing is not None:
        return {**missing, "local_channels": local}
    try:
        await _install(records, request, platform)
    except Exception as exc:
        return {
            "ok": False,
            "stage": "install",
            "message": str(exc),
            "package": None,
            "local_channels": local,
        }
    if not offline:
        rattler_offline.remember_origins(records, request["package_cache"])
    lock_path = Path(request["build_prefix"]) / ".bayou" / "conda-lock.yml"
    lock_path.parent.mkdir(exist_ok=True)
    lock_platform = rattler.LockPlatform(
        request["platform"], virtual_packages=_virtual_strings(virtual)
    )
    lock = rattler.LockFile([lock_platform])
    lock.set_channels("default", [rattler.LockChannel(c) for c in request["channels"]])
    for record in records:
        lock.add_conda_package("default", lock_platform, record)
    lock.to_path(lock_path)
    return {
        "ok": True,
        "records": [_record_dict(r) for r in records],
        "lock": str(lock_path),
        "virtual_packages": _virtual_summary(virtual, records),
    }


# -- a locked env: install the lock's records, no solve ----------------------------


def _virtual_strings(virtual: list[Any]) -> list[str]:
    """``__cuda=12.4=0``: the machine (or CONDA_OVERRIDE_*) a solve saw."""
    found = (v.into_generic() for v in virtual)
    return [f"{g.name.normalized}={g.version}={g.build_string}" for g in found]


def _virtual_summary(virtual: list[Any], records: list[Any]) -> dict[str, Any]:
    """What the env record keeps: the virtual packages detected (with the
    overrides that set them) and those the installed packages depend on, which
    is what makes an env need a GPU or a newer glibc."""
    return {
        "detected": _virtual_strings(virtual),
        "required": sorted({d for r in records for d in r.depends if d.startswith("__")}),
        "overrides": {
            k: v for k, v in sorted(os.environ.items()) if k.startswith("CONDA_OVERRIDE_")
        },
    }


def _pin(record: Any) -> str:
    return f"{record.name.normalized}=={record.version}={record.build}"


def _check_archives(records: list[Any]) -> dict[str, Any] | None:
    """Local archives against the lock's hashes (rattler checks only downloads)."""
    for record in records:
        url = urlparse(str(record.url))
        if url.scheme != "file":
            continue
        path = Path(unquote(url.path))
        kind, expected = ("sha256", record.sha256) if record.sha256 else ("md5", record.md5)
        if expected is None or not path.is_file():
            continue  # no hash: refused when read; no file: the installer says so
        digest = hashlib.new(kind)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected.hex():
            return {
                "ok": False,
                "stage": "verify",
                "message": f"hash mismatch for {record.file_name}: the {kind} of {path} is "
                f"{digest.hexdigest()}, the lock says {expected.hex()}",
                "package": _pin(record),
            }
    return None


def _check_virtual(records: list[Any], virtual: list[Any]) -> dict[str, Any] | None:
    """Each ``__name`` dependency against the machine's virtual packages: what a
    solve would have checked, and a lock made on a GPU machine needs here."""
    import rattler

    have = {g.name.normalized: g for g in (v.into_generic() for v in virtual)}
    for record in records:
        for dep in record.depends:
            if not dep.startswith("__"):
                continue
            spec = rattler.MatchSpec(dep)
            name = spec.name.normalized
            found = have.get(name)
            if found is not None and (
                not spec.version
                or rattler.VersionSpec(spec.version).matches(rattler.Version(str(found.version)))
            ):
                continue
            here = f"this machine has {name}={found.version}" if found else f"no {name} here"
            return {
                "ok": False,
                "stage": "virtual",
                "message": f"{_pin(record)} needs the virtual package {dep} ({here})",
                "package": _pin(record),
                "virtual": name,
            }
    return None


async def _install(records: list[Any], request: dict[str, Any], platform: Any) -> None:
    """Link `records` into the build prefix, placed for the final one: the same for a
    solved and a locked env."""
    import rattler

    await rattler.install(
        records,
        target_prefix=request["build_prefix"],
        package_cache=_package_cache(request["package_cache"]),
        alternative_target_prefix=request["final_prefix"],
        platform=platform,
        show_progress=False,
        reporter=_make_reporter(records, request["package_cache"]),
        execute_link_scripts=False,
    )


async def _install_locked(request: dict[str, Any]) -> dict[str, Any]:
    import rattler

    spec = request["lock"]
    lock = rattler.LockFile.from_path(spec["path"])
    os.unlink(spec["path"])  # the env keeps the lock as rattler writes it, below
    environment = lock.environment(spec["environment"])
    platforms = environment.platforms() if environment is not None else []
    lock_platform = next((p for p in platforms if p.name == spec["platform"]), None)
    if lock_platform is None or environment is None:
        message = f"the lock has no packages for {spec['platform']}"
        return {"ok": False, "stage": "lock", "message": message, "package": None}
    records = environment.conda_repodata_records_for_platform(lock_platform) or []
    _emit("progress", stage="solve", done=1, total=1, message=f"{len(records)} locked packages")
    virtual = rattler.VirtualPackage.detect(rattler.VirtualPackageOverrides.from_env())
    problem = _check_archives(records) or _check_virtual(records, virtual)
    if problem is None and request.get("offline"):  # named at once, not after retries
        problem = rattler_offline.uncached(records, request["package_cache"])
    if problem is not None:
        return problem
    try:
        await _install(records, request, rattler.Platform(request["platform"]))
    except Exception as exc:
        message = str(exc)
        package = next((_pin(r) for r in records if str(r.file_name) in message), None)
        return {"ok": False, "stage": "install", "message": message, "package": package}
    # also offline: an unpacked bundle's packages are new in this cache, and later
    # offline solves can offer them only with their origins noted
    rattler_offline.remember_origins(records, request["package_cache"])
    lock_path = Path(request["build_prefix"]) / ".bayou" / "conda-lock.yml"
    lock.to_path(lock_path)
    return {
        "ok": True,
        "records": [_record_dict(r) for r in records],
        "lock": str(lock_path),
        "virtual_packages": _virtual_summary(virtual, records),
    }


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    locked = bool(request.get("lock"))
    try:
        result = asyncio.run(_install_locked(request) if locked else _solve_and_install(request))
    except BaseException as exc:  # report, never hang the parent
        result = {
            "ok": False,
            "stage": "internal",
            "message": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "package": None,
        }
    tmp = request["result_path"] + ".tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(result, fh, default=str)
        os.replace(tmp, request["result_path"])
    except OSError as exc:
        # E.g. a full disk: the parent finds no result file, so say here,
        # on stderr (kept in its error), what happened and why.
        sys.stderr.write(f"\ncould not write {tmp}: {exc}\n{json.dumps(result, default=str)}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: it is where py-rattler may crash.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
