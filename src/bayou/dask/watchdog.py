"""`EnvWatchdog`: fail tasks routed to an env no worker has, instead of waiting forever.

A task that requires the resource ``bayou:<key>`` while no worker offers it
sits in the scheduler's ``no-worker`` state, silently, until a worker with
that resource appears. This scheduler plugin checks those tasks every
`interval` seconds. A task that has waited `timeout` seconds while

* no worker offers the resource, and
* no live worker is still building the env (the state `EnvPlugin` records
  in the scheduler's metadata under ``["bayou-envs", key, worker]``)

is failed with `EnvUnavailableError`, whose message names the env, says how
long the task waited, what each worker reported for that env (for example
``failed: ProvisionError: ...``) and which bayou envs the cluster does
offer. The check is per task, so a worker that joins late with the env
still gets every task that has not yet timed out.
"""

from __future__ import annotations

import logging
import pickle
from time import monotonic, time
from typing import Any

from distributed import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from .names import PREFIX

logger = logging.getLogger("bayou.dask")

DEFAULT_TIMEOUT = 60.0


class EnvUnavailableError(RuntimeError):
    """A task waited `timeout` seconds for a bayou env that no worker offers."""

    def __init__(self, message: str, key: str = "", task: Any = None) -> None:
        super().__init__(message, key, task)
        self.env_key = key
        self.task = task

    def __str__(self) -> str:
        return self.args[0]


class EnvWatchdog(SchedulerPlugin):
    """Scheduler plugin failing tasks whose bayou env is nowhere after `timeout` s."""

    name = "bayou-env-watchdog"
    idempotent = True

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, interval: float = 1.0) -> None:
        if timeout <= 0 or interval <= 0:
            raise ValueError("timeout and interval must be > 0")
        self.timeout = float(timeout)
        self.interval = float(interval)
        self.scheduler: Any = None
        self._since: dict[Any, float] = {}
        self._callback: PeriodicCallback | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "interval": self.interval}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, **state)

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        previous = scheduler.periodic_callbacks.get(self.name)
        if previous is not None:  # a replaced watchdog (bayou.dask.watch)
            previous.stop()
        self._callback = PeriodicCallback(self.check, self.interval * 1000)
        scheduler.periodic_callbacks[self.name] = self._callback
        self._callback.start()

    async def close(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            if self.scheduler is not None:
                self.scheduler.periodic_callbacks.pop(self.name, None)

    def check(self) -> None:
        """Fail the tasks that waited too long for an env nobody offers or builds."""
        s = self.scheduler
        now = monotonic()
        waiting: dict[Any, tuple[Any, list[str]]] = {}
        for ts in list(s.unrunnable):
            wanted = [r for r in (ts.resource_restrictions or {}) if r.startswith(PREFIX)]
            if wanted:
                waiting[ts.key] = (ts, wanted)
        self._since = {k: self._since.get(k, now) for k in waiting}
        due = [k for k in waiting if now - self._since[k] >= self.timeout]
        if not due:
            return
        offered = {
            r for ws in s.workers.values() for r, q in (ws.resources or {}).items() if q > 0
        }
        states = s.task_metadata.get("bayou-envs", {}) if hasattr(s, "task_metadata") else {}
        stimulus_id = f"bayou-env-unavailable-{time()}"
        recommendations: dict = {}
        for key in due:
            ts, wanted = waiting[key]
            missing = [r for r in wanted if r not in offered]
            if not missing:
                continue
            reports = {
                addr: state
                for r in missing
                for addr, state in (states.get(r[len(PREFIX) :]) or {}).items()
            }
            if any(
                addr in s.workers and state == "provisioning" for addr, state in reports.items()
            ):
                continue  # still being built somewhere: keep waiting
            exc = EnvUnavailableError(
                self._message(key, missing, reports, offered), missing[0][len(PREFIX) :], key
            )
            logger.error("%s", exc)
            recommendations.update(
                s.transition(
                    key,
                    "erred",
                    exception=pickle.dumps(exc),
                    cause=key,
                    exception_text=str(exc),
                    stimulus_id=stimulus_id,
                )
            )
            self._since.pop(key, None)
        if recommendations:
            s.transitions(recommendations, stimulus_id=stimulus_id)

    def _message(
        self, key: Any, missing: list[str], reports: dict[str, str], offered: set[str]
    ) -> str:
        names = ", ".join(repr(r[len(PREFIX) :]) for r in missing)
        text = (
            f"task {key!r} waited {self.timeout:g} s for bayou env {names} "
            f"(worker resource {', '.join(missing)}), which no worker offers"
        )
        if reports:
            text += "; workers reported: " + "; ".join(
                f"{addr}: {state}" for addr, state in sorted(reports.items())
            )
        else:
            text += (
                "; no worker has been given it: register it with "
                "client.register_plugin(bayou.dask.EnvPlugin(env))"
            )
        others = sorted(r[len(PREFIX) :] for r in offered if r.startswith(PREFIX))
        text += f". Envs offered: {', '.join(map(repr, others)) if others else 'none'}."
        return text
