"""The env boundary crossed for real: numpy data between numpy 1.x and 2.x, methods
and builtins between Python versions, through EnvExecutor, map, joblib and Dask.

The caller runs this Python with numpy 2. The envs are real pip envs built from
PyPI with uv, once per session:

* Python 3.9 + numpy 1.23.5 (another Python, old numpy);
* the caller's Python X.Y + numpy 1.26.4 (same Python, old numpy);
* Python 3.12 (3.13 when the caller is 3.12) + numpy 2.2.6 (another Python, new numpy).

Every value of `tests.executor_tasks.values` crosses both ways in each env: the
worker describes what it received (dtype descr, shape, layout, a hash of the
bytes), and the caller describes what came back, and both must equal the
caller's description of the original. `__main__` functions are tested with real
scripts in `test_boundary_main.py`; the error messages in `test_boundary_errors.py`.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pytest

import bayou
import bayou.shm
from bayou import EnvExecutor
from tests.conftest import BOUNDARY_ENVS as ENVS
from tests.executor_tasks import values

pytestmark = pytest.mark.slow
T = 120

VALUE_NAMES = values.names()
CALLABLES = values.callables()


@pytest.fixture(scope="module", params=list(ENVS))
def executor(request, boundary_envs):
    with EnvExecutor(2, env=boundary_envs[request.param]) as ex:
        yield request.param, ex


def test_each_env_runs_its_own_python_and_numpy(executor):
    name, ex = executor
    python, numpy = ENVS[name]
    xy, version = ex.submit(values.environment).result(T)
    assert "{}.{}".format(*xy) == python
    assert version == numpy.split("==")[1]
    assert np.__version__.startswith("2.")  # the caller's side of the matrix


@pytest.mark.parametrize("value_name", VALUE_NAMES)
def test_value_crosses_both_ways(executor, value_name):
    _, ex = executor
    value = values.make(value_name)
    expected = values.describe(value)
    seen, back = ex.submit(values.describe_both, value).result(T)
    assert seen == expected  # caller -> worker
    assert values.describe(back) == expected  # and back
    # made by the worker's numpy, loaded by the caller's
    assert values.describe(ex.submit(values.make, value_name).result(T)) == expected


def test_values_cross_in_keyword_arguments_and_containers(executor):
    _, ex = executor
    array = np.arange(10.0)
    fut = ex.submit(values.describe, value={"x": array, "n": np.int16(3)})
    # a keyword argument of describe(value=...) reaches the worker as it was sent
    assert fut.result(T) == values.describe({"x": array, "n": np.int16(3)})


@pytest.mark.parametrize("chunksize", [1, None, 4])
def test_values_cross_through_map(executor, chunksize):
    _, ex = executor
    sent = [values.make(n) for n in VALUE_NAMES]
    described = list(ex.map(values.describe, sent, chunksize=chunksize, timeout=T))
    assert described == [values.describe(v) for v in sent]
    made = list(ex.map(values.make, VALUE_NAMES, chunksize=chunksize, timeout=T))
    assert [values.describe(v) for v in made] == [values.describe(v) for v in sent]


def test_big_arrays_keep_the_shared_memory_path(executor):
    _, ex = executor
    big = np.random.default_rng(0).random((2000, 2500))  # 40 MB
    owner, back = ex.submit(values.owner_and_echo, big).result(T)
    np.testing.assert_array_equal(back, big)
    # both ways a view of a shared-memory mapping, not a copy inside a pickle
    assert (owner, values.buffer_owner(back)) == ("mmap", "mmap")
    assert bayou.shm.segments_held(os.getpid(), os.getpid())


@pytest.mark.parametrize("callable_name", sorted(CALLABLES))
def test_callable_goes_by_reference(executor, callable_name):
    _, ex = executor
    fn, args, expected = CALLABLES[callable_name]
    assert ex.submit(fn, *args).result(T) == expected
    if args:
        assert list(ex.map(fn, *[[a] for a in args], timeout=T)) == [expected]


def test_methods_and_partials_through_map(executor):
    _, ex = executor
    scaler = values.Scaler(2)
    arrays = [np.arange(3), np.arange(4.0)]
    results = list(ex.map(scaler.scale, arrays, timeout=T))
    for (scaled, calls), array in zip(results, arrays, strict=True):
        np.testing.assert_array_equal(scaled, array * 2)
        assert calls == 1  # each task gets its own copy of the instance, as with PPE
    assert list(ex.map(values.Scaler.factor_of, [1, 2], timeout=T)) == [1, 2]
    assert list(ex.map(functools.partial(values.Scaler.Inner(1).shift), [1, 2])) == [2, 3]


def test_a_bound_method_of_an_instance_sees_that_instance(executor):
    """The instance travels with each call: the worker's copy starts from the caller's state."""
    _, ex = executor
    scaler = values.Scaler(3)
    scaler.calls = 41
    assert ex.submit(scaler.scale, [1]).result(T) == ([1, 1, 1], 42)
    assert ex.submit(scaler.scale, [1]).result(T) == ([1, 1, 1], 42)
    scaler.factor = 1
    assert ex.submit(scaler.scale, [5]).result(T) == ([5], 42)


def test_numpy_functions_and_ufuncs(executor):
    _, ex = executor
    assert ex.submit(np.add, 2, 3).result(T) == 5
    np.testing.assert_array_equal(ex.submit(np.cumsum, np.arange(4)).result(T), [0, 1, 3, 6])
    assert ex.submit(np.float64(2.5).__add__, 1.0).result(T) == 3.5


# -- joblib and Dask -----------------------------------------------------------------------


JOBLIB_VALUES = [
    "structured",
    "datetime64",
    "object",
    "fortran",
    "big",
    "float64 scalar",
    "int32 scalar",
    "user object",
    "dict of arrays and scalars",
]


@pytest.mark.parametrize("env_name", list(ENVS))
def test_values_and_methods_cross_through_joblib(boundary_envs, env_name):
    joblib = pytest.importorskip("joblib")
    import bayou.joblib

    env = boundary_envs[env_name]
    try:
        with joblib.parallel_config(backend="bayou", env=env, n_jobs=2):
            sent = [values.make(n) for n in JOBLIB_VALUES]
            seen = joblib.Parallel()(joblib.delayed(values.describe_both)(v) for v in sent)
            made = joblib.Parallel()(joblib.delayed(values.make)(n) for n in JOBLIB_VALUES)
            scaled = joblib.Parallel()(
                joblib.delayed(values.Scaler(2).scale)(np.arange(n)) for n in range(3)
            )
            factors = joblib.Parallel()(
                joblib.delayed(values.Scaler.factor_of)(n) for n in range(3)
            )
    finally:
        bayou.joblib.shutdown()
    for value, (described, back), other in zip(sent, seen, made, strict=True):
        assert described == values.describe(value)
        assert values.describe(back) == values.describe(value)
        assert values.describe(other) == values.describe(value)
    for n, (array, _) in enumerate(scaled):
        np.testing.assert_array_equal(array, np.arange(n) * 2)
    assert factors == [0, 1, 2]


@pytest.fixture(scope="module")
def dask_client(boundary_envs):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    import bayou.dask

    with (
        LocalCluster(
            n_workers=1, processes=False, threads_per_worker=2, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        for name, env in boundary_envs.items():
            plugin = bayou.dask.EnvPlugin(env, name=name, max_workers=1)
            replies = client.register_plugin(plugin)
            assert [r["status"] for r in replies.values()] == ["OK"]
        yield client


@pytest.mark.filterwarnings("ignore:Sending large graph")  # the 24 MB array, on purpose
@pytest.mark.parametrize("env_name", list(ENVS))
def test_values_and_methods_cross_through_dask(dask_client, env_name):
    import bayou.dask

    client = dask_client
    sent = [values.make(n) for n in JOBLIB_VALUES]
    with bayou.dask.env(env_name):
        seen = client.gather([client.submit(values.describe_both, v, pure=False) for v in sent])
        made = client.gather([client.submit(values.make, n, pure=False) for n in JOBLIB_VALUES])
        xy, version = client.submit(values.environment, pure=False).result(T)
        scaled, calls = client.submit(values.Scaler(4).scale, np.arange(3), pure=False).result(T)
        factor = client.submit(values.Scaler.factor_of, 7, pure=False).result(T)
    python, numpy = ENVS[env_name]
    assert ("{}.{}".format(*xy), version) == (python, numpy.split("==")[1])
    for value, (described, back), other in zip(sent, seen, made, strict=True):
        assert described == values.describe(value)
        assert values.describe(back) == values.describe(value)
        assert values.describe(other) == values.describe(value)
    np.testing.assert_array_equal(scaled, np.arange(3) * 4)
    assert (calls, factor) == (1, 7)


def test_the_caller_side_is_numpy_2():
    assert int(np.__version__.split(".")[0]) >= 2, "the matrix needs a numpy 2 caller"
    assert sys.version_info >= (3, 10)
