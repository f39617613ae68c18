"""`EnvExecutor.map`: automatic batching with chunksize=1 semantics, and `buffersize`.

The buffersize tests mirror CPython 3.14's test_concurrent_futures ones
(`Executor.map(buffersize=...)` is new there), run against EnvExecutor for the
default (automatic) chunking and for an explicit chunksize.
"""

from __future__ import annotations

import itertools
import weakref
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from bayou import batching, errors
from bayou.executor import EnvExecutor
from tests.executor_tasks import basic, transport

T = 60


@pytest.fixture(scope="module")
def ex():
    with EnvExecutor(2) as executor:
        yield executor


def _tasks_used(ex: EnvExecutor, run) -> int:
    """How many tasks the pool made while `run()` ran (task ids are consecutive)."""
    first = next(ex._pool._task_ids)
    run()
    return next(ex._pool._task_ids) - first - 1


@pytest.mark.parametrize("n", [0, 1, 3, 50, 2000])
def test_auto_batching_returns_what_map_returns(ex, n):
    args = list(range(n))
    assert list(ex.map(basic.add, args, args, timeout=T)) == [a + a for a in args]


def test_many_small_calls_travel_in_few_tasks(ex):
    n = 5000
    # a first map measures the calls (its batches stay small until one is timed) ...
    first = _tasks_used(ex, lambda: list(ex.map(basic.add, range(n), range(n), timeout=T)))
    assert first <= n / 4 + 4
    # ... and the next map of the same function starts from that measure
    used = _tasks_used(ex, lambda: list(ex.map(basic.add, range(n), range(n), timeout=T)))
    assert used < n / 10
    one_each = _tasks_used(ex, lambda: list(ex.map(basic.add, range(50), range(50), chunksize=1)))
    assert one_each == 50


def test_a_short_map_is_spread_over_the_workers(ex):
    # two slow calls: batching them would run them one after the other
    used = _tasks_used(ex, lambda: list(ex.map(basic.sleep_then, [0.2, 0.2], timeout=T)))
    assert used == 2


def test_the_first_exception_is_raised_after_the_results_before_it(ex):
    got = []
    with pytest.raises(KeyError) as info:
        for value in ex.map(transport.maybe_fail, range(200), timeout=T):
            got.append(value)
    assert got == [x * 2 for x in range(57)]  # exactly chunksize=1's behaviour
    assert "maybe_fail" in str(info.value.__cause__)  # the remote traceback
    # explicit chunks keep ProcessPoolExecutor's semantics: the chunk fails whole
    got = []
    with pytest.raises(KeyError):
        for value in ex.map(transport.maybe_fail, range(200), chunksize=50, timeout=T):
            got.append(value)
    assert got == [x * 2 for x in range(50)]


def test_same_outcome_as_process_pool_executor(ex):
    spawn = get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as ppe:
        expected = []
        with pytest.raises(KeyError) as ppe_info:
            for value in ppe.map(transport.maybe_fail, range(100)):
                expected.append(value)
    got = []
    with pytest.raises(KeyError) as ours:
        for value in ex.map(transport.maybe_fail, range(100)):
            got.append(value)
    assert got == expected and ours.value.args == ppe_info.value.args


@pytest.mark.parametrize("chunksize", [None, 1])
def test_an_unpicklable_argument_fails_only_its_call(ex, chunksize):
    args = [1, 2, 3, lambda: 4, 5]  # a lambda pickles (same Python), a generator doesn't
    args[3] = (i for i in range(3))
    results = ex.map(basic.echo, args, timeout=T, chunksize=chunksize)
    assert [next(results) for _ in range(3)] == [((1,), {}), ((2,), {}), ((3,), {})]
    with pytest.raises(errors.PicklingError, match="argument 0"):
        next(results)


@pytest.mark.parametrize("buffersize", [None, 7, 1000])
def test_chunksize_1_is_one_task_per_call_across_bursts(ex, buffersize):
    # more calls than one burst of `_submit_each` (batching.EACH_BURST), each its own task
    n = 3 * batching.EACH_BURST + 5
    got: list = []
    used = _tasks_used(
        ex,
        lambda: got.extend(
            ex.map(basic.add, range(n), range(n), chunksize=1, buffersize=buffersize)
        ),
    )
    assert got == [2 * i for i in range(n)]
    assert used == n


def test_chunksize_1_after_shutdown_raises_like_submit():
    executor = EnvExecutor(1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(basic.add, range(3), range(3), chunksize=1)


def test_an_unpicklable_result_fails_at_its_place(ex):
    got = []
    with pytest.raises(errors.PicklingError, match="not today"):
        for value in ex.map(transport.maybe_unpicklable, range(100), timeout=T):
            got.append(value)
    assert got == list(range(33))


def test_the_iterator_keeps_no_result(ex):
    for obj in ex.map(transport.make, [10] * 300, range(300), timeout=T):  # numpy arrays
        ref = weakref.ref(obj)
        del obj
        assert ref() is None


def test_timeout(ex):
    with pytest.raises(TimeoutError):
        list(ex.map(basic.sleep_then, [5, 5, 5], timeout=0.3))


# -- buffersize ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 2])
def test_buffersize_validation(ex, chunksize):
    for bad in ("foo", 2.0):
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            ex.map(str, range(4), buffersize=bad, chunksize=chunksize)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="buffersize must be None or > 0"):
            ex.map(str, range(4), buffersize=bad, chunksize=chunksize)


@pytest.mark.parametrize("chunksize", [None, 1, 3])
@pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
def test_buffersize_results(ex, chunksize, buffersize):
    ints = range(4)
    res = ex.map(str, ints, buffersize=buffersize, chunksize=chunksize)
    assert list(res) == ["0", "1", "2", "3"]
    res = ex.map(basic.add, ints, ints, buffersize=buffersize, chunksize=chunksize)
    assert list(res) == [0, 2, 4, 6]


@pytest.mark.parametrize("chunksize", [None, 1, 5])
def test_buffersize_on_infinite_iterables(ex, chunksize):
    res = ex.map(str, itertools.count(), buffersize=2, chunksize=chunksize)
    assert [next(res, None) for _ in range(3)] == ["0", "1", "2"]
    res = ex.map(basic.add, itertools.count(), itertools.count(), buffersize=2)
    assert [next(res, None) for _ in range(3)] == [0, 2, 4]
    res.close()


def test_buffersize_on_empty_or_no_iterable(ex):
    assert next(ex.map(str, [], buffersize=2), None) is None
    assert next(ex.map(str, buffersize=2), None) is None


@pytest.mark.parametrize("chunksize", [None, 1])
def test_buffersize_when_buffer_is_full(chunksize):
    ints = iter(range(4))
    with EnvExecutor(1) as executor:
        executor.map(str, ints, buffersize=2, chunksize=chunksize)
    assert next(ints) == 2  # only `buffersize` elements were fetched


def test_buffersize_bounds_what_is_pulled_while_consuming(ex):
    pulled = 0

    def source():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    res = ex.map(basic.add, source(), itertools.repeat(1), buffersize=10)
    for k in range(1, 500):
        assert next(res) == k
        assert pulled <= k + 10
    res.close()
