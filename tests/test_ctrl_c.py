"""Ctrl-C in a caller that is inside `EnvExecutor.map`.

A real child Python maps long tasks over 2 workers; once results flow, its
process group gets SIGINT, as a terminal's Ctrl-C would send it. Expected:
the child ends with its own KeyboardInterrupt (one traceback, the caller's),
tasks not yet handed to a worker never start, running ones are stopped,
every worker is gone, no worker writes anything on stderr, the socket
directory is removed, and the store still holds the env, usable as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import bayou
from tests.support.processes import is_running

REPO = Path(__file__).resolve().parent.parent
TASKS = 40
SHORT = 2  # the first tasks end at once, so the child has printed a result before Ctrl-C

CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    import bayou
    from tests.executor_tasks import interrupt

    directory, shape, kind = sys.argv[1:4]
    env = bayou.Env(pip=["packaging==21.3"]) if kind == "env" else None
    seconds = [0.05] * {short} + [120.0] * ({tasks} - {short})
    args = ([directory] * {tasks}, range({tasks}), seconds)

    def consume(ex):
        results = ex.map(interrupt.mark_and_sleep, *args)
        print("socket", ex._pool.listener.directory, flush=True)
        for value in results:
            print("got", value, flush=True)

    if shape == "with":
        with bayou.EnvExecutor(2, env=env) as ex:
            consume(ex)
    else:  # no with-block, no shutdown: the interpreter's exit hook cleans up
        ex = bayou.EnvExecutor(2, env=env)
        consume(ex)
    """
).format(repo=str(REPO), tasks=TASKS, short=SHORT)


def _interrupt_child(tmp_path: Path, shape: str, kind: str, presses: int = 1):
    """Run the child, press Ctrl-C `presses` times once tasks run; what it left behind."""
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marks), shape, kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job in a terminal
    )
    try:
        socket_dir = None
        lines = []
        while len([ln for ln in lines if ln.startswith("got")]) < SHORT:
            line = proc.stdout.readline()
            assert line, f"child ended early: {proc.communicate(timeout=30)}"
            lines.append(line)
            if line.startswith("socket "):
                socket_dir = line.split(" ", 1)[1].strip()
        deadline = time.monotonic() + 60
        while len(list(marks.glob("started-*"))) < SHORT + 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # both workers are inside a long task
        workers = [c.pid for c in psutil.Process(proc.pid).children()]
        assert len(workers) == 2
        for press in range(presses):
            if press:
                time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err, workers, marks, socket_dir


def _alive(pids: list[int], grace: float = 5.0) -> list[int]:
    """The pids still running after up to `grace` s (a worker's death signal is async)."""
    deadline = time.monotonic() + grace
    while True:
        alive = [pid for pid in pids if is_running(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def _check_clean(rc, err, workers, marks, socket_dir) -> None:
    assert rc in (-signal.SIGINT, 128 + signal.SIGINT, 1), (rc, err)
    # the caller's own KeyboardInterrupt, and nothing from the workers
    assert err.count("Traceback") == 1, err
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert "_bayou_worker" not in err and "interrupt.py" not in err, err
    assert "Exception ignored" not in err, err
    assert _alive(workers) == []
    assert socket_dir and not os.path.exists(socket_dir)
    # queued tasks never started: at most the 2 running + 2 handed over ahead
    started = sorted(p.name for p in marks.glob("started-*"))
    assert len(started) <= SHORT + 4, started
    time.sleep(0.5)
    assert sorted(p.name for p in marks.glob("started-*")) == started
    assert not [p for p in marks.glob("done-*") if int(p.name.split("-")[1]) >= SHORT]


@pytest.mark.parametrize("shape", ["with", "bare"])
def test_ctrl_c_during_map_stops_everything(tmp_path, shape):
    _check_clean(*_interrupt_child(tmp_path, shape, "current"))


def test_ctrl_c_twice_during_shutdown_still_leaves_nothing(tmp_path):
    rc, err, workers, marks, socket_dir = _interrupt_child(tmp_path, "with", "current", 2)
    assert rc != 0
    assert "_bayou_worker" not in err and "interrupt.py" not in err, err
    assert _alive(workers) == []
    started = list(marks.glob("started-*"))
    time.sleep(0.5)
    assert len(list(marks.glob("started-*"))) == len(started)


@pytest.mark.slow
def test_ctrl_c_during_map_in_a_provisioned_env_keeps_the_store(tmp_path, store):
    env = bayou.Env(pip=["packaging==21.3"])
    built = bayou.provision(env)
    _check_clean(*_interrupt_child(tmp_path, "with", "env"))
    # the store is as it was: the env listed once, nothing half-built, found again
    assert [e.hash for e in store.list()] == [env.hash]
    assert list(store.builds_dir.iterdir()) == []
    events = []
    again = bayou.provision(env, progress=events.append)
    assert again.prefix == built.prefix and events == []
    with bayou.EnvExecutor(1, env=env) as ex:
        from tests.executor_tasks import interrupt

        assert ex.submit(interrupt.mark_and_sleep, str(tmp_path), 99, 0).result(60) == 99
