"""Environments the conformance suite can run in (`$BAYOU_CF_ENV_FACTORY`).

`provisioned_pip_env` is the second configuration CI runs: a real pip env
built by bayou (same Python X.Y as the caller, so test functions can travel
by value), holding a package the caller doesn't need, so the workers really
run outside the caller's environment.

CPython's test functions travel by reference as `test.test_concurrent_futures.*`,
and the env's interpreter has a stdlib `test` package without that module. The
suite's overlay `test` package (see cpython_suite) extends `test.__path__`; the
env gets it through PYTHONPATH (an env variable of the spec, which changes no
file, so the env's identity is the same), exactly as a user would make their
own package importable in workers.
"""

from __future__ import annotations

import bayou
from integrations.concurrent_futures import cpython_suite


def provisioned_pip_env() -> bayou.Env:
    overlay = cpython_suite.locate_suite().overlay
    env_vars = {"PYTHONPATH": str(overlay)} if overlay is not None else {}
    env = bayou.Env(pip=["six==1.16.0"], name="cpython-conformance", env_vars=env_vars)
    bayou.provision(env)  # built before the first test, not inside one's time limit
    return env
