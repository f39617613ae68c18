"""How an environment is named on a Dask cluster.

One string, the env's *key*, names everything: the executor
(``worker.executors["bayou:<key>"]``), the worker resource tasks require
(``{"bayou:<key>": 1}``) and the plugin (``"bayou-env-<key>"``). The key is
the name given to `EnvPlugin`, else the Env's `name`, else its hash computed
where the plugin was made (a worker on another platform computes another
hash for the same description, so the hash is fixed on the client).
"""

from __future__ import annotations

from typing import Any

from ..env import Env

PREFIX = "bayou:"


def env_key(env_or_name: Any) -> str:
    """The key of an `Env`, an `EnvPlugin` or a name given as a string."""
    key = getattr(env_or_name, "key", None)  # an EnvPlugin
    if isinstance(key, str):
        return key
    if isinstance(env_or_name, Env):
        return env_or_name.name or env_or_name.hash
    if isinstance(env_or_name, str):
        if not env_or_name.strip():
            raise ValueError("an environment name must not be empty")
        return env_or_name[len(PREFIX) :] if env_or_name.startswith(PREFIX) else env_or_name
    raise TypeError(
        f"expected a bayou.Env, an EnvPlugin or an env name, got {type(env_or_name).__name__}"
    )


def resource_name(key: str) -> str:
    """The worker resource (and executor name) of the env with this key."""
    return PREFIX + key
