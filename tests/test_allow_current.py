"""`allow_current=True`: the caller's own interpreter stands in for a pip-only
spec it already satisfies (checked with `packaging` against the distributions
installed here), so nothing is built; otherwise the env is built as usual."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

import bayou
from bayou import Env
from bayou.provision.reuse import why_not_current
from tests.executor_tasks import basic

CALLER_XY = f"{sys.version_info.major}.{sys.version_info.minor}"
CALLER_XYZ = ".".join(map(str, sys.version_info[:3]))
PACKAGING = metadata.version("packaging")


def published(store) -> list:
    return store.list()


def test_satisfied_spec_builds_nothing(store):
    env = Env(pip=["packaging>=20"], env_vars={"MINE": "1"})
    found = bayou.provision(env, allow_current=True)
    assert found.is_current
    assert found.python == Path(sys.executable)
    assert found.record["satisfies"]["pip"] == ["packaging>=20"]
    assert found.environ({})["MINE"] == "1"
    assert published(store) == [] and not store.builds_dir.exists()


def test_unsatisfied_spec_reports_why():
    assert why_not_current(Env(pip=["packaging>=20"])) is None
    assert why_not_current(Env(python=CALLER_XYZ, pip=["packaging"])) is None
    pinned = why_not_current(Env(pip=["packaging==21.3"]))
    assert pinned == f"the caller has packaging {PACKAGING}, the spec wants packaging==21.3"
    assert "not installed" in why_not_current(Env(pip=["bayou-no-such-dist-xyz"]))
    other = "3.9" if CALLER_XY != "3.9" else "3.10"
    assert f"wants python {other}" in why_not_current(Env(python=other, pip=["packaging"]))
    assert "conda" in why_not_current(Env(conda=["numpy"]))
    url = why_not_current(Env(pip=["packaging @ https://example.invalid/p.whl"]))
    assert "direct URL" in url


def test_markers_and_extras_are_honoured():
    # A requirement whose marker does not apply here is satisfied by definition.
    assert why_not_current(Env(pip=['bayou-no-such-dist-xyz; python_version < "3"'])) is None
    # dask[array] adds numpy (installed with the test extras); dask[dataframe] adds pandas.
    assert why_not_current(Env(pip=["dask[array]"])) is None
    problem = why_not_current(Env(pip=["dask[array,dataframe]"]))
    assert problem is not None and problem.startswith("dask[array,dataframe] needs")
    assert "pandas" in problem or "pyarrow" in problem


@pytest.mark.slow
def test_unsatisfied_spec_is_built(store):
    env = Env(pip=["packaging==21.3"])
    built = bayou.provision(env, allow_current=True)
    assert not built.is_current
    assert built.prefix == store.env_dir(env.hash)
    result = bayou.run(env, ["python", "-c", "import packaging; print(packaging.__version__)"])
    assert result.stdout.strip() == "21.3"
    assert [e.hash for e in published(store)] == [env.hash]


@pytest.mark.slow
def test_without_allow_current_a_satisfied_spec_still_gets_its_env(store):
    env = Env(pip=["packaging>=20"])
    built = bayou.provision(env)
    assert not built.is_current and built.prefix == store.env_dir(env.hash)


def test_executor_runs_in_the_caller_when_allowed(store):
    env = Env(pip=["packaging>=20"])
    with bayou.EnvExecutor(1, env=env, allow_current=True) as ex:
        assert ex.environment.is_current
        assert ex.submit(basic.getpid).result() != os.getpid()  # a worker process
        assert ex.submit(sys_executable).result() == sys.executable
    assert published(store) == []


def sys_executable() -> str:
    return sys.executable
