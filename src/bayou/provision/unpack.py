"""`unpack`: install a bundle (`bayou.bundle`) into a store as the env it was packed from.

    unpack(source)          a path, or an http(s)/file URL
      │ a URL is downloaded into the store's builds/ first (requests)
      │ the manifest (first member): format, platform, identity, and for a
      │ pip-only env an interpreter of its Python X.Y here ───────────▶ BundleError at once
      │ found in the store or a shared store ─────────────────────────▶ Environment (no unpack)
      ▼
    store.lock(hash)        (workers of one machine unpack once)
      │ builds/<hash>-x/ (the env) and builds/<hash>-unpack-x/ (the bundle's
      │ files): a process killed here leaves only those, which the next holder
      │ of the lock discards, as for any build
      │ extract, every member checked against the manifest's sha256; a member
      │ missing, unlisted, damaged or cut short ─────────────────────▶ BundleError
      │ conda: the bundle's package trees go into the store's package cache
      │   (`_seed_cache`), and the rattler child installs the lock's records
      │   from there, offline, fully validated, for the final prefix:
      │   placeholders are rewritten for *this* store's path
      │ pip-only: a relocatable uv venv over this machine's Python X.Y
      │ pip: uv --offline --no-index --find-links wheels/ --require-hashes
      ▼
    store.publish under the packed env's hash, with its spec ─────────▶ Environment

Nothing is copied from the packing machine's prefix: the env is installed
again from its packages, so it is relocated for the store it lands in, and
`bayou.provision(spec)` finds it (same hash). Every step runs offline; only a
bundle given as an http(s) URL is fetched, because the caller named it. A
failure at any point discards both directories: nothing is published.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

from .. import interpreters
from .._version import __version__
from ..bundle import LOCK, REQUIREMENTS
from ..bundle_read import extract, local_copy, read_manifest, source_of
from ..env import Env, conda_platform
from ..environment import Environment
from ..errors import BundleError, ProvisionError
from ..store import Store
from . import (
    _timeout_error,
    _write_log,
    built_once,
    conda_step,
    finished_record,
    reused,
    tool_events,
    uv_step,
    uv_tool,
)
from .diskfull import no_space_error
from .progress import ProgressCallback, ProgressEvent, default_progress
from .tools import Deadline, ToolResult, run_tool

__all__ = ["unpack"]


def unpack(
    source: str | os.PathLike[str],
    *,
    store: Store | str | os.PathLike[str] | None = None,
    env: Env | None = None,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> Environment:
    """Install the bundle at `source` (a path or an http(s) URL) into `store`
    (default ``$BAYOU_HOME``) as the env it was packed from, with no network.

    `env`, when given, is the env the caller expects: an env already in a
    store is used without reading the bundle at all, and a bundle holding
    another env is refused. `timeout` bounds the whole call. Raises
    `BundleError` (a `ProvisionError`) for a bundle that cannot be read, is
    damaged or cut short, is for another platform or Python, or lacks a
    package; the store is then left as it was."""
    if isinstance(store, Store):
        home = store
    else:  # the env's files will name its prefix: never a relative one
        home = Store(Path(store).expanduser().absolute() if store is not None else None)
    report = progress or default_progress()
    deadline = Deadline(timeout)
    label = f"bundle {source}"
    try:
        if env is not None:
            found = home.find(env.hash)
            if found is not None:
                return reused(*found, env)

            def fetch_and_install() -> dict[str, Any]:
                with local_copy(source, home, deadline, label) as path:
                    manifest = read_manifest(path, label)
                    _check(manifest, label, env)
                    return _install(path, manifest, env, home, label, report, deadline)

            record = built_once(home, env.hash, deadline, fetch_and_install)
            spec = env
        else:
            with local_copy(source, home, deadline, label) as path:
                manifest = read_manifest(path, label)
                spec = _check(manifest, label, None)
                found = home.find(spec.hash)
                if found is not None:
                    return reused(*found, spec)
                record = built_once(
                    home,
                    spec.hash,
                    deadline,
                    lambda: _install(path, manifest, spec, home, label, report, deadline),
                )
    except TimeoutError as exc:
        if isinstance(exc, ProvisionError):
            raise
        raise _timeout_error(timeout, "waiting for another process installing the same env")
    return reused(home, record, spec)


def _check(manifest: dict[str, Any], label: str, expected: Env | None) -> Env:
    """What can be refused before anything is extracted; the env it holds."""
    here = conda_platform()
    if manifest.get("platform") != here:
        raise BundleError(
            f"the {label} holds an env for {manifest.get('platform')}; this machine is "
            f"{here} (pack it on a {here} machine)",
            bundle=source_of(label),
        )
    spec = Env.from_dict(manifest["spec"])
    if spec.hash != manifest.get("hash"):
        raise BundleError(
            f"the {label} holds env {manifest.get('hash')}, which this bayou ({__version__}) "
            f"identifies as {spec.hash}: it was packed by bayou "
            f"{manifest.get('bayou_version')}, whose env identity differs",
            bundle=source_of(label),
        )
    if expected is not None and expected.hash != spec.hash:
        raise BundleError(
            f"the {label} holds env {spec.hash} ({spec.describe()}), not the env asked "
            f"for, {expected.hash} ({expected.describe()})",
            bundle=source_of(label),
        )
    if manifest.get("kind") == "venv" and interpreters.find(manifest["python"]) is None:
        wanted = manifest["python"]
        found = ", ".join(sorted({i.version_text for i in interpreters.discover()})) or "none"
        raise BundleError(
            f"the {label} holds a pip-only env, which runs on this machine's own Python "
            f"{wanted} (it was packed with {manifest.get('python_version')}), and no Python "
            f"{wanted} was found here (found: {found}); install one (pyenv, the package "
            "manager) or list it in $BAYOU_PYTHONS",
            bundle=source_of(label),
            package=f"python={wanted}",
        )
    return spec


# -- installing -------------------------------------------------------------------


def _install(
    path: Path,
    manifest: dict[str, Any],
    spec: Env,
    store: Store,
    label: str,
    report: ProgressCallback,
    deadline: Deadline,
) -> dict[str, Any]:
    """Extract, install offline, publish under the packed env's hash (lock held)."""
    started = time.monotonic()
    final = store.env_dir(spec.hash)
    build_dir = store.new_build_dir(spec.hash)
    staging = store.builds_dir / f"{spec.hash}-unpack-{secrets.token_hex(4)}"

    def emit(stage: str, done: int | None = None, total: int | None = None, msg: str = "") -> None:
        report(ProgressEvent(spec.hash, stage, done, total, msg))

    on_conda_event = tool_events(spec.hash, report)

    try:
        staging.mkdir()
        extract(path, staging, manifest, label, emit, deadline)
        conda_records: list[dict[str, Any]] = []
        if manifest["kind"] == "conda":
            locked = Env.from_file(staging / LOCK)
            _check_lock(locked, manifest, label)
            _seed_cache(staging / "conda", store.conda_cache, manifest)
            conda_records = conda_step.solve_and_install(
                locked, store, build_dir, final, deadline, on_conda_event, offline=True
            )
            python = interpreters.python_in_prefix(build_dir) or build_dir / "bin" / "python"
            version = next(r["version"] for r in conda_records if r["name"] == "python")
        else:
            emit("venv", msg=f"python {manifest['python']}")
            python, version = uv_step.create_venv(
                spec, build_dir, store.uv_cache, deadline, offline=True
            )
        pip_packages: list[dict[str, str]] = []
        if manifest["pip"]:
            emit("pip", 0, len(manifest["pip"]), "installing the bundle's wheels")
            result = _install_wheels(python, staging, store, deadline, label)
            pip_packages = uv_step.installed_by(result)
            emit("pip", len(manifest["pip"]), len(manifest["pip"]), "done")
        deadline.check("publishing")
        emit("publish")
        record = finished_record(
            env_hash=spec.hash,
            name=spec.name,
            kind=manifest["kind"],
            backend="rattler" if manifest["kind"] == "conda" else "uv",
            backend_tool=None,
            spec=manifest["spec"],
            build_dir=build_dir,
            final=final,
            python=python,
            version=version,
            conda_records=conda_records,
            pip_packages=pip_packages,
            started=started,
        )
        record["bundle"] = {
            "source": source_of(label),
            "packed": manifest.get("created"),
            "packed_by": manifest.get("bayou_version"),
        }
        store.publish(build_dir, spec.hash, record)
        emit("done", msg=f"{spec.describe()} unpacked in {record['build_seconds']:.1f} s")
        return record
    except BaseException as exc:
        no_space = no_space_error(exc, build_dir, store.pkgs_dir)
        store.abandon(build_dir)
        if no_space is not None:
            raise no_space from exc
        if isinstance(exc, ProvisionError) and not isinstance(exc, BundleError):
            error = BundleError(
                f"the {label} could not be installed: {exc}",
                bundle=source_of(label),
                package=exc.package,
                output=exc.output,
            )
            error.log_file = _write_log(store, spec, exc.output)
            raise error from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_lock(locked: Env, manifest: dict[str, Any], label: str) -> None:
    """Every conda package the lock installs is in the bundle (rattler would try to
    download a missing one, and offline fail less clearly)."""
    carried = {p["pin"] for p in manifest.get("conda", [])}
    lock = locked.lock
    assert lock is not None
    for package in lock.conda:
        pin = f"{package.name}=={package.version}={package.build}"
        if pin not in carried:
            raise BundleError(
                f"the {label} lacks the conda package {pin}, which its lock installs",
                bundle=source_of(label),
                package=pin,
            )


