"""bayou: run Python callables in isolated conda/pip environments.

env = bayou.Env(pip=["packaging==21.3"])        # a description (env.py)
environment = bayou.provision(env)              # built once (provision/, store.py)
bayou.run(env, ["python", "-c", "..."])         # a command inside it (run.py)
"""

from ._version import __version__ as __version__
from .actor import Actor
from .bundle import pack  # bundles: docs/bundles.md
from .env import Env
from .environment import Environment
from .errors import (
    ActorDiedError,
    BayouError,
    BundleError,
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
from .executor import EnvExecutor
from .futures import BayouFuture, Progress
from .persistent import attach  # persistent pools: docs/persistent.md
from .provision import ProgressEvent, provision
from .provision.unpack import unpack
from .run import run
from .store import Store
from .task_api import cancel, cancel_requested, report_progress

__all__ = [
    "Actor",
    "ActorDiedError",
    "attach",
    "BayouError",
    "BayouFuture",
    "BundleError",
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
    "pack",
    "provision",
    "run",
    "unpack",
]
