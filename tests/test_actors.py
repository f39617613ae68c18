"""Actors: one object living in an env, called through real futures.

Real worker processes in the caller's interpreter and in a Python 3.9 env
with numpy 1.23 (`boundary_envs`); the classes live in
tests/executor_tasks/actors.py and travel by reference."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from concurrent.futures import CancelledError, as_completed, wait
from concurrent.futures.process import BrokenProcessPool

import pytest

import bayou
from bayou import errors
from tests.executor_tasks import actors as tasks
from tests.executor_tasks import basic
from tests.support.processes import is_running

T = 60  # s: generous bound for anything that should be quick


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.05)
    return False


def _reaped(processes: dict, pid: int) -> bool:
    """The pool has accounted for `pid`'s death. A killed worker's main thread is a
    zombie while its other thread still holds the socket, so a task sent in that
    moment is delivered, and fails with the crash; tests that mean to submit
    after the death wait for this."""
    deadline = time.monotonic() + T
    while pid in processes and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid not in processes


def _pid_of(actor: bayou.Actor) -> int:
    """The actor's pid once its object is built."""
    return actor.submit("state").result(T)["pid"]


# -- state, order, futures ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["caller", "py3.9"])
def test_state_and_order_hold_over_hundreds_of_calls(where, request):
    env = None
    if where == "py3.9":
        env = request.getfixturevalue("boundary_envs")["py3.9-numpy1.23"]
    with bayou.EnvExecutor(1, env=env) as ex:
        acc = ex.actor(tasks.Accumulator, args=(100,), kwargs={"label": "mine"})
        assert isinstance(acc, bayou.Actor)
        futures = [acc.add(i) for i in range(300)]
        done = set(as_completed(futures, timeout=T))
        assert done == set(futures)
        totals = [f.result() for f in futures]
        expected = [100 + i * (i + 1) // 2 for i in range(300)]  # one at a time, in order
        assert totals == expected
        state = acc.submit("state").result(T)
        assert state["label"] == "mine" and state["total"] == expected[-1]
        assert acc.history_length().result(T) == 300
        assert acc.calls == 302 and acc.restarts == 0 and acc.pid == state["pid"]
        # its own process: not one of the pool's workers
        assert ex.submit(os.getpid).result(T) != state["pid"]
        if where == "py3.9":
            assert tuple(acc.versions().result(T)[0]) == (3, 9)


def test_an_object_holding_numpy_in_a_py39_env_with_numpy_1(boundary_envs):
    numpy = pytest.importorskip("numpy")
    env = boundary_envs["py3.9-numpy1.23"]
    with bayou.EnvExecutor(1, env=env) as ex:
        model = ex.actor(tasks.Model, args=(1_000_000,), kwargs={"scale": 0.5})
        assert model.numpy_version().result(T) == "1.23.5"
        out = model.predict(numpy.float64(4.0)).result(T)  # 8 MB back, numpy 1 -> caller's
        assert isinstance(out, numpy.ndarray) and out.shape == (1_000_000,)
        assert out[10] == 20.0 and out[-1] == 999_999 * 2.0


def test_a_class_named_by_string_is_built_in_the_env_only(boundary_envs):
    env = boundary_envs["py3.9-numpy1.23"]
    with bayou.EnvExecutor(1, env=env) as ex:
        rng = ex.actor("numpy.random:RandomState", args=(7,))
        first = rng.randint(0, 1000, 5).result(T)
        assert len(first) == 5
        again = ex.actor("numpy.random:RandomState", args=(7,))
        assert list(again.randint(0, 1000, 5).result(T)) == list(first)
    with pytest.raises(ValueError, match="module:Qualname"):
        bayou.EnvExecutor(1).actor("numpy.random.RandomState")


def test_futures_work_with_wait_asyncio_progress_and_cancel():
    import asyncio

    with bayou.EnvExecutor(1) as ex:
        acc = ex.actor(tasks.Accumulator)
        seen = []
        fut = acc.with_progress(5)
        fut.add_progress_callback(lambda f, p: seen.append(p.done))
        assert fut.result(T) == 5 and seen and seen[-1] == 5

        async def main():
            return await asyncio.wrap_future(acc.add(2))

        assert asyncio.run(main()) == 2
        done, _ = wait([acc.add(1), acc.add(1)], timeout=T)
        assert len(done) == 2

        running = acc.until_cancelled(60)
        queued = acc.add(100)
        while not running.running():
            time.sleep(0.01)
        time.sleep(0.2)
        assert bayou.cancel(running, grace=10)  # cooperative: it returns on its own
        with pytest.raises(CancelledError):
            running.result(T)
        assert queued.result(T) == 104  # the state survived: same object
        assert acc.restarts == 0


def test_a_method_that_raises_fails_its_call_only():
    with bayou.EnvExecutor(1) as ex:
        acc = ex.actor(tasks.Accumulator)
        bad = acc.fail("nope")
        after = acc.add(1)
        with pytest.raises(ValueError, match="nope"):
            bad.result(T)
        assert after.result(T) == 1
        with pytest.raises(AttributeError, match="predcit"):
            acc.predcit(1).result(T)
        with pytest.raises(AttributeError):
            acc._private  # noqa: B018  # local: copy/pickle probes never become calls


# -- failures -----------------------------------------------------------------------------


def test_a_crash_without_restarts_fails_the_call_then_every_queued_and_later_one():
    with bayou.EnvExecutor(1) as ex:
        acc = ex.actor(tasks.Accumulator)
        pid = _pid_of(acc)
        dying = acc.die(5)
        queued = [acc.add(1) for _ in range(3)]
        with pytest.raises(errors.WorkerCrashedError, match="exit code 5") as info:
            dying.result(T)
        assert info.value.exitcode == 5 and "Accumulator.die" in str(info.value)
        for fut in queued:
            with pytest.raises(errors.ActorDiedError, match="no restarts left"):
                fut.result(T)
        later = acc.add(1)
        with pytest.raises(errors.ActorDiedError, match="Accumulator.add was not run"):
            later.result(T)
        assert not acc.alive and acc.pid is None and _gone(pid)
        assert ex.submit(basic.add, 1, 2).result(T) == 3  # the executor is fine


def test_with_restarts_the_object_is_built_again_and_queued_calls_run_on_it():
    with bayou.EnvExecutor(1) as ex:
        acc = ex.actor(tasks.Accumulator, args=(10,), max_restarts=1)
        before = acc.state().result(T)
        acc.add(5).result(T)
        dying = acc.die()
        queued = [acc.add(1) for _ in range(3)]
        with pytest.raises(errors.WorkerCrashedError):
            dying.result(T)
        assert [f.result(T) for f in queued] == [11, 12, 13]  # state lost: rebuilt from 10
        after = acc.state().result(T)
        assert after["gen"] != before["gen"] and after["pid"] != before["pid"]
        assert acc.restarts == 1 and acc.alive
        # the next death is one too many
        os.kill(after["pid"], signal.SIGKILL)
        assert _reaped(acc._pool.processes, after["pid"])
        with pytest.raises(errors.ActorDiedError, match=r"max_restarts=1"):
            acc.add(1).result(T)


def test_an_idle_actor_killed_from_outside_is_rebuilt_at_once():
    with bayou.EnvExecutor(1) as ex:
        acc = ex.actor(tasks.Accumulator, max_restarts=2)
        first = _pid_of(acc)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + T
        while acc.pid in (None, first) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert acc.pid not in (None, first)  # rebuilt without waiting for a call
        assert acc.add(1).result(T) == 1 and acc.restarts == 1


def test_a_hang_and_a_timeout_kill_the_call_and_count_as_deaths():
    with bayou.EnvExecutor(1, heartbeat_timeout=1.0, task_timeout=3.0) as ex:
        acc = ex.actor(tasks.Accumulator, max_restarts=2)
        acc.add(1).result(T)
        with pytest.raises(errors.WorkerHungError, match="heartbeat"):
            acc.hold_gil().result(T)
        with pytest.raises(errors.TaskTimeoutError, match="task_timeout"):
            acc.sleep(30).result(T)
        assert acc.restarts == 2 and acc.add(1).result(T) == 1


def test_a_constructor_that_raises_fails_the_calls_with_its_exception():
    with bayou.EnvExecutor(1) as ex:
        broken = ex.actor(tasks.BrokenConstructor, args=("no weights",))
        first, second = broken.predict(1), broken.predict(2)
        for fut in (first, second):
            with pytest.raises(KeyError, match="no weights"):
                fut.result(T)
        later = broken.predict(3)
        with pytest.raises(errors.ActorDiedError, match="constructor") as info:
            later.result(T)
        assert isinstance(info.value.__cause__, KeyError)
        assert not broken.alive


def test_a_constructor_that_kills_its_process_is_a_death():
    with bayou.EnvExecutor(1) as ex:
        dying = ex.actor(tasks.DyingConstructor, max_restarts=1)
        with pytest.raises(errors.ActorDiedError, match="exit code 7"):
            dying.anything().result(T)


def test_constructor_arguments_that_cannot_be_pickled_are_named_at_once():
    with bayou.EnvExecutor(1) as ex:
        with pytest.raises(
            errors.PicklingError, match=r"argument 1 \(_thread.lock\) .*Accumulator"
        ):
            ex.actor(tasks.Accumulator, args=(0, threading.Lock()))
        with pytest.raises(TypeError, match="env_vars"):
            ex.actor(tasks.Accumulator, env_vars={"X": 1})
        with pytest.raises(ValueError, match="max_restarts"):
            ex.actor(tasks.Accumulator, max_restarts=-1)


# -- ending ---------------------------------------------------------------------------------


def test_close_waits_for_queued_calls_and_then_refuses_new_ones():
    with bayou.EnvExecutor(1) as ex:
        acc = ex.actor(tasks.Accumulator)
        pid = _pid_of(acc)
        queued = [acc.sleep(0.05) for _ in range(5)]
        acc.close(wait=True)
        assert all(f.done() and f.result() == 0.05 for f in queued)
        assert _gone(pid) and not acc.alive
        with pytest.raises(RuntimeError, match="closed"):
            acc.add(1)


def test_close_with_cancel_futures_cancels_queued_calls_and_stops_the_running_one():
    with bayou.EnvExecutor(1) as ex:
        acc = ex.actor(tasks.Accumulator)
        pid = _pid_of(acc)
        running = acc.sleep(60)
        queued = [acc.add(1) for _ in range(5)]
        while not running.running():
            time.sleep(0.01)
        time.sleep(0.2)
        start = time.monotonic()
        acc.close(wait=True, cancel_futures=True)
        assert time.monotonic() - start < 30
        assert running.cancelled() or isinstance(running.exception(), errors.WorkerCrashedError)
        assert all(f.cancelled() for f in queued[1:])
        assert _gone(pid)


def test_executor_shutdown_and_garbage_collection_end_actors():
    ex = bayou.EnvExecutor(1)
    kept = ex.actor(tasks.Accumulator, name="kept")
    kept_pid = _pid_of(kept)
    with pytest.raises(ValueError, match="already has an actor named 'kept'"):
        ex.actor(tasks.Accumulator, name="kept")
    dropped = ex.actor(tasks.Accumulator)
    dropped_pid = _pid_of(dropped)
    del dropped  # the last reference: its process ends
    assert _gone(dropped_pid)
    pending = kept.sleep(0.2)
    ex.shutdown(wait=True)
    assert pending.result(0) == 0.2  # shutdown lets queued calls finish
    assert _gone(kept_pid) and not kept.alive
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.actor(tasks.Accumulator)


def test_an_actor_handle_is_not_picklable_and_says_so():
    with bayou.EnvExecutor(1) as ex:
        acc = ex.actor(tasks.Accumulator)
        with pytest.raises(TypeError):
            pickle.dumps(acc)


# -- environment variables per actor and per worker slot ---------------------------------


def test_env_vars_of_an_actor_and_worker_env_per_slot_across_a_replacement():
    def slot_env(slot):
        return {"BAYOU_TEST_SLOT": str(slot)}

    with bayou.EnvExecutor(2, worker_env=slot_env) as ex:
        gpu = ex.actor(tasks.Accumulator, env_vars={"CUDA_VISIBLE_DEVICES": "1"})
        assert gpu.getenv("CUDA_VISIBLE_DEVICES").result(T) == "1"
        assert gpu.getenv("BAYOU_TEST_SLOT").result(T) is None  # not a pool worker

        def slots_seen():
            seen = {}
            while len(seen) < 2:
                futs = [ex.submit(basic.pid_and_env, "BAYOU_TEST_SLOT", 0.05) for _ in range(4)]
                for pid, slot in (f.result(T) for f in futs):
                    seen[slot] = pid
            return seen

        before = slots_seen()
        assert set(before) == {"0", "1"}
        os.kill(before["0"], signal.SIGKILL)
        assert _reaped(ex._processes, before["0"])
        after = slots_seen()
        assert after["0"] != before["0"]  # a replacement, in the same slot
        assert after["1"] == before["1"]


def test_a_worker_env_that_fails_breaks_the_pool_naming_the_slot():
    def bad(slot):
        return {"N": slot}  # not a str

    with bayou.EnvExecutor(1, worker_env=bad) as ex:
        fut = ex.submit(basic.add, 1, 1)
        with pytest.raises(BrokenProcessPool) as info:
            fut.result(T)
        assert "worker_env(0)" in str(info.value) and "'N'" in str(info.value)


# -- Ctrl-C -------------------------------------------------------------------------------

CTRL_C_CHILD = """
import sys
sys.path.insert(0, {repo!r})
import bayou
from tests.executor_tasks import actors

with bayou.EnvExecutor(1) as ex:
    acc = ex.actor(actors.Accumulator)
    print("pid", acc.state().result()["pid"], flush=True)
    queued = [acc.sleep(120) for _ in range(3)]
    print("waiting", flush=True)
    queued[0].result()
"""


@pytest.mark.parametrize("with_block", [True, False])
def test_ctrl_c_while_waiting_on_an_actor_call_ends_the_actor(with_block):
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    code = CTRL_C_CHILD.format(repo=repo)
    if not with_block:  # no with, no close: the interpreter's exit hook cleans up
        code = code.replace(
            "with bayou.EnvExecutor(1) as ex:", "if True:\n    ex = bayou.EnvExecutor(1)"
        )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job in a terminal
    )
    try:
        pid = int(proc.stdout.readline().split()[1])
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.3)  # inside result()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and err.count("Traceback") == 1, err
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert "_bayou_worker" not in err, err  # the actor's process printed nothing
    assert _gone(pid, within=5.0)
