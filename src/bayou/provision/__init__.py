"""`provision()`: turn an `Env` into an `Environment` on disk, at most once.

    provision(env)
      │ existing/current env ─────────────────────────────▶ Environment (no build)
      │ allow_current and the caller satisfies it (reuse) ─▶ the caller's (no build)
      │ store.find(hash) hit: $BAYOU_HOME, then $BAYOU_STORE_PATH's shared
      │ stores (read only: no touch there) ───────────────▶ Environment (fast path)
      ▼ miss
    store.lock(hash)  (cross-process; a second caller waits here, then hits)
      │ discard what killed builds left
      ▼
    builds/<hash>-x/ ◀── conda_step (rattler child: solve, download, link
      │                  with the final prefix as the placeholder target)
      │                  or external (micromamba/pixi/conda, then relocated)
      │             ◀── uv_step.create_venv (pip-only envs)
      │             ◀── uv_step.install (pip part)
      │ fix the build path out of scripts, compute activation, size
      ▼
    store.publish: record written, then rename to envs/<hash>/ ──▶ Environment

Any failure or interruption (exception, timeout, Ctrl-C) discards the build
directory and leaves the store exactly as it was. The full tool output of a
failed build is written to ``logs/build-<hash>.log`` and kept on the error.
Offline (``offline=True`` or ``$BAYOU_OFFLINE``), every step uses caches only
(docs/offline-and-shared.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from .._version import __version__
from ..env import Env, conda_platform
from ..environment import Environment, current_environment
from ..errors import ProvisionError, SpecError
from ..interpreters import python_in_prefix
from ..store import Store, tree_size
from . import activation, conda_step, external, reuse, uv_step
from .diskfull import no_space_error
from .progress import ProgressCallback, ProgressEvent, default_progress
from .tools import Deadline, offline_requested

__all__ = ["provision", "ProgressEvent", "environment_from_record"]


def provision(
    env: Env,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    allow_current: bool = False,
    allow_download: bool | None = None,
    offline: bool | None = None,
) -> Environment:
    """Build `env` (or find it already built) and return where it lives.

    Safe to call from many processes at once: one builds, the others wait
    and then reuse the result. `timeout` (seconds) bounds the whole call;
    when it passes, or on Ctrl-C, the build is killed and nothing is kept.
    `allow_current=True` returns the caller's own interpreter instead when
    it already satisfies a pip-only spec (see `reuse`). `allow_download`
    lets an external backend fetch micromamba/pixi into the store when it is
    missing (default: ``$BAYOU_ALLOW_DOWNLOAD``; see docs/backends.md).
    `offline=True` (default: ``$BAYOU_OFFLINE``) builds from the package
    caches only, without any network access, and names at once what is
    missing there.
    """
    if not isinstance(env, Env):
        raise TypeError(f"provision() takes a bayou.Env, not {type(env).__name__}")
    if env.kind == "current":
        return current_environment(env.env_vars)
    if env.kind == "existing":
        return _existing_environment(env)
    if allow_current:
        reason = reuse.why_not_current(env)
        if reason is None:
            return reuse.caller_environment(env)
        reuse.log.debug("not reusing the caller's interpreter for %s: %s", env.describe(), reason)
    store = store if isinstance(store, Store) else Store(store)
    offline = offline_requested(offline)
    found = store.find(env.hash)  # this store, then the shared ones ($BAYOU_STORE_PATH)
    if found is not None:
        return reused(*found, env)

    report = progress or default_progress()
    deadline = Deadline(timeout)
    try:
        record = built_once(
            store,
            env.hash,
            deadline,
            lambda: _build(env, store, report, deadline, allow_download, offline),
        )
    except TimeoutError as exc:
        if isinstance(exc, ProvisionError):
            raise
        raise _timeout_error(timeout, "waiting for another process building the same env")
    return reused(store, record, env)


def built_once(
    store: Store, env_hash: str, deadline: Deadline, make: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The env's record, made by `make` under the env's build lock unless another
    process made it while we waited for that lock: one process builds (or unpacks)."""
    with store.lock(env_hash, timeout=deadline.remaining()):
        record = store.lookup(env_hash)
        return record if record is not None else make()


