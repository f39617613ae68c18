"""Start the rattler child for the conda half of a build and read its answer.

See `rattler_child` for the other side. This module turns the child's event
lines into `ProgressEvent`s and its result file into records or a
`ProvisionError` that names the spec at fault and the channels tried.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..env import Env, conda_platform
from ..errors import ProvisionError
from ..store import Store
from . import rattler_child
from .tools import Deadline, run_tool

CHANNEL_ALIAS_VAR = "BAYOU_CHANNEL_ALIAS"


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
    }
    request_path.write_text(json.dumps(request))

    def on_line(line: str) -> None:
        try:
            on_event(json.loads(line))
        except ValueError:
            pass

    # Run the child as a script: it needs only the stdlib and rattler, and
    # importing the bayou package there would only cost start-up time.
    argv = [sys.executable, str(Path(rattler_child.__file__)), str(request_path)]
    result = run_tool(
        argv, deadline=deadline, what="solving and installing conda packages", on_line=on_line
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
        return answer["records"]
    channels = ", ".join(env.channels)
    if channel_alias():
        channels += f" (names resolved against $BAYOU_CHANNEL_ALIAS={channel_alias()})"
    package = answer.get("package")
    if answer["stage"] == "solve":
        about = f" for {package!r}" if package else ""
        message = f"could not solve the conda packages{about} from channels {channels}:\n"
    else:
        message = f"conda {answer['stage']} step failed:\n"
    raise ProvisionError(
        message + answer["message"],
        package=package,
        channels=tuple(env.channels),
        output=result.output + "\n" + answer.get("traceback", ""),
    )
