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

Killing the child (timeout, Ctrl-C) leaves only the build directory, which the
parent discards. The child prints nothing else on stdout; rattler's own
messages go to stderr, which the parent keeps for error reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any


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


def _make_reporter(total_holder: dict[str, int]):
    import rattler

    class Reporter(rattler.InstallerReporter):
        def on_transaction_start(self, total_operations: int) -> None:
            total_holder["ops"] = total_operations
            _emit("progress", stage="link", done=0, total=total_operations)

        def on_download_start(self, cache_entry: int) -> int:
            return cache_entry

        def on_download_completed(self, download_idx: int) -> None:
            total_holder["downloaded"] = total_holder.get("downloaded", 0) + 1
            _emit("progress", stage="download", done=total_holder["downloaded"], total=None)

        def on_transaction_operation_complete(self, operation: int) -> None:
            total_holder["done"] = total_holder.get("done", 0) + 1
            _emit(
                "progress", stage="link", done=total_holder["done"], total=total_holder.get("ops")
            )

    return Reporter()


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


def _package_cache(path: str):
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


async def _solve_and_install(request: dict[str, Any]) -> dict[str, Any]:
    import rattler

    alias = request.get("channel_alias")
    config = rattler.ChannelConfig(channel_alias=alias) if alias else None
    channels = [rattler.Channel(c, config) for c in request["channels"]]
    platform = rattler.Platform(request["platform"])
    _emit("progress", stage="solve", done=0, total=None, message="fetching repodata")
    gateway = rattler.Gateway(cache_dir=request["repodata_cache"])
    virtual = rattler.VirtualPackage.detect(rattler.VirtualPackageOverrides.from_env())
    try:
        records = await rattler.solve(
            sources=channels,
            specs=request["specs"],
            gateway=gateway,
            platforms=[platform, rattler.Platform("noarch")],
            virtual_packages=virtual,
        )
    except Exception as exc:  # rattler's errors are plain exceptions with text
        message = str(exc)
        return {
            "ok": False,
            "stage": "solve",
            "message": message,
            "package": _culprit(message, request["specs"]),
        }
    _emit("progress", stage="solve", done=1, total=1, message=f"{len(records)} packages")
    holder: dict[str, int] = {}
    try:
        await rattler.install(
            records,
            target_prefix=request["build_prefix"],
            package_cache=_package_cache(request["package_cache"]),
            alternative_target_prefix=request["final_prefix"],
            platform=platform,
            show_progress=False,
            reporter=_make_reporter(holder),
            execute_link_scripts=False,
        )
    except Exception as exc:
        return {"ok": False, "stage": "install", "message": str(exc), "package": None}
    lock_path = Path(request["build_prefix"]) / ".bayou" / "conda-lock.yml"
    lock_path.parent.mkdir(exist_ok=True)
    lock_platform = rattler.LockPlatform(request["platform"])
    lock = rattler.LockFile([lock_platform])
    lock.set_channels("default", [rattler.LockChannel(c) for c in request["channels"]])
    for record in records:
        lock.add_conda_package("default", lock_platform, record)
    lock.to_path(lock_path)
    return {"ok": True, "records": [_record_dict(r) for r in records], "lock": str(lock_path)}


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    try:
        result = asyncio.run(_solve_and_install(request))
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