def reused(owner: Store, record: dict[str, Any], env: Env) -> Environment:
    """A stored env handed out: its use and name noted in its store (no-ops in a
    shared store, which is never written)."""
    owner.touch(env.hash)
    owner.add_name(env.hash, env.name, record)
    return environment_from_record(record, env)


def _timeout_error(timeout: float | None, what: str) -> ProvisionError:
    from ..errors import ProvisionTimeout

    return ProvisionTimeout(f"provisioning timed out after {timeout:g} s ({what})")


def _build(
    env: Env,
    store: Store,
    report: ProgressCallback,
    deadline: Deadline,
    allow_download: bool | None = None,
    offline: bool = False,
) -> dict[str, Any]:
    started = time.monotonic()
    final = store.env_dir(env.hash)
    build_dir = store.new_build_dir(env.hash)
    output: list[str] = []

    def emit(stage: str, done: int | None = None, total: int | None = None, msg: str = "") -> None:
        report(ProgressEvent(env.hash, stage, done, total, msg))

    on_tool_event = tool_events(env.hash, report)

    try:
        conda_records: list[dict[str, Any]] = []
        backend, tool_info = "uv", None
        if env.is_conda:
            backend = external.selected_backend(env)
            if backend == "rattler":
                conda_records = conda_step.solve_and_install(
                    env, store, build_dir, final, deadline, on_tool_event, offline=offline
                )
            else:
                conda_records, tool_info = external.solve_and_install(
                    env,
                    backend,
                    store,
                    build_dir,
                    final,
                    deadline,
                    on_tool_event,
                    allow_download=allow_download,
                    offline=offline,
                )
            python = python_in_prefix(build_dir)
            if python is None:
                raise ProvisionError("the solved conda environment has no python")
            # The solved python package says which version it is: no need to run it.
            version = next(r["version"] for r in conda_records if r["name"] == "python")
        else:
            emit("venv", msg=f"python {env.python}")
            python, version = uv_step.create_venv(
                env, build_dir, store.uv_cache, deadline, offline=offline
            )
        pip_packages: list[dict[str, str]] = []
        if env.pip:
            emit("pip", 0, len(env.pip), "installing with uv")
            result = uv_step.install(
                env, python, store.uv_cache, deadline, offline=offline, on_event=on_tool_event
            )
            output.append(result.output)
            emit("pip", len(env.pip), len(env.pip), "done")
            pip_packages = uv_step.installed_by(result)
        deadline.check("publishing")
        emit("publish")
        record = finished_record(
            env_hash=env.hash,
            name=env.name,
            kind="conda" if env.is_conda else "venv",
            backend=backend,
            backend_tool=tool_info,
            spec=env.to_dict(),
            build_dir=build_dir,
            final=final,
            python=python,
            version=version,
            conda_records=conda_records,
            pip_packages=pip_packages,
            started=started,
        )
        store.publish(build_dir, env.hash, record)
        emit("done", msg=f"{env.describe()} in {record['build_seconds']:.1f} s")
        return record
    except BaseException as exc:
        # Measured before the build is discarded (which frees the space again).
        no_space = no_space_error(exc, build_dir, store.pkgs_dir)
        store.abandon(build_dir)
        error = no_space or exc
        if isinstance(error, ProvisionError):
            error.log_file = _write_log(store, env, error.output or "\n".join(output))
            if error.log_file:
                error.args = (f"{error.args[0]}\n(full output in {error.log_file})",)
            try:
                report(ProgressEvent(env.hash, "failed", message=str(error).splitlines()[0]))
            except Exception:
                pass
        if no_space is not None:
            raise no_space from exc
        raise


def _write_log(store: Store, env: Env, text: str) -> str | None:
    """The build log's path, or None when even that cannot be written (full disk)."""
    try:
        store.logs_dir.mkdir(parents=True, exist_ok=True)
        path = store.logs_dir / f"build-{env.hash}.log"
        path.write_text(text)
    except OSError:
        return None
    return str(path)


