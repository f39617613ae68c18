"""Workers in other interpreters and environments than the caller's.

Interpreters are discovered on the machine (`bayou.interpreters`, via
`tests.conftest.require_interpreter`) and wrapped as `Environment`s directly,
so these tests exercise the worker runtime without the provisioning layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bayou import errors
from bayou.environment import Environment
from bayou.executor import EnvExecutor
from tests.conftest import require_interpreter
from tests.executor_tasks import basic

T = 60
CALLER_XY = "{}.{}".format(*sys.version_info[:2])


def _environment(python: Path, name: str) -> Environment:
    out = subprocess.check_output(
        [
            str(python),
            "-c",
            "import sys; print(sys.prefix); print('%d.%d.%d' % sys.version_info[:3])",
        ],
        text=True,
    ).split("\n")
    return Environment(prefix=Path(out[0]), python=python, hash=name, python_version=out[1])


def _interpreter_env(version: str) -> Environment:
    return _environment(require_interpreter(version).path, "py" + version.replace(".", ""))


@pytest.mark.parametrize("version", ["3.8", "3.9", "3.13"])
def test_module_function_runs_in_other_python(version):
    env = _interpreter_env(version)
    with EnvExecutor(2, env=env) as ex:
        info, executable = ex.submit(basic.version).result(T)
        assert "{}.{}".format(*info[:2]) == version
        assert os.path.realpath(executable) == os.path.realpath(env.python)
        # functions passed as arguments travel by reference too
        assert ex.submit(basic.call, basic.add, 2, 3).result(T) == 5
        assert list(ex.map(basic.add, range(5), range(5), chunksize=2)) == [0, 2, 4, 6, 8]
        # remote exceptions keep their type when the caller can import it
        with pytest.raises(basic.LocalOnlyError):
            ex.submit(basic.raise_custom).result(T)
        # no bayou in that interpreter: the runtime's stand-in serves the in-task API
        assert ex.submit(basic.bayou_kind).result(T) is True
        fut = ex.submit(basic.report_steps, 3, 0.06)
        assert fut.result(T) == 3 and fut.progress == (3.0, 3.0, "step 3")
        # the caller's site-packages never reach the worker
        path = ex.submit(basic.sys_path).result(T)
        assert not any(p.startswith(sys.prefix) for p in path if sys.prefix != env.prefix)


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_lambda_to_other_python_is_a_clear_error(version):
    if version == CALLER_XY:
        pytest.skip("same version as the caller")
    env = _interpreter_env(version)
    with EnvExecutor(1, env=env) as ex:
        with pytest.raises(errors.CrossVersionError) as info:
            ex.submit(lambda: 1)  # refused at submit: nothing is sent, no future made
        assert isinstance(info.value, errors.PicklingError)
        message = str(info.value)
        assert "lambda" in message
        assert f"Python {version}" in message and f"Python {CALLER_XY}" in message
        assert "module file" in message
        # also when the lambda hides in the arguments
        with pytest.raises(errors.CrossVersionError, match="argument 1"):
            ex.submit(basic.call, basic.add, lambda: 0)
        # and for map, chunked or not
        with pytest.raises(errors.CrossVersionError, match="lambda"):
            ex.map(lambda x: x, [1, 2], chunksize=2)
        with pytest.raises(errors.CrossVersionError, match="lambda"):
            ex.map(lambda x: x, [1, 2])
        # the executor is unharmed
        assert ex.submit(basic.add, 2, 3).result(T) == 5


def test_lambda_to_same_python_in_another_env_works(tmp_path):
    env = _venv(tmp_path / "same", CALLER_XY, [])
    with EnvExecutor(1, env=env) as ex:
        k = 7
        assert ex.submit(lambda x: x * k, 6).result(T) == 42


def _venv(path: Path, version: str, packages: list[str]) -> Environment:
    base = require_interpreter(version).path
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    if packages:
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        result = subprocess.run(
            [uv, "pip", "install", "--python", str(python), *packages],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.fail(f"cannot install {packages}: {result.stderr[-2000:]}")
    return _environment(python, path.name)


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted({CALLER_XY, "3.9"}))
def test_env_with_old_cloudpickle_is_neither_shadowed_nor_used(tmp_path, version):
    env = _venv(tmp_path / "oldcp", version, ["cloudpickle==1.6.0"])
    with EnvExecutor(1, env=env) as ex:
        cp_version, cp_file = ex.submit(basic.cloudpickle_version).result(T)
        assert cp_version == "1.6.0"
        assert str(tmp_path) in cp_file
        if version == CALLER_XY:  # by-value functions use our private cloudpickle copy
            assert ex.submit(lambda: basic.cloudpickle_version()[0]).result(T) == "1.6.0"
            closure = ex.submit(basic.make_closure, 3).result(T)
            assert closure(2) == 6
        assert ex.submit(basic.add, 1, 2).result(T) == 3


def test_module_file_outside_caller_path_runs_in_env(tmp_path):
    env = _interpreter_env("3.9")
    mod = tmp_path / "tools39.py"
    mod.write_text("import sys\n\ndef minor():\n    return sys.version_info[1]\n")
    with EnvExecutor(1, env=env) as ex:
        assert ex.import_module(mod).minor() == 9
        assert ex.execute(str(mod), "minor") == 9


def test_env_vars_reach_the_worker():
    env = Environment(
        prefix=Path(sys.prefix),
        python=Path(sys.executable),
        hash="vars",
        python_version="{}.{}.{}".format(*sys.version_info[:3]),
        env_vars={"BAYOU_TEST_VAR": "hello"},
    )
    with EnvExecutor(1, env=env) as ex:
        assert ex.submit(basic.getenv, "BAYOU_TEST_VAR").result(T) == "hello"
