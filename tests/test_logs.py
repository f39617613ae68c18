"""Logs under the store: manager log rotation, worker log rotation, `bayou logs`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

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
        while time.monotonic() < deadline:
            workers = logs.worker_logs(directory)
            manager = (directory / logs.MANAGER_LOG).read_text()
            if workers and "detached" in manager:
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
