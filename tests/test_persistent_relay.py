"""The short ways through a persistent pool: the client's follower, the host session
that follows its worker and answers from there, the outbox and the framed link.

The pieces first (a link and an outbox over a socket pair), then real pools: many
threads waiting at once, futures nobody follows, a timeout, a client killed while
the host follows its task, and Ctrl-C in a client waiting in result().
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing import connection
from pathlib import Path

import pytest

import bayou
from bayou.persistent.link import Link
from bayou.persistent.outbox import Outbox
from tests.executor_tasks import basic

REPO = Path(__file__).resolve().parent.parent
T = 120


def _links() -> tuple[Link, Link]:
    a, b = socket.socketpair()
    links = (Link(connection.Connection(a.detach())), Link(connection.Connection(b.detach())))
    return links


def test_a_link_carries_small_and_big_messages_then_says_eof():
    left, right = _links()
    big = os.urandom(3 << 20)  # more than the socket buffer: the sender must not block us
    sender = threading.Thread(
        target=lambda: [left.send(m) for m in (("a", 1), ("big", big), ("b", None))]
    )
    sender.start()
    assert right.recv() == ("a", 1)
    assert right.recv() == ("big", big)
    assert right.recv() == ("b", None)
    sender.join()
    left.close()
    with pytest.raises(EOFError):
        right.recv()
    right.close()


def test_the_outbox_keeps_order_between_direct_sends_and_the_writer():
    left, right = _links()
    outbox = Outbox(left)
    rounds = 300

    def poster() -> None:  # another thread (the supervisor): always through the writer
        for i in range(rounds):
            outbox.post(("post", i))

    other = threading.Thread(target=poster)
    other.start()
    for i in range(rounds):  # the session's thread: a post, then a direct send
        outbox.post(("mine", 2 * i))
        outbox.send(("mine", 2 * i + 1))
    other.join()
    outbox.close(("stopped", "done"), timeout=10)
    got: dict[str, list[int]] = {"post": [], "mine": []}
    while True:
        kind, value = right.recv()
        if kind == "stopped":
            break
        got[kind].append(value)
    assert got["post"] == list(range(rounds))
    assert got["mine"] == list(range(2 * rounds))  # a send never overtakes a post
    with pytest.raises(EOFError):  # the writer closed the link after the last message
        right.recv()
    right.close()


def test_threads_futures_and_callbacks_share_one_persistent_pool(pools):
    with bayou.EnvExecutor(2, persistent=True, name="busy") as ex:
        errors: list[BaseException] = []

        def caller(k: int) -> None:
            try:
                for i in range(40):  # each waits in result(): followers take turns
                    assert ex.submit(basic.add, k, i).result(T) == k + i
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        # meanwhile, futures nobody calls result() on: the reader thread settles them
        done_by_callback: list[int] = []
        futures = [ex.submit(basic.add, i, 1000) for i in range(30)]
        for fut in futures:
            fut.add_done_callback(lambda f: done_by_callback.append(f.result()))
        finished = [f.result() for f in concurrent.futures.as_completed(futures, timeout=T)]
        for t in threads:
            t.join(T)
        assert not errors, errors
        assert sorted(finished) == [i + 1000 for i in range(30)]
        deadline = time.monotonic() + 10
        while len(done_by_callback) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(done_by_callback) == sorted(finished)
        assert list(ex.map(basic.add, range(50), range(50))) == [2 * i for i in range(50)]
        # the call's duration in the worker comes back too: map's batching sizes with it
        timed = ex.submit(basic.sleep_then, 0.05)
        timed.result(T)
        assert timed.seconds is not None and 0.04 < timed.seconds < 30
        # a timeout ends a follower's wait; the reader thread settles the future later
        slow = ex.submit(basic.sleep_then, 0.5, "late")
        with pytest.raises(concurrent.futures.TimeoutError):
            slow.result(timeout=0.05)
        assert slow.result(T) == "late"
        assert ex.info()["max_workers"] == 2


def _python(code: str, **kwargs) -> subprocess.Popen:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        **kwargs,
    )


def test_a_client_killed_while_the_host_follows_its_task_frees_the_worker(pools):
    ex = bayou.EnvExecutor(1, persistent=True, name="orphan")
    assert ex.submit(abs, -1).result(T) == 1
    child = _python(
        """
        import os, signal, bayou
        from tests.executor_tasks import basic
        ex = bayou.attach("orphan")
        fut = ex.submit(basic.sleep_then, 600)
        while not fut.running():
            pass
        print("submitted", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "submitted", child.communicate()
    child.wait(T)
    # its task is cancelled (killed after the grace) and the one worker serves us again
    assert ex.submit(basic.add, 2, 3).result(60) == 5
    ex.shutdown()
    manager = pools.logs_dir / "pools" / "orphan" / "manager.log"
    assert "went away with 1 task(s) outstanding" in manager.read_text()


def test_ctrl_c_in_a_client_waiting_for_a_persistent_result(pools):
    ex = bayou.EnvExecutor(1, persistent=True, name="interrupted")
    assert ex.submit(abs, -1).result(T) == 1
    child = _python(
        """
        import bayou
        from tests.executor_tasks import basic
        ex = bayou.attach("interrupted")
        assert ex.submit(abs, -2).result(60) == 2
        fut = ex.submit(basic.wait_for_cancel, 600)
        print("waiting", flush=True)
        fut.result()
        """,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting", child.communicate()
        time.sleep(0.3)  # it sleeps in the follower's poll by now
        os.kill(child.pid, signal.SIGINT)
        _, err = child.communicate(timeout=60)  # a hang fails here
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert err.count("Traceback") == 1 and err.rstrip().endswith("KeyboardInterrupt"), err
    # the interrupted client cancelled its task at exit: the one worker is free again
    assert ex.submit(basic.add, 1, 1).result(60) == 2
    ex.shutdown()
