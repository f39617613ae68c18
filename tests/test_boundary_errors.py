"""What cannot cross the env boundary fails with an error naming the culprit.

The envs are the real pip envs of `tests.conftest.BOUNDARY_ENVS`; the caller
has ``packaging``, which none of them has, so a ``packaging.version.Version``
is an argument no worker can load. Every case is a row in docs/errors.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import traceback

import pytest
from packaging.version import Version

from bayou import EnvExecutor, errors
from tests.conftest import CALLER_XY
from tests.executor_tasks import basic, values

pytestmark = pytest.mark.slow
T = 120

OLD = "py3.9-numpy1.23"
SAME = f"py{CALLER_XY}-numpy1.26"


@pytest.fixture(scope="module")
def old_env(boundary_envs):
    with EnvExecutor(1, env=boundary_envs[OLD]) as ex:
        yield ex


def test_an_argument_the_env_cannot_load_is_named_with_type_module_and_versions(old_env):
    with pytest.raises(errors.UnpicklingError) as info:
        old_env.submit(values.describe, [1], Version("1.0")).result(T)
    message = str(info.value)
    assert message.startswith(
        "argument 1 (packaging.version.Version) of the call to "
        "tests.executor_tasks.values.describe could not be loaded in the worker"
    )
    assert "No module named 'packaging'" in message
    assert "Python 3.9." in message and "numpy 1.23.5" in message
    assert "The env lacks 'packaging'" in message
    assert "function" not in message.split(":")[0]  # the argument is blamed, not the function
    assert isinstance(info.value, cf.process.BrokenProcessPool)  # as PPE code expects
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert old_env.submit(basic.add, 1, 2).result(T) == 3  # only that future failed


def test_a_keyword_argument_the_env_cannot_load_is_named(old_env):
    with pytest.raises(errors.UnpicklingError) as info:
        old_env.submit(values.describe, value={"v": Version("2.0")}).result(T)
    assert str(info.value).startswith("keyword argument 'value' (builtins.dict) of the call")
    assert "No module named 'packaging'" in str(info.value)


def test_a_map_item_the_env_cannot_load_is_named(old_env):
    results = old_env.map(values.describe, [1, Version("1.0"), 3], chunksize=3)
    with pytest.raises(errors.UnpicklingError) as info:
        list(results)
    assert str(info.value).startswith("argument 0 of item 1 (packaging.version.Version)")
    # with chunksize=1 semantics only that call fails
    results = old_env.map(values.describe, [1, Version("1.0"), 3], chunksize=1)
    assert next(results) == values.describe(1)
    with pytest.raises(errors.UnpicklingError, match=r"^argument 0 \(packaging.version.Version\)"):
        next(results)


def test_a_result_the_caller_cannot_load_names_its_type_and_module(old_env, tmp_path):
    (tmp_path / "env_only_module.py").write_text(
        "class Thing:\n    def __init__(self):\n        self.value = 1\n"
    )
    with pytest.raises(errors.UnpicklingError) as info:
        old_env.submit(values.import_and_make, str(tmp_path), "env_only_module").result(T)
    message = str(info.value)
    assert "the result of tests.executor_tasks.values.import_and_make" in message
    assert "env_only_module.Thing (module env_only_module)" in message
    assert "No module named 'env_only_module'" in message
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in message


def test_a_cross_version_error_names_the_callable_as_written(old_env):
    class Local:  # not importable by name: its methods would travel as bytecode
        def run(self):
            return 1

    with pytest.raises(errors.CrossVersionError) as info:
        old_env.submit(Local().run)
    message = str(info.value)
    assert message.startswith(
        "cannot send the method run of a "
        "tests.test_boundary_errors.test_a_cross_version_error_names_the_callable_as_written"
        ".<locals>.Local object: it holds the local class "
    )
    assert "builtins.method" not in message
    assert "Python 3.9" in message and f"Python {CALLER_XY}" in message

    def nested():
        return 2

    with pytest.raises(errors.CrossVersionError, match="^cannot send the nested function"):
        old_env.submit(nested)
    with pytest.raises(errors.CrossVersionError, match=r"^argument 0 \(builtins.function\)"):
        old_env.submit(basic.call, lambda: 1)


def _raise_from_a_closure(depth):
    def inner():
        raise ValueError("raised by a closure sent by value")

    return inner


def test_tracebacks_of_by_value_functions_keep_file_and_source_line(boundary_envs):
    fn = _raise_from_a_closure(1)  # a closure: it travels as bytecode (cloudpickle)
    for env in (boundary_envs[SAME], None):  # an env of the caller's X.Y, and the caller's own
        with EnvExecutor(1, env=env) as ex, pytest.raises(ValueError) as info:
            ex.submit(fn).result(T)
        remote = str(info.value.__cause__)
        assert __file__ in remote
        assert 'raise ValueError("raised by a closure sent by value")' in remote
        frames = traceback.extract_tb(info.value.__traceback__)
        assert any(f.filename == __file__ and f.name == "inner" for f in frames)