def tool_events(env_hash: str, report: ProgressCallback) -> Callable[[dict[str, Any]], None]:
    """What the rattler child and uv's progress parser emit, as `ProgressEvent`s."""

    def on_tool_event(event: dict[str, Any]) -> None:
        if event.get("event") == "progress":
            report(
                ProgressEvent(
                    env_hash,
                    event["stage"],
                    event.get("done"),
                    event.get("total"),
                    event.get("message", ""),
                    event.get("bytes_done"),
                    event.get("bytes_total"),
                )
            )

    return on_tool_event


def finished_record(
    *,
    env_hash: str,
    name: str | None,
    kind: str,
    backend: str,
    backend_tool: dict[str, Any] | None,
    spec: dict[str, Any],
    build_dir: Path,
    final: Path,
    python: Path,
    version: str,
    conda_records: list[dict[str, Any]],
    pip_packages: list[dict[str, str]],
    started: float,
) -> dict[str, Any]:
    """Point a finished build at its final prefix and describe it for the store (the
    record `store.publish` writes): one way for a build and an unpacked bundle."""
    _replace_build_path(build_dir, final)
    if kind == "conda":
        act = activation.conda_activation(build_dir, final, name or env_hash)
    else:
        act = activation.venv_activation(final)
    return {
        "hash": env_hash,
        "name": name,
        "kind": kind,
        "backend": backend,
        "backend_tool": backend_tool,
        "spec": spec,
        "prefix": str(final),
        "python": str(final / python.relative_to(build_dir)),
        "python_version": version,
        "platform": conda_platform(),
        "conda_packages": conda_records,
        "virtual_packages": conda_step.virtual_packages(build_dir),
        "pip_packages": pip_packages,
        "activation": act,
        "size": tree_size(build_dir),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 3),
        "bayou_version": __version__,
    }


def _replace_build_path(build_dir: Path, final: Path) -> None:
    """Scripts written by pip tools name the build directory; point them home."""
    old, new = str(build_dir).encode(), str(final).encode()
    bindir = build_dir / "bin"
    if not bindir.is_dir():
        return
    for entry in bindir.iterdir():
        if entry.is_symlink() or not entry.is_file():
            continue
        try:
            with open(entry, "rb") as fh:
                head = fh.read(2)
                if head != b"#!":
                    continue
                data = head + fh.read()
        except OSError:
            continue
        if old in data:
            mode = entry.stat().st_mode
            tmp = entry.with_name(entry.name + ".bayou-tmp")
            tmp.write_bytes(data.replace(old, new))
            os.chmod(tmp, mode)
            os.replace(tmp, entry)


def _python_version(python: Path) -> str:
    import subprocess

    out = subprocess.run(
        [str(python), "-I", "-c", "import sys; print(*sys.version_info[:3], sep='.')"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise ProvisionError(f"the env's python does not run: {out.stderr.strip()}")
    return out.stdout.strip()


def environment_from_record(record: dict[str, Any], env: Env | None = None) -> Environment:
    env_vars = dict(env.env_vars) if env is not None else record["spec"].get("env_vars", {})
    return Environment(
        prefix=Path(record["prefix"]),
        python=Path(record["python"]),
        hash=record["hash"],
        python_version=record["python_version"],
        record=record,
        activation=record.get("activation", {}),
        env_vars=env_vars,
    )


def _existing_environment(env: Env) -> Environment:
    python = cast(Path, env.path)  # an existing env's python
    if not python.exists():
        raise SpecError("the environment's python no longer exists", entry=str(python))
    version = _python_version(python)
    prefix = python.parent.parent
    act = (
        activation.venv_activation(prefix)
        if (prefix / "pyvenv.cfg").exists()
        else activation.conda_activation(prefix, prefix, prefix.name)
        if (prefix / "conda-meta").is_dir()
        else {"path": [str(python.parent)], "set": {}, "unset": []}
    )
    return Environment(
        prefix=prefix,
        python=python,
        hash=env.hash,
        python_version=version,
        record={"hash": env.hash, "prefix": str(prefix), "kind": "existing"},
        activation=act,
        env_vars=dict(env.env_vars),
    )
