"""Start the rattler child for the conda half of a build and read its answer.

See `rattler_child` for the other side. This module turns the child's event
lines into `ProgressEvent`s and its result file into records or a
`ProvisionError` that names the spec at fault and the channels tried.

Offline, the child solves from the package cache only (see
`rattler_offline.offline_sources`) and runs with every proxy variable pointing
at a closed loopback port, so even a download nobody planned (a damaged cache
entry re-fetched by the installer) fails at once instead of leaving the
machine.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..env import Env, conda_platform
from ..errors import ProvisionError
from ..store import Store
from . import locked, rattler_child
from .tools import Deadline, run_tool

CHANNEL_ALIAS_VAR = "BAYOU_CHANNEL_ALIAS"
# A closed port on loopback (discard): HTTP clients that honour proxy variables fail at once.
_NO_NETWORK_PROXY = "http://127.0.0.1:9"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def channel_alias() -> str | None:
    """Where channel *names* live (conda's `channel_alias`): a mirror for sites that
    can't reach anaconda.org. `conda-forge` becomes `<alias>/conda-forge`; channels
    given as URLs or paths are untouched. A mirror serves the same packages, so the
    env's identity (which holds channel names) does not change."""
    alias = os.environ.get(CHANNEL_ALIAS_VAR)
    if not alias:
        return None
    return alias if alias.endswith("/") else alias + "/"  # a URL join keeps the last part


def solve_and_install(
    env: Env,
    store: Store,
    build_dir: Path,
    final_prefix: Path,
    deadline: Deadline,
    on_event: Callable[[dict[str, Any]], None],
    *,
    offline: bool = False,
) -> list[dict[str, Any]]:
    meta = build_dir / ".bayou"
    meta.mkdir(parents=True, exist_ok=True)
    request_path = meta / "conda-request.json"
    result_path = meta / "conda-result.json"
    request = {
        "specs": list(env.conda),
        "channels": list(env.channels),
        "channel_alias": channel_alias(),
        "platform": conda_platform(),
        "build_prefix": str(build_dir),
        "final_prefix": str(final_prefix),
        "package_cache": str(store.conda_cache),
        "repodata_cache": str(store.repodata_cache),
        "result_path": str(result_path),
        "offline": offline,
    }
    if env.lock is not None:  # install the lock's records, no solve
        request.update(locked.child_request(env.lock, meta))
    request_path.write_text(json.dumps(request))

    def on_line(line: str) -> None:
        try:
            on_event(json.loads(line))
        except ValueError:
            pass

    # Run the child as a script: it needs only the stdlib and rattler, and
    # importing the bayou package there would only cost start-up time.
    argv = [sys.executable, str(Path(rattler_child.__file__)), str(request_path)]
    child_env = None
    if offline:
        child_env = dict(os.environ, NO_PROXY="", no_proxy="")
        child_env.update(dict.fromkeys(_PROXY_VARS, _NO_NETWORK_PROXY))
    result = run_tool(
        argv,
        deadline=deadline,
        what="solving and installing conda packages",
        on_line=on_line,
        env=child_env,
    )
    try:
        answer = json.loads(result_path.read_text())
    except (OSError, ValueError):
        raise ProvisionError(
            f"the conda solver/installer process died (exit code {result.returncode})",
            output=result.output,
        )
    finally:
        request_path.unlink(missing_ok=True)
        result_path.unlink(missing_ok=True)
    if answer["ok"]:
        (meta / "virtual-packages.json").write_text(json.dumps(answer.get("virtual_packages")))
        records: list[dict[str, Any]] = answer["records"]
        return records
    channels = ", ".join(env.channels)
    if channel_alias():
        channels += f" (names resolved against $BAYOU_CHANNEL_ALIAS={channel_alias()})"
    package = answer.get("package")
    if offline and answer["stage"] in ("solve", "install"):  # what the caches lacked
        raise ProvisionError(
            _offline_message(answer, channels, store) + answer["message"],
            package=package,
            channels=tuple(env.channels),
            output=result.output + "\n" + answer.get("traceback", ""),
        )
    if answer["stage"] == "solve":
        about = f" for {package!r}" if package else ""
        message = f"could not solve the conda packages{about} from channels {channels}:\n"
    elif env.lock is not None:
        message = f"the locked conda packages could not be installed ({answer['stage']}):\n"
    else:
        message = f"conda {answer['stage']} step failed:\n"
    virtual = answer.get("virtual") or _virtual_named(answer["message"])
    raise ProvisionError(
        message + answer["message"].rstrip() + locked.virtual_hint(virtual),
        package=package,
        channels=tuple(env.channels),
        output=result.output + "\n" + answer.get("traceback", ""),
    )


def _virtual_named(message: str) -> str | None:
    """A virtual package (``__cuda``) a solver message names: what this machine lacks."""
    match = re.search(r"(?<![\w])(__[a-z][a-z0-9_]*)", message)
    return match.group(1) if match else None


def virtual_packages(build_dir: Path) -> dict[str, Any] | None:
    """The virtual packages a rattler build saw and needed (for the env's record)."""
    try:
        found: dict[str, Any] | None = json.loads(
            (build_dir / ".bayou" / "virtual-packages.json").read_text()
        )
        return found
    except (OSError, ValueError):
        return None


def _offline_message(answer: dict[str, Any], channels: str, store: Store) -> str:
    """What an offline build looked at, and that no remote channel was contacted."""
    package = answer.get("package")
    local = answer.get("local_channels") or []
    read = f" and the local channels {', '.join(local)}" if local else ""
    if answer["stage"] == "solve":
        about = f"{package!r} is" if package else "some packages are"
        where = f"not in the package cache {store.conda_cache}{read}"
    else:
        about = f"installing {package!r}" if package else f"the {answer['stage']} step"
        where = f"failed with only the package cache {store.conda_cache}{read} to use"
    return (
        f"offline ($BAYOU_OFFLINE): {about} {where}; no remote channel was contacted "
        f"(channels: {channels}):\n"
    )
