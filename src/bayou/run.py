"""`bayou.run`: a command inside an environment, activated, without a shell.

The env is provisioned if needed, the command's first word is looked up on
the env's PATH (so ``["python", ...]`` is the env's python and a conda
package's tools are found), and the process gets the env's stored activation.
Arguments are passed as a list; nothing is interpreted by a shell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from .env import Env
from .environment import Environment


def run(
    env: Env | Environment,
    argv: Sequence[str],
    *,
    capture: bool = True,
    check: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    env_vars: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in `env`; returns the exit code and (when captured) output.

    `check=True` raises `subprocess.CalledProcessError` on a non-zero exit,
    as `subprocess.run` does.
    """
    if isinstance(argv, str):
        raise TypeError("argv must be a list of strings (no shell is used), not a string")
    if not argv:
        raise ValueError("argv is empty")
    if isinstance(env, Env):
        from .provision import provision

        environment = provision(env)
    else:
        environment = env
    child_env = environment.environ()
    if env_vars:
        child_env.update({str(k): str(v) for k, v in env_vars.items()})
    program = str(argv[0])
    if os.sep not in program:
        found = shutil.which(program, path=child_env.get("PATH"))
        if program in ("python", "python3") and not environment.is_current:
            found = str(environment.python)
        if found is None:
            raise FileNotFoundError(
                f"{program!r} was not found in the environment "
                f"(searched PATH={child_env.get('PATH')})"
            )
        program = found
    return subprocess.run(
        [program, *map(str, argv[1:])],
        env=child_env,
        cwd=cwd,
        input=input,
        text=True,
        capture_output=capture,
        check=check,
        timeout=timeout,
    )
