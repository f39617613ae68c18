"""bayou on a Dask cluster: tasks that run inside bayou environments on the workers.

::

    client.register_plugin(EnvPlugin(env))        # plugin.py: every worker builds env,
                                                  # registers executor + resource
    with bayou.dask.env(env):                     # annotate.py: executor + resource
        fut = client.submit(f, x)                 #   annotations on these tasks
    scheduler ─ resource "bayou:<key>" ─▶ a worker that has the env
    worker.execute ─▶ executors["bayou:<key>"]    # executor.py: DaskEnvExecutor
        ─▶ routing.route(run_spec): user functions become EnvCall
        ─▶ EnvExecutor (bayou worker processes in the env) ─▶ result / exception
    EnvWatchdog (scheduler)                       # watchdog.py: a task for an env no
                                                  #   worker offers fails after a timeout

Only the user's function and its resolved arguments cross into the env; the
env needs neither dask nor distributed. Requires distributed >= 2025.1.0
(checked at import: `UnsupportedDistributedError`). See docs/dask.md.
"""

from ._compat import MIN_DISTRIBUTED, UnsupportedDistributedError, check_distributed

check_distributed()

from .annotate import EnvRoute, WatchdogUnavailableWarning, env, status, watch  # noqa: E402
from .executor import DaskEnvExecutor  # noqa: E402
from .names import env_key, resource_name  # noqa: E402
from .plugin import EnvPlugin  # noqa: E402
from .watchdog import EnvUnavailableError, EnvWatchdog  # noqa: E402

__all__ = [
    "MIN_DISTRIBUTED",
    "DaskEnvExecutor",
    "EnvPlugin",
    "EnvRoute",
    "EnvUnavailableError",
    "EnvWatchdog",
    "UnsupportedDistributedError",
    "WatchdogUnavailableWarning",
    "env",
    "env_key",
    "resource_name",
    "status",
    "watch",
]
