"""EnvExecutor over environments that bayou provisioned for real: pip envs
over other Python versions, and a conda env from the local channel."""

from __future__ import annotations

import sys

import pytest

import bayou
from bayou import Env, EnvExecutor
from tests.conftest import CALLER_XY, require_interpreter
from tests.env_tasks import six_version
from tests.executor_tasks import basic

pytestmark = pytest.mark.slow
T = 120


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_module_function_runs_in_a_provisioned_env_of_another_python(store, version):
    require_interpreter(version)
    env = Env(python=version, pip=["six==1.16.0"])
    with EnvExecutor(2, env=env) as ex:
        info = ex.submit(basic.version).result(T)
        assert tuple(info[0][:2]) == tuple(int(p) for p in version.split("."))
        assert ex.submit(basic.call, six_version).result(T) == "1.16.0"
        assert list(ex.map(basic.add, [1, 2], [10, 20])) == [11, 22]
        with pytest.raises(bayou.CrossVersionError, match=f"Python {version}"):
            ex.submit(lambda: 1)


def test_lambda_to_a_same_version_env_works(store):
    env = Env(pip=["six==1.16.0"])
    with EnvExecutor(1, env=env) as ex:
        assert ex.submit(lambda: __import__("six").__version__).result(T) == "1.16.0"
        assert ex.submit(basic.sys_path).result(T)[-1] != sys.prefix


def test_conda_env_workers_get_the_envs_activation(store, conda_channel):
    env = Env(
        conda=["bayou-demo-lib=2.0", "bayou-demo-tool"],
        channels=[conda_channel],
        env_vars={"FROM_SPEC": "yes"},
    )
    built = bayou.provision(env)
    with EnvExecutor(1, env=env) as ex:
        assert ex.submit(basic.getenv, "CONDA_PREFIX").result(T) == str(built.prefix)
        assert ex.submit(basic.getenv, "BAYOU_DEMO_VAR").result(T) == "from-env-vars-d"
        assert ex.submit(basic.getenv, "BAYOU_DEMO_ACTIVATED").result(T) == f"yes:{built.prefix}"
        assert ex.submit(basic.getenv, "FROM_SPEC").result(T) == "yes"
        path = ex.submit(basic.getenv, "PATH").result(T)
        assert path.split(":")[0] == str(built.prefix / "bin")
        assert str(built.prefix) in ex.submit(lambda: __import__("sys").prefix).result(T)
        lib = ex.submit(lambda: __import__("bayou_demo_lib").__version__).result(T)
        assert lib == "2.0"


def test_conda_env_of_python_39(store, conda_channel):
    env = Env(python="3.9", conda=["bayou-demo-lib=1.0"], channels=[conda_channel])
    with EnvExecutor(1, env=env) as ex:
        assert tuple(ex.submit(basic.version).result(T)[0][:2]) == (3, 9)
    assert CALLER_XY != "3.9"
