"""Logs under the store: manager log rotation, worker log rotation, `bayou logs`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

import bayou
from bayou import logs
from bayou.persistent import registry
from bayou.store import Store

BAYOU = [sys.executable, "-m", "bayou.cli"]
T = 120


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BAYOU, *args], capture_output=True, text=True, timeout=T)


def test_worker_logs_are_rotated_by_count_sparing_live_workers(tmp_path):
    folder = tmp_path / logs.WORKERS
    folder.mkdir()
    now = time.time()
    for pid in range(100, 130):
        path = folder / f"worker-abc-0-{pid}.log"
        path.write_text(f"pid {pid}\n")
        os.utime(path, (now - 1000 + pid, now - 1000 + pid))
    removed = logs.prune_worker_logs(tmp_path, live_pids=[100, 101], keep=5)
    left = sorted(int(p.stem.rsplit("-", 1)[1]) for p in logs.worker_logs(tmp_path))
    assert left == [100, 101, 125, 126, 127, 128, 129]  # live ones + the 5 newest
    assert len(removed) == 23


def test_tail_reads_the_end_of_a_big_file(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(50_000)))
    assert logs.tail(path, 3) == ["line 49997", "line 49998", "line 49999"]
    assert logs.tail(path, 0) == []
    assert logs.tail(tmp_path / "missing.log", 3) == []


def test_manager_log_rotates_and_leaves_worker_output_out(tmp_path):
    handler = logs.manager_handler(tmp_path)
    handler.maxBytes = 2000
    log = logging.getLogger("bayou.test_logs_manager")
    worker = logging.getLogger("bayou.worker.abc.0")
    for lg in (log, worker):
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        for i in range(200):
            log.info("manager line %d", i)
            worker.info("worker output %d", i)
    finally:
        for lg in (log, worker):
            lg.removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["manager.log", "manager.log.1", "manager.log.2", "manager.log.3"]
    text = "".join((tmp_path / f).read_text() for f in files)
    assert "manager line 199" in text and "worker output" not in text
    assert all((tmp_path / f).stat().st_size <= 2200 for f in files)


def test_a_named_executor_keeps_worker_logs_under_the_store(store):
    with bayou.EnvExecutor(1, name="named", output="logging") as ex:
        pid = ex.submit(_say, "hello from the worker").result(T)
    directory = logs.pools_log_dir(store) / "named"
    (path,) = logs.worker_logs(directory)
    assert path.name.endswith(f"-{pid}.log")
    assert "hello from the worker" in path.read_text()

    listing = cli("logs")
    assert listing.returncode == 0 and "named" in listing.stdout
    shown = cli("logs", "named", "-n", "5")
    assert shown.returncode == 0 and "hello from the worker" in shown.stdout
    only = cli("logs", "named", "--worker", str(pid))
    assert "hello from the worker" in only.stdout and "manager.log" not in only.stdout
    assert cli("logs", "named", "--path").stdout.strip() == str(directory)
    assert cli("logs", "nothing").returncode == 3
    assert cli("logs", "named", "--worker", "1").returncode == 3


def _say(text):
    print(text, flush=True)
    return os.getpid()


def test_a_persistent_pool_writes_a_manager_log_and_worker_logs(store):
    ex = bayou.EnvExecutor(1, persistent=True, name="logged")
    try:
        pid = ex.submit(_say, "persistent hello").result(T)
        ex.shutdown()
        directory = logs.pools_log_dir(store) / "logged"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the host logs output as its pipe is read,
            workers = logs.worker_logs(directory)  # which may be after the result went back
            manager = (directory / logs.MANAGER_LOG).read_text()
            said = [p for p in workers if "persistent hello" in p.read_text()]
            if said and "detached" in manager:
                break
            time.sleep(0.1)
        assert "persistent pool 'logged' ready" in manager and "detached" in manager
        assert "persistent hello" not in manager  # worker output has its own files
        (path,) = [p for p in workers if p.name.endswith(f"-{pid}.log")]
        assert "persistent hello" in path.read_text()
        shown = cli("logs", "logged")
        assert "persistent hello" in shown.stdout and "ready" in shown.stdout
    finally:
        for entry in registry.entries(Store(store.root)):
            registry.kill_host(entry)


def _chatter(lines, width):
    for i in range(lines):
        print(f"{i:06d} " + "x" * width, flush=(i % 100 == 0))
    print("the last line", flush=True)
    return os.getpid()


def test_a_chatty_worker_log_is_rotated_by_size(store, monkeypatch):
    monkeypatch.setattr(logs, "WORKER_LOG_MAX_BYTES", 64 << 10)
    with bayou.EnvExecutor(1, name="chatty", output="logging") as ex:
        pid = ex.submit(_chatter, 3000, 100).result(T)  # about 350 KB of output
    directory = logs.pools_log_dir(store) / "chatty"
    files = sorted(p.name for p in logs.worker_logs(directory))
    current = f"worker-current-0-{pid}.log"
    assert files == [current, current + ".1"]
    for name in files:  # one flush of output past the cap at most
        assert (directory / logs.WORKERS / name).stat().st_size < (64 << 10) + (64 << 10)
    assert "the last line" in (directory / logs.WORKERS / current).read_text()
    assert all(logs.worker_pid(directory / logs.WORKERS / n) == pid for n in files)
    shown = cli("logs", "chatty", "--worker", str(pid), "-n", "1")
    assert shown.returncode == 0 and "the last line" in shown.stdout


def test_log_follower_reads_whole_lines_new_files_and_rotated_ones(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("old\n")
    present = [a]
    follower = logs.LogFollower(lambda: list(present))
    assert follower.poll() == []  # what was there at the start is not repeated
    with open(a, "a") as f:
        f.write("one\ntw")
    assert follower.poll() == [(a, "one")]
    with open(a, "a") as f:
        f.write("o\n")
    assert follower.poll() == [(a, "two")]
    b.write_text("first of b\n")
    present.append(b)  # a file that appears later is read from its start
    assert follower.poll() == [(b, "first of b")]
    a.write_text("rotated\n")  # shorter than before: read again from the start
    assert follower.poll() == [(a, "rotated")]


def test_bayou_logs_follow_prints_new_lines_of_old_and_new_workers(store):
    import signal

    with bayou.EnvExecutor(1, name="followed") as ex:
        first = ex.submit(_say, "before following").result(T)
        directory = logs.pools_log_dir(store) / "followed"
        deadline = time.monotonic() + T  # the supervisor writes worker output as it comes
        while not any("before following" in p.read_text() for p in logs.worker_logs(directory)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc = subprocess.Popen(
            [*BAYOU, "logs", "followed", "-f", "-n", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = "start"
            while f"-{first}.log <==" not in line:  # the tails are out: it follows now
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
            ex.submit(_say, "while following").result(T)
            with pytest.raises(bayou.WorkerCrashedError):
                ex.submit(os._exit, 3).result(T)
            second = ex.submit(_say, "from the new worker").result(T)
            assert second != first
            seen = []
            deadline = time.monotonic() + T
            while time.monotonic() < deadline and not any("new worker" in s for s in seen):
                seen.append(proc.stdout.readline())
            # in order: the old worker's last line, then its successor's
            assert f"worker-current-0-{first} | " in "".join(seen)
            assert any("while following" in s for s in seen)
            assert any(f"-{second} | " in s and "from the new worker" in s for s in seen)
            assert not any("before following" in s for s in seen)
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(T) == 0