def _seed_cache(trees: Path, cache: Path, manifest: dict[str, Any]) -> None:
    """Move the bundle's (verified) package trees into the store's package cache,
    where rattler installs them from, as packages it had extracted itself: envs
    of this machine then share their files, and the cache is warm for the next
    bundle. A tree the cache has already is left there (rattler validates every
    file of it before linking). Each entry is placed under rattler's own lock
    file for it (``<cache>/<name>.lock``), so a build extracting the same
    package at the same time never sees half of it."""
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    for package in manifest.get("conda", []):
        name = PurePosixPath(package["dir"]).name
        source, target = trees / name, cache / name
        fd = os.open(cache / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if target.exists():
                continue
            try:
                os.rename(source, target)
            except OSError:  # another file system ($BAYOU_PKGS_DIR): copy, then rename
                partial = cache / f".{name}.{secrets.token_hex(4)}.partial"
                shutil.copytree(source, partial, symlinks=True)
                os.rename(partial, target)
        finally:
            os.close(fd)


def _install_wheels(
    python: Path, staging: Path, store: Store, deadline: Deadline, label: str
) -> ToolResult:
    """The bundle's wheels, by exact pin and hash, from its own directory only."""
    argv = uv_tool.install_argv(python, offline=True)
    argv += ["--no-index", "--find-links", str(staging / "wheels")]
    argv += ["--no-deps", "--require-hashes", "-r", str(staging / REQUIREMENTS)]
    result = run_tool(
        argv,
        deadline=deadline,
        what="installing the bundle's wheels",
        env=uv_tool.uv_environ(store.uv_cache),
    )
    if result.returncode != 0:
        raise BundleError(
            f"the {label}'s wheels could not be installed: {uv_tool.uv_message(result)}",
            bundle=source_of(label),
            output=result.output,
        )
    return result
