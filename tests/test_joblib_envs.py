"""The "bayou" joblib backend over environments bayou provisioned for real (uv, PyPI).

The environments have no joblib (nor bayou, beyond the worker runtime's stand-in): the tasks run there because joblib's
batches are unpacked in the caller and only the functions and arguments travel. The task
functions are stdlib functions or `tests.executor_tasks.basic` (stdlib-only), which workers
of any Python import by reference.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
from pathlib import Path

import pytest
from joblib import Parallel, delayed, parallel_config

import bayou
import bayou.joblib
from tests.conftest import require_interpreter
from tests.executor_tasks import basic

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fresh_executors():
    bayou.joblib.shutdown()
    yield
    bayou.joblib.shutdown()


def test_parallel_runs_in_a_pip_env_that_has_no_joblib(store):
    env = bayou.Env(pip=["packaging==21.3"])
    prefix = bayou.provision(env).prefix
    with parallel_config(backend="bayou", env=env, n_jobs=2):
        assert Parallel()(delayed(importlib.util.find_spec)("joblib") for _ in range(2)) == [
            None,
            None,
        ]
        versions = Parallel()(delayed(importlib.metadata.version)("packaging") for _ in range(6))
        executables = Parallel()(delayed(basic.version)() for _ in range(4))
        lambdas = Parallel(return_as="generator")(delayed(lambda x: x + 1)(i) for i in range(3))
        assert list(lambdas) == [1, 2, 3]
    assert versions == ["21.3"] * 6
    for _, executable in executables:
        assert Path(executable).is_relative_to(prefix)
    # the caller's own packaging is untouched
    assert importlib.metadata.version("packaging") != "21.3"
    if "backend_kwargs" in inspect.signature(Parallel).parameters:  # joblib >= 1.5
        out = Parallel(n_jobs=2, backend="bayou", env=env)(
            delayed(importlib.metadata.version)("packaging") for _ in range(2)
        )
        assert out == ["21.3", "21.3"]


def test_an_env_of_another_python_takes_module_functions_and_refuses_lambdas(store):
    require_interpreter("3.9")
    env = bayou.Env(python="3.9", pip=["six==1.16.0"])
    with parallel_config(backend="bayou", env=env, n_jobs=2):
        versions = Parallel()(delayed(basic.version)() for _ in range(4))
        assert {tuple(v[:2]) for v, _ in versions} == {(3, 9)}
        assert Parallel()(delayed(basic.add)(i, 1) for i in range(5)) == [1, 2, 3, 4, 5]
        with pytest.raises(bayou.CrossVersionError, match=r"lambda.*Python 3\.9"):
            Parallel()(delayed(lambda x: x)(i) for i in range(3))
        # the pool is still usable after that error
        assert Parallel()(delayed(importlib.metadata.version)("six") for _ in range(2)) == [
            "1.16.0",
            "1.16.0",
        ]
