"""`EnvPlugin`: the worker side of bayou.dask.

Registered once with ``client.register_plugin(EnvPlugin(env))``, it runs on
every worker, now and joining later::

    setup(worker)
      ├─ scheduler metadata ["bayou-envs", key, worker] = "provisioning"
      ├─ bayou.provision(env)       (in a thread; the store's per-env lock
      │                              makes workers of one machine build once)
      │  or bayou.unpack(bundle)     (bundle=: a path or URL every worker reads;
      │                              offline, no channel or index needed)
      ├─ EnvExecutor(max_workers, env=...) wrapped in DaskEnvExecutor
      │     ─▶ worker.executors["bayou:<key>"]
      ├─ worker.set_resources({"bayou:<key>": max_workers})
      └─ metadata = "ready"        ("ready (built here)" on the worker that built
                                    it, "failed: <error>"; read by EnvWatchdog)
    transition(...)   a task needing the resource gets the executor annotation
                      (so ``client.submit(f, resources=...)`` alone routes too)
    teardown(worker)  resource set to 0, executor removed and shut down

On a worker that is already running, `setup` waits for the build, so
``client.register_plugin`` returns once every current worker is ready. A
worker that joins later runs `setup` while registering, before its heartbeats
start; there the build goes on in the background (a long build must not get
the worker removed for silence) and the resource appears when it is done.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from ..bundle_read import read_manifest
from ..env import Env
from ..executor import EnvExecutor
from ..provision import ProgressEvent, provision
from ..provision.progress import default_progress
from ..provision.unpack import unpack
from ..store import Store
from .executor import DaskEnvExecutor
from .names import env_key, resource_name

logger = logging.getLogger("bayou.dask")

METADATA_ROOT = "bayou-envs"
_EXECUTOR_OPTIONS = frozenset(
    name
    for name, p in inspect.signature(EnvExecutor.__init__).parameters.items()
    # env comes from the plugin; a persistent (detached, named) pool is per machine,
    # not per dask worker, so it is not offered here.
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("env", "persistent", "name")
)


class EnvPlugin(WorkerPlugin):
    """Provision `env` on every worker and run the tasks routed to it there.

    env
        The `bayou.Env` to build on each worker (into that machine's store).
    name
        The env's key on the cluster (executor ``"bayou:<name>"``, resource
        of the same name); default ``env.name``, else ``env.hash``.
    max_workers
        Env worker processes per dask worker; also how many tasks of this
        env one dask worker runs at a time (the resource's quantity).
    provision_timeout
        Seconds a build may take before it is abandoned (default: no limit).
    bundle
        A bundle of `env` (`bayou.pack`, ``bayou env pack``): a path every
        worker can read (a shared file system) or an http(s) URL. Workers
        then unpack it into their store instead of building from channels
        and indexes, so they need no access to them (``BAYOU_OFFLINE=1``
        works). `EnvPlugin.from_store` makes it from the client's store.
        A worker that cannot read it reports the error as a failed build.
    executor_options
        Keyword arguments for each worker's `EnvExecutor`
        (``heartbeat_timeout``, ``task_timeout``, ``retries``,
        ``max_memory_per_worker``, ``output``...).
    """

    idempotent = False

    def __init__(
        self,
        env: Env,
        name: str | None = None,
        max_workers: int = 1,
        *,
        provision_timeout: float | None = None,
        bundle: str | os.PathLike[str] | None = None,
        **executor_options: Any,
    ) -> None:
        if not isinstance(env, Env):
            raise TypeError(f"EnvPlugin takes a bayou.Env, not {type(env).__name__}")
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        unknown = sorted(set(executor_options) - _EXECUTOR_OPTIONS)
        if unknown:
            raise TypeError(
                f"EnvPlugin got unknown EnvExecutor option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_EXECUTOR_OPTIONS))}"
            )
        self.key = env_key(name if name is not None else env)
        self.name = f"bayou-env-{self.key}"
        self.resource = resource_name(self.key)
        self.executor_name = self.resource
        self.max_workers = max_workers
        self.provision_timeout = provision_timeout
        self.bundle = _bundle_location(bundle)
        self.executor_options = dict(executor_options)
        self.env_description = repr(env)
        self._env = env  # pickles as its description: rebuilt on each worker's platform
        self._reset_runtime()

    @classmethod
    def from_store(
        cls,
        env: Env,
        directory: str | os.PathLike[str],
        name: str | None = None,
        max_workers: int = 1,
        *,
        url: str | None = None,
        store: Store | str | os.PathLike[str] | None = None,
        compression: str = "gz",
        provision_timeout: float | None = None,
        **executor_options: Any,
    ) -> EnvPlugin:
        """A plugin whose workers unpack `env` from a bundle the client makes.

        The env is packed from the client's `store` (built there first when
        missing) into `directory`, as ``bayou-<hash>.tar.gz``, unless a bundle
        of the same env is there already. `directory` must be readable by every
        worker at the same path (a shared file system), or served over HTTP at
        `url` (the workers then fetch ``<url>/bayou-<hash>.tar.gz``). The client
        names the place because only it knows one the workers can reach."""
        from ..bundle import bundle_file_name, pack

        path = Path(directory).expanduser().absolute() / bundle_file_name(env, compression)
        if not _holds(path, env):
            pack(env, path, store=store, compression=compression)
        bundle = f"{url.rstrip('/')}/{path.name}" if url else str(path)
        return cls(
            env,
            name,
            max_workers,
            provision_timeout=provision_timeout,
            bundle=bundle,
            **executor_options,
        )

    def _reset_runtime(self) -> None:
        self._worker: Any = None
        self._adapter: DaskEnvExecutor | None = None
        self._starting: asyncio.Task | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for runtime in ("_worker", "_adapter", "_starting"):
            state.pop(runtime, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    @property
    def env(self) -> Env:
        """The Env as rebuilt here (on a worker: that worker's platform, see `Env.__reduce__`)."""
        return self._env

    def __repr__(self) -> str:
        return (
            f"EnvPlugin({self.env_description}, name={self.key!r}, max_workers={self.max_workers})"
        )

    # -- worker hooks ---------------------------------------------------------------

    async def setup(self, worker: Any) -> None:
        current = worker.executors.get(self.executor_name)
        if current is not None:
            raise ValueError(
                f"worker {worker.address} already has an executor {self.executor_name!r}: "
                f"two EnvPlugins with the key {self.key!r}? Give one another name="
            )
        self._worker = worker
        self._starting = asyncio.ensure_future(self._start(worker))
        heartbeat = getattr(worker, "periodic_callbacks", {}).get("heartbeat")
        if heartbeat is not None and heartbeat.is_running():
            await self._starting
        else:
            self._starting.add_done_callback(self._log_background_failure)

    def _log_background_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "bayou env %r could not be set up on this worker",
                self.key,
                exc_info=task.exception(),
            )

    async def _start(self, worker: Any) -> None:
        await self._set_state(worker, "provisioning")
        try:
            env = self.env
            built = []  # progress events come only from the process that builds
            report = default_progress()

            def progress(event: ProgressEvent) -> None:
                built.append(event)
                report(event)

            if self.bundle is not None:
                environment = await asyncio.to_thread(
                    unpack, self.bundle, env=env, progress=progress, timeout=self.provision_timeout
                )
            else:
                environment = await asyncio.to_thread(
                    provision, env, progress, timeout=self.provision_timeout
                )
            env_executor = await asyncio.to_thread(
                EnvExecutor, self.max_workers, env=environment, **self.executor_options
            )
        except BaseException as exc:
            await self._set_state(worker, f"failed: {type(exc).__name__}: {exc}")
            raise
        self._adapter = DaskEnvExecutor(env_executor, label=self.key)
        worker.executors[self.executor_name] = self._adapter
        await worker.set_resources(**{self.resource: self.max_workers})
        here = "unpacked here" if self.bundle is not None else "built here"
        await self._set_state(worker, f"ready ({here})" if built else "ready")
        logger.info(
            "bayou env %r ready on %s (%s, %d workers)",
            self.key,
            worker.address,
            environment.prefix,
            self.max_workers,
        )

    async def _set_state(self, worker: Any, state: str) -> None:
        try:
            await asyncio.wait_for(
                worker.scheduler.set_metadata(
                    keys=[METADATA_ROOT, self.key, worker.address], value=state
                ),
                timeout=10,
            )
        except Exception:  # only diagnostics for EnvWatchdog; never fail the worker
            logger.debug("could not record env state %r on the scheduler", state, exc_info=True)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        # Route tasks that only carry the resource (client.submit(..., resources=...)).
        if finish not in ("constrained", "ready", "executing") or self._worker is None:
            return
        ts = self._worker.state.tasks.get(key)
        if ts is None or not ts.resource_restrictions:
            return
        if self.resource in ts.resource_restrictions:
            if ts.annotations is None:
                ts.annotations = {}
            ts.annotations.setdefault("executor", self.executor_name)

    async def teardown(self, worker: Any) -> None:
        starting = self._starting
        if starting is not None and not starting.done():
            starting.cancel()
        if worker.executors.get(self.executor_name) is self._adapter:
            worker.executors.pop(self.executor_name, None)
        if self.resource in worker.state.total_resources and worker.status.name in (
            "running",
            "paused",
        ):
            try:
                await asyncio.wait_for(worker.set_resources(**{self.resource: 0}), timeout=10)
            except Exception:
                logger.debug("could not withdraw resource %s", self.resource, exc_info=True)
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            await asyncio.to_thread(adapter.shutdown, True)
        self._worker = None


def _bundle_location(bundle: str | os.PathLike[str] | None) -> str | None:
    """A URL as given; a path made absolute where the plugin is made (the workers'
    working directories differ from the client's)."""
    if bundle is None:
        return None
    text = os.fspath(bundle)
    if "://" in text:
        return text
    return str(Path(text).expanduser().absolute())


def _holds(path: Path, env: Env) -> bool:
    """Whether `path` is a readable bundle of `env` already (made by an earlier run)."""
    from ..errors import BundleError

    if not path.is_file():
        return False
    try:
        return read_manifest(path).get("hash") == env.hash
    except BundleError:
        return False
