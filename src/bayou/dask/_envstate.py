"""Carry a `bayou.Env` to dask workers.

`Env` is immutable and deliberately not picklable as is (its `__setattr__`
refuses), so a plugin sent to workers carries the Env's *description* and
rebuilds it there. Rebuilding (rather than shipping the hash) matters: the
hash includes the platform, and a worker on another platform must build its
own variant of the same description.
"""

from __future__ import annotations

from typing import Any

from ..env import Env


def env_state(env: Env) -> dict[str, Any]:
    """A picklable description from which `rebuild_env` makes an equal Env."""
    if not isinstance(env, Env):
        raise TypeError(f"expected a bayou.Env, got {type(env).__name__}")
    state: dict[str, Any] = {"kind": env.kind, "env_vars": dict(env.env_vars)}
    if env.kind == "spec":
        state.update(
            python=env.python,
            conda=list(env.conda),
            pip=list(env.pip),
            pip_options=list(env.pip_options),
            channels=list(env.channels),
            name=env.name,
        )
        backend = getattr(env, "backend", None)  # how it is built: not in the hash
        if backend is not None:
            state["backend"] = backend
    elif env.kind == "existing":
        state["path"] = str(env.path)
    return state


def rebuild_env(state: dict[str, Any]) -> Env:
    kind = state["kind"]
    if kind == "current":
        return Env.current(env_vars=state["env_vars"])
    if kind == "existing":
        return Env.existing(state["path"], env_vars=state["env_vars"])
    return Env(
        python=state["python"],
        conda=state["conda"],
        pip=state["pip"],
        channels=state["channels"],
        env_vars=state["env_vars"],
        name=state["name"],
        pip_options=state["pip_options"],
        **({"backend": state["backend"]} if "backend" in state else {}),
    )
