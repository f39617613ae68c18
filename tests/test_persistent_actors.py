"""A persistent pool's actors: made by one process, found again by another, listed by
``bayou workers list``, ended by close() or by stopping the pool.

Real parts: the pool host is a detached process, the second client a fresh
interpreter, ``bayou workers`` the console command."""

from __future__ import annotations

import json
import time

import pytest

import bayou
from bayou import errors
from tests.executor_tasks import actors as tasks
from tests.test_persistent import cli, gone, python

T = 120


def test_a_named_actor_is_found_again_from_another_process_with_its_state(pools, tmp_path):
    ex = bayou.EnvExecutor(1, persistent=True, name="seg")
    model = ex.actor(tasks.Accumulator, args=(100,), name="model", max_restarts=1)
    assert model.add(1).result(T) == 101
    state = model.state().result(T)
    ex.shutdown()  # detaches: the named actor belongs to the pool and lives on

    out = python(
        """
        import bayou
        ex = bayou.attach("seg")
        model = ex.actor("model")
        print(model.add(10).result(120), model.state().result(120)["gen"], model.calls)
        ex.shutdown()
        """,
        tmp_path,
    ).stdout.split()
    assert out == ["111", state["gen"], "4"]  # the same object: its sum, its gen

    deadline = time.monotonic() + 30  # the host rewrites its entry every second
    while True:
        listed = cli("workers", "list")
        assert listed.returncode == 0, listed.stderr
        lines = [ln for ln in listed.stdout.splitlines() if "actor model" in ln]
        if (lines and " calls       4" in lines[0]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    (line,) = lines
    assert "Accumulator" in line and str(state["pid"]) in line and "MiB" in line
    rows = json.loads(cli("workers", "list", "--json").stdout)
    (actor,) = rows[0]["actors"]
    assert actor["name"] == "model" and actor["class"] == "Accumulator"
    assert actor["pid"] == state["pid"] and actor["calls"] >= 4 and actor["rss"] > 0

    again = bayou.attach("seg")
    found = again.actor("model")
    with pytest.raises(ValueError, match="already has an actor named 'model'"):
        again.actor(tasks.Accumulator, name="model")
    found.close()
    assert gone(state["pid"])
    with pytest.raises(errors.ActorDiedError, match="no actor 'model'"):
        again.actor("model")
    again.stop_pool()


def test_an_unnamed_actor_ends_with_the_client_that_made_it(pools):
    ex = bayou.EnvExecutor(1, persistent=True, name="unnamed")
    acc = ex.actor(tasks.Accumulator)
    pid = acc.state().result(T)["pid"]
    assert acc.pid == pid
    ex.shutdown()
    assert gone(pid)
    bayou.persistent.stop("unnamed")


def test_crashes_and_constructor_errors_come_back_as_from_a_local_actor(pools):
    ex = bayou.EnvExecutor(1, persistent=True, name="faults")
    acc = ex.actor(tasks.Accumulator, name="fragile")
    dying, queued = acc.die(4), acc.add(1)
    with pytest.raises(errors.WorkerCrashedError, match="exit code 4"):
        dying.result(T)
    with pytest.raises(errors.ActorDiedError, match="no restarts left"):
        queued.result(T)
    with pytest.raises(errors.ActorDiedError):
        acc.add(1).result(T)

    broken = ex.actor(tasks.BrokenConstructor, args=("no weights",))
    with pytest.raises(KeyError, match="no weights"):
        broken.predict(1).result(T)
    with pytest.raises(errors.ActorDiedError, match="constructor"):
        broken.predict(2).result(T)
    ex.stop_pool()
