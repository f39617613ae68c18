"""Wetlands in the executor comparison, pointed at a local venv through a pixi stand-in.

Wetlands (``pip install wetlands``) builds its environments with pixi, from
conda-forge, which this machine cannot reach. What compare.py measures is its
*worker transport* (start, call, transfer), so the environment is a local
venv that bayou provisions (``numpy`` and the ``debugpy`` pin Wetlands checks
for), and Wetlands is given a small stand-in for the pixi executable:

* ``pixi --version`` prints a version;
* ``pixi install --manifest-path M`` writes ``.pixi/envs/default/bin/python``
  next to M, a two-line shell script that execs the venv's interpreter (a
  symlink would not do: Python finds its venv from the path it was started
  by), and a ``pixi.lock``;
* ``pixi run --manifest-path M CMD...`` runs CMD with that env's ``bin`` first
  on PATH.

Wetlands then provisions, validates and starts workers exactly as it would
over real pixi. Its pool is wrapped as a `concurrent.futures.Executor`
(`WetlandsExecutor`): ``submit`` is ``WorkerPool.submit_path`` (the function's
module file, loaded in the worker: Wetlands clears PYTHONPATH, so by-import
calls of our module are not possible) and ``map`` is Executor's default over
``submit``, since Wetlands has no map of its own.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

DEBUGPY = "debugpy==1.8.20"  # wetlands.specs.MANAGED_DEBUGPY_VERSION, checked at provisioning

_STANDIN = """#!{python}
# pixi stand-in for benchmarks/compare.py: see benchmarks/wetlands_contender.py
import os, sys
PYTHON = {venv_python!r}
args = sys.argv[1:]
if args[:1] == ["--version"]:
    print("pixi 0.63.2")
    sys.exit(0)
command, rest = args[0], args[1:]
manifest = None
if "--manifest-path" in rest:
    i = rest.index("--manifest-path")
    manifest = rest[i + 1]
    del rest[i : i + 2]
rest = [a for a in rest if a not in ("--locked", "--frozen")]
project = os.path.dirname(os.path.abspath(manifest or "pixi.toml"))
bindir = os.path.join(project, ".pixi", "envs", "default", "bin")
if command == "install":
    os.makedirs(bindir, exist_ok=True)
    python = os.path.join(bindir, "python")
    with open(python, "w") as f:
        f.write("#!/bin/sh\\nexec %s \\"$@\\"\\n" % PYTHON)
    os.chmod(python, 0o755)
    lock = os.path.join(project, "pixi.lock")
    if not os.path.exists(lock):
        with open(lock, "w") as f:
            f.write("version: 6\\n# written by the pixi stand-in of bayou's benchmarks\\n")
    sys.exit(0)
if command == "run":
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    os.environ["CONDA_PREFIX"] = os.path.dirname(bindir)
    target = rest[0]
    if os.sep not in target:
        target = os.path.join(bindir, target) if target == "python" else target
    os.execvp(target, [rest[0], *rest[1:]])
sys.stderr.write("pixi stand-in: unsupported command %r\\n" % (args,))
sys.exit(2)
"""


def make_pixi_standin(directory: Path, venv_python: str | os.PathLike) -> Path:
    """Write the stand-in executable into `directory`; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pixi"
    path.write_text(_STANDIN.format(python=sys.executable, venv_python=str(venv_python)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class WetlandsExecutor(Executor):
    """A Wetlands worker pool as a `concurrent.futures.Executor` (submit, map, shutdown)."""

    def __init__(self, environment: Any, workers: int) -> None:
        self._pool = environment.start(workers=workers)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        module = sys.modules[fn.__module__]
        task = self._pool.submit_path(module.__file__, fn.__qualname__, args=args, kwargs=kwargs)
        fut: Future = Future()
        fut.set_running_or_notify_cancel()

        def settle(done: Future) -> None:  # Wetlands' own future of the task
            exc = done.exception()
            if exc is None:
                fut.set_result(done.result())
            else:
                fut.set_exception(exc)

        task._future.add_done_callback(settle)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.close()


class WetlandsSetup:
    """A Wetlands manager and one provisioned environment over a bayou-made venv."""

    def __init__(self, root: Path, venv_python: str | os.PathLike, python_xy: str) -> None:
        from wetlands import EnvironmentManager, EnvironmentSpec

        pixi = make_pixi_standin(root / "standin", venv_python)
        self.manager = EnvironmentManager(root=root / "wetlands", pixi_executable=pixi)
        spec = EnvironmentSpec(python=f"{python_xy}.*", pypi=("numpy",))
        self.environment = self.manager.provision("bench", spec).wait_for(600)

    def executor(self, workers: int) -> WetlandsExecutor:
        return WetlandsExecutor(self.environment, workers)

    def close(self) -> None:
        self.manager.close()
