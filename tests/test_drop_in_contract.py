"""Where `EnvExecutor` must behave exactly as `ProcessPoolExecutor`, or better explain why not.

* ``max_tasks_per_child`` with a ``"fork"`` `mp_context` is refused with
  ProcessPoolExecutor's own `ValueError`, positional `mp_context` included.
* A multiprocessing queue, lock, event... in `initargs` cannot reach a bayou
  worker (multiprocessing shares those only with processes it starts itself):
  the `PicklingError` names its position and the manager proxy to pass
  instead, and that proxy does work, end to end.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor

import psutil
import pytest

from bayou import errors
from bayou.executor import EnvExecutor
from bayou.mp_objects import inheritance_only_hint, locate

T = 60  # result()/get() timeout: a hang fails the test instead of blocking it

# -- max_tasks_per_child with a "fork" context ------------------------------------------


def _refusal(make) -> ValueError:
    with pytest.raises(ValueError) as info:
        make()
    return info.value


@pytest.mark.parametrize("how", ["positional", "keyword", "default-context"])
def test_max_tasks_per_child_with_a_fork_context_is_refused_like_process_pool_executor(how):
    fork = multiprocessing.get_context("fork")
    if how == "positional":
        args, kwargs = (1, fork), {"max_tasks_per_child": 2}
    elif how == "keyword":
        args, kwargs = (1,), {"mp_context": fork, "max_tasks_per_child": 2}
    else:  # the default context of Linux, whose start method is "fork" (3.11-3.13)
        if multiprocessing.get_start_method() != "fork":
            pytest.skip("the default start method is not 'fork' here")
        args, kwargs = (1, multiprocessing.get_context()), {"max_tasks_per_child": 2}

    theirs = _refusal(lambda: ProcessPoolExecutor(*args, **kwargs))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ours = _refusal(lambda: EnvExecutor(*args, **kwargs))
    assert str(ours) == str(theirs)
    assert "incompatible with the 'fork' multiprocessing start method" in str(ours)
    # refused before anything started: no worker, no environment
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_max_tasks_per_child_with_another_context_or_fork_alone_is_accepted(method):
    with EnvExecutor(1, multiprocessing.get_context(method), max_tasks_per_child=1) as ex:
        pids = [ex.submit(os.getpid).result(T) for _ in range(2)]
    assert pids[0] != pids[1]  # one task per worker, as asked
    with EnvExecutor(1, multiprocessing.get_context("fork")) as ex:  # fork alone is fine
        assert ex.submit(abs, -3).result(T) == 3


# -- multiprocessing objects in initargs --------------------------------------------------

_queue = None


def remember_queue(queue, greeting) -> None:
    """Initializer: keep the queue for the tasks and say hello on it."""
    global _queue
    _queue = queue
    queue.put((greeting, os.getpid()))


def put_on_queue(value):
    _queue.put((value, os.getpid()))
    return value


def note(*args) -> None:
    """An initializer that takes anything (never run: the constructor refuses first)."""


INHERITANCE_ONLY = {
    "Queue": (lambda mp: mp.Queue(), "Queue()"),
    "SimpleQueue": (lambda mp: mp.SimpleQueue(), "Queue()"),
    "JoinableQueue": (lambda mp: mp.JoinableQueue(), "JoinableQueue()"),
    "Lock": (lambda mp: mp.Lock(), "Lock()"),
    "RLock": (lambda mp: mp.RLock(), "RLock()"),
    "Semaphore": (lambda mp: mp.Semaphore(2), "Semaphore(value)"),
    "BoundedSemaphore": (lambda mp: mp.BoundedSemaphore(2), "BoundedSemaphore(value)"),
    "Condition": (lambda mp: mp.Condition(), "Condition()"),
    "Event": (lambda mp: mp.Event(), "Event()"),
    "Barrier": (lambda mp: mp.Barrier(2), "Barrier(parties)"),
    "Value": (lambda mp: mp.Value("i", 1), "Value(typecode, value)"),
    "Array": (lambda mp: mp.Array("i", 3), "Array(typecode, sequence)"),
}


@pytest.mark.parametrize("kind", sorted(INHERITANCE_ONLY))
def test_multiprocessing_queue_or_lock_in_initargs_names_it_and_the_manager_proxy(kind):
    make, proxy = INHERITANCE_ONLY[kind]
    obj = make(multiprocessing)
    with pytest.raises(errors.PicklingError) as info:
        EnvExecutor(1, initializer=note, initargs=("first", obj))
    exc = info.value
    assert isinstance(exc, pickle.PicklingError)  # what ProcessPoolExecutor code catches
    message = str(exc)
    cls = type(obj)
    assert message.startswith(
        f"cannot pickle initargs[1] ({cls.__module__}.{cls.__qualname__}) of the initializer "
        f"tests.test_drop_in_contract.note: RuntimeError: "
    ), message
    assert "should only be shared between processes through inheritance" in message
    assert f"multiprocessing.{kind} cannot reach them" in message
    assert f"multiprocessing.Manager().{proxy}" in message
    assert isinstance(exc.__cause__, RuntimeError)  # multiprocessing's own error, kept


def test_multiprocessing_queue_nested_in_initargs_is_named_by_its_place():
    queue = multiprocessing.Queue()
    with pytest.raises(errors.PicklingError) as info:
        EnvExecutor(1, initializer=note, initargs=(1, {"results": [None, queue]}))
    assert str(info.value).startswith(
        "cannot pickle initargs[1]['results'][1] (multiprocessing.queues.Queue) of the "
        "initializer tests.test_drop_in_contract.note: RuntimeError: Queue objects should "
        "only be shared between processes through inheritance; bayou's workers are not "
        "started by multiprocessing, so a multiprocessing.Queue cannot reach them: pass a "
        "manager's proxy instead, multiprocessing.Manager().Queue(), which can be pickled"
    ), str(info.value)


def test_other_unpicklable_initargs_keep_the_general_message():
    with pytest.raises(errors.PicklingError, match=r"^cannot pickle the initializer "):
        EnvExecutor(1, initializer=note, initargs=(threading.Lock(),))


def test_hint_and_locate_know_only_inheritance_only_objects():
    assert inheritance_only_hint(multiprocessing.Queue()) is not None
    for fine in (1, "text", [1, 2], threading.Lock(), multiprocessing.Manager):
        assert inheritance_only_hint(fine) is None
    event = multiprocessing.Event()
    assert locate(("a", {"k": {event}}), "argument 0") == ("an item of argument 0[1]['k']", event)
    assert locate(("a", [1, 2, 3]), "argument 0") is None


def test_manager_queue_in_initargs_works_end_to_end():
    with multiprocessing.Manager() as manager:
        queue = manager.Queue()
        with EnvExecutor(1, initializer=remember_queue, initargs=(queue, "ready")) as ex:
            assert ex.submit(put_on_queue, 7).result(T) == 7
        hello, task = queue.get(timeout=T), queue.get(timeout=T)
    assert hello[0] == "ready" and task[0] == 7
    assert hello[1] == task[1] != os.getpid()  # put by the worker, got by the caller


def test_multiprocessing_queue_as_a_submit_argument_names_it_and_the_manager_proxy():
    queue = multiprocessing.Queue()
    with EnvExecutor(1) as ex:
        fut = ex.submit(note, "x", {"results": queue})
        with pytest.raises(errors.PicklingError) as info:
            fut.result(60)
        message = str(info.value)
        assert message.startswith(
            "cannot pickle argument 1['results'] (multiprocessing.queues.Queue) of the call to "
            "the function tests.test_drop_in_contract.note: RuntimeError: "
        ), message
        assert "multiprocessing.Manager().Queue()" in message
        assert ex.submit(len, [1]).result(60) == 1  # only that future failed
