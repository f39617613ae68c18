"""bayou: run Python callables in isolated conda/pip environments.

env = bayou.Env(pip=["packaging==21.3"])        # a description (env.py)
environment = bayou.provision(env)              # built once (provision/, store.py)
bayou.run(env, ["python", "-c", "..."])         # a command inside it (run.py)
"""

from .env import Env
from .environment import Environment
from .errors import (
    BayouError,
    CrossVersionError,
    EnvInUseError,
    MemoryLimitError,
    PicklingError,
    ProvisionError,
    ProvisionTimeout,
    RemoteError,
    SpecError,
    TaskTimeoutError,
    UnpicklingError,
    WorkerCrashedError,
    WorkerHungError,
)
from .store import Store

__version__ = "0.1.0"

from .executor import EnvExecutor  # noqa: E402
from .futures import BayouFuture, Progress  # noqa: E402
from .persistent import attach  # noqa: E402  (persistent pools: docs/persistent.md)
from .provision import ProgressEvent, provision  # noqa: E402  (needs __version__)
from .run import run  # noqa: E402
from .task_api import cancel, cancel_requested, report_progress  # noqa: E402

__all__ = [
    "attach",
    "BayouError",
    "BayouFuture",
    "CrossVersionError",
    "EnvExecutor",
    "Progress",
    "UnpicklingError",
    "cancel",
    "cancel_requested",
    "report_progress",
    "Env",
    "EnvInUseError",
    "Environment",
    "MemoryLimitError",
    "PicklingError",
    "ProgressEvent",
    "ProvisionError",
    "ProvisionTimeout",
    "RemoteError",
    "SpecError",
    "Store",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerHungError",
    "provision",
    "run",
]
