"""EnvExecutor with the caller's own interpreter: the ProcessPoolExecutor surface."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import io
import logging
import os
import pickle
import stat
import sys
import threading
import time
import weakref

import psutil
import pytest

from bayou import errors
from bayou.executor import BayouFuture, EnvExecutor
from bayou.task_api import cancel
from tests.executor_tasks import basic

T = 30  # generous result() timeout: a hang fails the test instead of blocking it


@pytest.fixture
def ex():
    with EnvExecutor(2) as executor:
        yield executor


def test_submit_map_and_chunks(ex):
    assert ex.submit(basic.add, 2, b=3).result(T) == 5
    assert ex.submit(pow, 2, 10).result(T) == 1024
    assert list(ex.map(basic.add, range(10), range(10))) == [2 * i for i in range(10)]
    ref = [pow(i, i) for i in range(40)]
    for chunksize in (1, 6, 40, 50):
        assert list(ex.map(pow, range(40), range(40), chunksize=chunksize)) == ref
    with pytest.raises(ValueError):
        ex.map(pow, range(3), range(3), chunksize=0)


def test_lambdas_closures_and_futures_type(ex):
    fut = ex.submit(lambda x: x + 1, 41)
    assert isinstance(fut, BayouFuture) and isinstance(fut, cf.Future)
    assert fut.result(T) == 42
    k = 3
    assert ex.submit(lambda: k * 2).result(T) == 6
    # a function returned by the worker comes back as a function
    assert ex.submit(basic.make_closure, 5).result(T)(2) == 10


def test_map_timeout_and_early_close(ex):
    it = ex.map(basic.sleep_then, [1, 1], timeout=0.3)
    with pytest.raises(cf.TimeoutError):
        next(it)


def test_remote_exception_keeps_type_and_traceback(ex):
    fut = ex.submit(basic.raise_value_error, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        fut.result(T)
    cause = info.value.__cause__
    assert type(cause).__name__ == "_RemoteTraceback"
    assert "raise ValueError(msg)" in cause.tb
    # the rebuilt traceback carries the remote frame
    import traceback

    frames = traceback.extract_tb(info.value.__traceback__)
    assert any(f.name == "raise_value_error" for f in frames)
    # the pool goes on
    assert ex.submit(basic.add, 1, 1).result(T) == 2


def test_unimportable_remote_exception_is_remote_error(ex, tmp_path):
    mod = tmp_path / "envonly_mod.py"
    mod.write_text("class Odd(Exception):\n    pass\n\ndef fail():\n    raise Odd('odd one')\n")
    with pytest.raises(errors.RemoteError) as info:
        ex.execute(str(mod), "fail")
    assert info.value.type_name == "envonly_mod.Odd"
    assert "odd one" in str(info.value)
    assert "raise Odd" in info.value.traceback_text


def test_system_exit_and_keyboard_interrupt_fail_only_that_task(ex):
    with pytest.raises(SystemExit):
        ex.submit(basic.system_exit, 1).result(T)
    with pytest.raises(KeyboardInterrupt):
        ex.submit(basic.keyboard_interrupt).result(T)
    assert ex.submit(basic.add, 1, 2).result(T) == 3


def test_unpicklable_argument_fails_at_submit_naming_it(ex):
    fut = ex.submit(basic.echo, 1, threading.Lock())
    assert fut.done()
    with pytest.raises(errors.PicklingError, match=r"argument 1 \(_thread.lock\)"):
        fut.result()
    fut = ex.submit(basic.echo, 1, key=threading.Lock())
    with pytest.raises(errors.PicklingError, match="keyword argument 'key'"):
        fut.result()


def test_unpicklable_result_fails_that_future_naming_type(ex):
    with pytest.raises(errors.PicklingError, match="_thread.lock"):
        ex.submit(basic.return_unpicklable).result(T)
    assert ex.submit(basic.add, 1, 2).result(T) == 3


def test_task_that_cannot_be_loaded_in_worker(ex):
    class Bad:
        def __reduce__(self):
            return (basic.raise_value_error, ("cannot load",))

    with pytest.raises(cf.process.BrokenProcessPool, match="could not be loaded") as info:
        ex.submit(basic.echo, Bad()).result(T)
    assert isinstance(info.value.__cause__, ValueError)
    assert ex.submit(basic.add, 1, 2).result(T) == 3


def test_wait_as_completed_asyncio(ex):
    fs = [ex.submit(basic.sleep_then, 0.05 * (3 - i), i) for i in range(3)]
    done, not_done = cf.wait(fs, timeout=T)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=T)) == [0, 1, 2]

    async def main():
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(ex, basic.add, 1, 2)
        b = await asyncio.wrap_future(ex.submit(basic.add, 3, 4))
        return a, b

    assert asyncio.run(main()) == (3, 7)


def test_shutdown_semantics():
    ex = EnvExecutor(1)
    f = ex.submit(basic.add, 1, 2)
    pids = list(ex._processes)
    pool = ex._pool
    ex.shutdown()
    assert f.result() == 3
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(basic.add, 1, 2)
    ex.shutdown()  # idempotent
    assert not os.path.exists(pool.listener.directory)
    for pid in pids:
        assert not psutil.pid_exists(pid)


def test_shutdown_cancel_futures_kills_running_and_drops_pending():
    ex = EnvExecutor(2)
    fs = [ex.submit(basic.sleep_then, 30) for _ in range(10)]
    processes = dict(ex._processes)
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in fs)
    for p in processes.values():
        p.join(5)
        assert not p.is_alive()
        assert not psutil.pid_exists(p.pid)


def test_context_manager_and_process_reuse():
    with EnvExecutor(4) as ex:
        for _ in range(3):
            ex.submit(basic.add, 1, 2).result(T)
        assert len(ex._processes) == 1
        processes = ex._processes
    for p in list(processes.values()):
        p.join(5)


def test_max_tasks_per_child_recycles_workers():
    with EnvExecutor(1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(basic.getpid).result(T) for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_initializer():
    with EnvExecutor(2, initializer=basic.init, initargs=("ready",)) as ex:
        assert ex.submit(basic.get_init).result(T) == "ready"


def test_failing_initializer_breaks_the_pool(caplog):
    ex = EnvExecutor(2, initializer=basic.init_fail)
    try:
        fut = ex.submit(basic.get_init)
        with pytest.raises(cf.BrokenExecutor):
            fut.result(T)
        assert ex._broken
        with pytest.raises(cf.BrokenExecutor):
            ex.submit(basic.get_init)
    finally:
        ex.shutdown()
    assert any("error in initializer" in str(r.exc_info) for r in caplog.records if r.exc_info)


def test_stdout_stderr_inherited_by_default_and_kept_in_log_file(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="bayou.worker")
    with EnvExecutor(1, log_dir=tmp_path) as ex:
        assert ex.submit(basic.print_lines, 3).result(T) == 3
        assert ex.submit(basic.write_raw, "no newline yet \u00e9", "err").result(T)
        assert ex.submit(basic.add, 1, 1).result(T) == 2  # output is read before shutdown
    captured = capsys.readouterr()
    assert captured.out == "".join(f"out line {i}\n" for i in range(3))
    # unchanged: no newline added, non-ASCII intact, arrives before the worker exits
    assert captured.err == "".join(f"err line {i}\n" for i in range(3)) + "no newline yet \u00e9"
    assert not [r for r in caplog.records if r.name.startswith("bayou.worker.")]
    (log,) = tmp_path.glob("worker-current-0-*.log")
    text = log.read_text()
    assert "out | out line 0" in text and "err | err line 2" in text
    assert "err | no newline yet \u00e9" in text


def test_output_inherit_follows_the_current_sys_stdout(monkeypatch):
    with EnvExecutor(1) as ex:
        ex.submit(basic.add, 1, 1).result(T)
        for attempt in range(2):
            out, err = io.StringIO(), io.StringIO()
            monkeypatch.setattr(sys, "stdout", out)
            monkeypatch.setattr(sys, "stderr", err)
            ex.submit(basic.print_lines, 1).result(T)
            deadline = time.monotonic() + T
            while time.monotonic() < deadline and not (
                out.getvalue().endswith("\n") and err.getvalue().endswith("\n")
            ):
                time.sleep(0.01)
            monkeypatch.undo()
            assert out.getvalue() == "out line 0\n", attempt
            assert err.getvalue() == "err line 0\n", attempt


def test_output_mode_is_validated():
    with pytest.raises(ValueError, match="output must be one of"):
        EnvExecutor(1, output="print")


def test_output_logging_sends_lines_to_loggers_and_log_file(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="bayou.worker")
    with EnvExecutor(1, log_dir=tmp_path, output="logging") as ex:
        assert ex.submit(basic.print_lines, 3).result(T) == 3
        assert ex.submit(basic.add, 1, 1).result(T) == 2  # output is read before shutdown
    records = [r for r in caplog.records if r.name.startswith("bayou.worker.current.")]
    messages = {(r.levelno, r.getMessage()) for r in records}
    assert (logging.INFO, "out line 2") in messages
    assert (logging.WARNING, "err line 2") in messages
    logs = list(tmp_path.glob("worker-current-0-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "out | out line 0" in text and "err | err line 2" in text
    assert "line" not in capsys.readouterr().out + capsys.readouterr().err
    (record,) = [r for r in records if r.getMessage() == "out line 1"]
    assert record.stream == "out" and record.worker_pid > 0


def test_import_module_and_execute(ex, tmp_path):
    mod = tmp_path / "my_tools.py"
    mod.write_text(
        "import os\n\ndef total(xs):\n    return sum(xs)\n\ndef pid():\n    return os.getpid()\n"
    )
    tools = ex.import_module(mod)
    assert tools.total([1, 2, 3]) == 6
    assert tools.pid() in ex._processes
    assert ex.execute(str(mod), "total", args=([4, 5],)) == 9
    assert ex.import_module("os.path").join("a", "b") == os.path.join("a", "b")
    assert ex.import_module("tests.executor_tasks.basic").add(1, 2) == 3
    assert tools.total.submit([1]).result(T) == 1


def test_progress_and_callbacks(ex):
    seen = []
    fut = ex.submit(basic.report_steps, 5)
    fut.add_progress_callback(lambda f, p: seen.append(p))
    assert fut.result(T) == 5
    assert fut.progress == (5.0, 5.0, "step 5")
    assert seen and seen[-1] == fut.progress
    assert ex.submit(basic.bayou_kind).result(T) is False  # the real bayou, not the shim


def test_cooperative_cancel(ex):
    # a ready worker: the task goes straight to it, so running() means running there
    # (a task handed over ahead of its worker is "running" too, and cancel drops it)
    pid = ex.submit(basic.getpid).result(T)
    fut = ex.submit(basic.wait_for_cancel, 30)
    while not fut.running():
        pass
    assert cancel(fut, grace=10)
    with pytest.raises(cf.CancelledError):
        fut.result(5)
    assert ex.submit(basic.getpid).result(T) == pid  # stopped by itself: not killed


def test_hard_cancel_kills_after_grace():
    with EnvExecutor(1) as ex:
        pid = ex.submit(basic.getpid).result(T)  # ready: fut goes straight to it
        fut = ex.submit(basic.sleep_then, 60)
        queued = ex.submit(basic.sleep_then, 60)
        while not fut.running():
            pass
        assert ex._pool._workers[0].item.future is fut
        assert cancel(queued) and queued.cancelled()
        assert cancel(fut, grace=0.2)
        with pytest.raises(cf.CancelledError):
            fut.result(5)
        assert not cancel(fut)
        assert ex.submit(basic.getpid).result(T) != pid  # killed and replaced
        assert not psutil.pid_exists(pid)
    plain = cf.Future()
    assert cancel(plain) and plain.cancelled()  # not ours: Future.cancel()


def test_key_never_in_argv_or_environ_and_socket_dir_private():
    with EnvExecutor(2) as ex:
        ex.submit(basic.add, 1, 2).result(T)
        key = ex._pool.listener.key
        directory = ex._pool.listener.directory
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        for pid in ex._processes:
            for name in ("cmdline", "environ"):
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    data = f.read()
                assert key not in data and key.hex().encode() not in data
                assert pickle.dumps(key) not in data
    assert not os.path.exists(directory)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_keeps_no_reference_to_results_it_yielded(ex, chunksize):
    for obj in ex.map(basic.make_dummy, range(7), chunksize=chunksize):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_worker_has_the_callers_multiprocessing_authkey(ex):
    import multiprocessing

    assert ex.submit(basic.authkey).result(T) == bytes(multiprocessing.current_process().authkey)


def test_worker_drops_arguments_before_answering(ex, tmp_path):
    marker = tmp_path / "gone"
    assert ex.submit(basic.touched, basic.TouchOnDelete(str(marker))).result(T) is False
    assert marker.exists()  # the worker's copy was collected before the RESULT was sent
    failed = ex.submit(basic.fail_holding, basic.TouchOnDelete(str(tmp_path / "b")))
    assert isinstance(failed.exception(T), RuntimeError)
    assert (tmp_path / "b").exists()  # nor does a traceback keep it alive there
