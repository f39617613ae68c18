"""Debug workers: ``EnvExecutor(..., debug=True)`` and ``bayou debug NAME``.

Data flow::

    EnvExecutor(debug=True, name=N) ─▶ DebugPool (a Pool)
        ├─ ensure_debugpy(): the caller's debugpy, linked into the store once
        └─ each worker's config: {"debug": {"dir": <state>/debug/<N>, ...}},
           debugpy's directory appended to the worker's sys.path
    worker (_bayou_worker.debughook, before READY)
        debugpy.listen(("127.0.0.1", 0), in_process_debug_adapter=True)
        ─▶ writes <state>/debug/<N>/<pid>.json  {"pid", "host", "port", ...}
    ex.debug_ports            {pid: port} of the pool's live workers
    bayou debug N [-o FILE]   a VS Code launch.json with one "attach" configuration
                              per listening worker (and a compound for all)

The debug directory is private (under the store's 0700 state dir). Unnamed
executors get the id ``pid<caller pid>-<n>``; ``bayou debug`` lists every id
that has listening workers. Heartbeats are off in a debug pool: a worker
stopped at a breakpoint must not be killed as hung (`task_timeout` still
applies if you set it).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from .environment import Environment
from .pool import Pool
from .store import Store
from .worker import deploy

logger = logging.getLogger("bayou.debug")

HOST = "127.0.0.1"
_ids = itertools.count(1)
_STALE_AGE = 60.0


def debug_root(store: Store | None = None) -> Path:
    path = (store or Store()).state_dir / "debug"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def new_debug_id(name: str | None) -> str:
    return name if name is not None else f"pid{os.getpid()}-{next(_ids)}"


class DebugPool(Pool):
    """A Pool whose workers listen with debugpy (see the module docstring)."""

    def __init__(
        self,
        environment: Environment,
        *,
        debug_id: str,
        store: Store | None = None,
        wait_for_client: bool = False,
        **options: Any,
    ) -> None:
        if options.get("heartbeat_timeout") is not None:
            logger.info("debug=True: heartbeats are off so a paused worker is not killed")
        options["heartbeat_timeout"] = None
        super().__init__(environment, **options)
        self.debug_id = debug_id
        self.debug_dir = debug_root(store) / debug_id
        if self.debug_dir.exists():  # a former pool of this name: its files are stale
            shutil.rmtree(self.debug_dir, ignore_errors=True)
        self.debug_dir.mkdir(mode=0o700)
        self._debugpy_dir = str(deploy.ensure_debugpy(self._runtime_root))
        self._wait_for_client = wait_for_client

    def _worker_config(self) -> dict:
        config = super()._worker_config()
        config["append_path"] = [*config.get("append_path", ()), self._debugpy_dir]
        config["debug"] = {
            "dir": str(self.debug_dir),
            "host": HOST,
            "port": 0,
            "wait": self._wait_for_client,
            "pure_python": self.environment.python_xy != tuple(sys.version_info[:2]),
        }
        return config

    @property
    def debug_ports(self) -> dict[int, int]:
        """{worker pid: port} for this pool's workers that listen for a debugger."""
        pids = set(self.processes)
        return {w["pid"]: w["port"] for w in listening(self.debug_dir) if w["pid"] in pids}

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            shutil.rmtree(self.debug_dir, ignore_errors=True)


def listening(directory: Path) -> list[dict[str, Any]]:
    """The live workers that wrote a record into a debug directory, by pid."""
    found = []
    try:
        files = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for path in files:
        try:
            record = json.loads(path.read_text())
            written = path.stat().st_mtime
            proc = psutil.Process(int(record["pid"]))
            alive = proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= written + 1
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            alive = False
        if alive:
            found.append(record)
        else:
            try:
                path.unlink()
            except OSError:
                pass
    return sorted(found, key=lambda r: r["pid"])


def targets(store: Store | None = None) -> dict[str, list[dict[str, Any]]]:
    """{debug id: listening workers} for every debug pool; empty stale directories go."""
    root = debug_root(store)
    out = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        workers = listening(directory)
        if workers:
            out[directory.name] = workers
        elif time.time() - directory.stat().st_mtime > _STALE_AGE:
            shutil.rmtree(directory, ignore_errors=True)
    return out


def launch_configurations(debug_id: str, workers: list[dict[str, Any]]) -> dict[str, Any]:
    """VS Code launch.json content: one attach configuration per worker, plus a compound."""
    configs = [
        {
            "name": f"bayou {debug_id}: worker pid {w['pid']}",
            "type": "debugpy",
            "request": "attach",
            "connect": {"host": w["host"], "port": w["port"]},
            "justMyCode": False,
        }
        for w in workers
    ]
    compounds = []
    if len(configs) > 1:
        compounds.append(
            {
                "name": f"bayou {debug_id}: all workers",
                "configurations": [c["name"] for c in configs],
            }
        )
    return {"version": "0.2.0", "configurations": configs, "compounds": compounds}


def write_launch_json(path: Path, debug_id: str, workers: list[dict[str, Any]]) -> Path:
    """Write (or update) a launch.json: entries of earlier runs of `debug_id` are replaced.

    Other configurations in an existing file are kept. A file that is not
    plain JSON (VS Code allows comments) is not touched: the error says so.
    """
    prefix = f"bayou {debug_id}:"
    fresh = launch_configurations(debug_id, workers)
    data: dict[str, Any] = {"version": "0.2.0", "configurations": [], "compounds": []}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(
                f"{path} is not plain JSON ({exc}); remove its comments or write elsewhere "
                f"with -o, or print the configuration with -o -"
            ) from None
    for key in ("configurations", "compounds"):
        kept = [c for c in data.get(key, []) if not str(c.get("name", "")).startswith(prefix)]
        data[key] = kept + fresh[key]
    data.setdefault("version", "0.2.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")
    return path
