"""The bad-input catalogue (docs/errors.md): what a user can throw at bayou, and what comes back.

Every row of the catalogue's table names the test that shows it; rows already
covered elsewhere (tests/test_executor_basic.py, test_env_spec.py,
test_provision_*.py) are referenced there, the rest live here. Each executor
row also checks that the pool keeps working afterwards.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

import psutil
import pytest

from bayou import errors
from bayou import logs as bayou_logs
from bayou.executor import EnvExecutor
from tests.executor_tasks import bad_input as bad
from tests.executor_tasks import basic

T = 60  # generous result() timeout: a hang fails the test instead of blocking it
REPO = Path(__file__).resolve().parent.parent
CATALOGUE = REPO / "docs" / "errors.md"


@pytest.fixture
def ex():
    with EnvExecutor(2) as executor:
        yield executor


def still_works(ex) -> None:
    """The pool goes on: both workers (or their replacements) answer."""
    assert [f.result(T) for f in [ex.submit(basic.add, i, 1) for i in range(4)]] == [1, 2, 3, 4]


# -- exceptions that cannot travel back as themselves ---------------------------------


def test_exception_with_unpicklable_attribute_is_remote_error_naming_its_type(ex):
    with pytest.raises(errors.RemoteError) as info:
        ex.submit(bad.raise_locked_error).result(T)
    assert info.value.type_name == "tests.executor_tasks.bad_input.LockedError"
    assert info.value.message == "holding a lock"
    assert 'raise LockedError("holding a lock")' in info.value.traceback_text
    still_works(ex)


def test_exception_that_cannot_be_rebuilt_in_the_caller_is_remote_error(ex):
    # pickles fine in the worker, but TwoArgError(*args) fails in the caller
    with pytest.raises(errors.RemoteError) as info:
        ex.submit(bad.raise_two_arg_error).result(T)
    assert info.value.type_name == "tests.executor_tasks.bad_input.TwoArgError"
    assert "step failed with 3" in str(info.value)
    still_works(ex)


# -- recursion ------------------------------------------------------------------------------


def test_deep_recursion_is_a_recursion_error_with_the_remote_frames(ex):
    with pytest.raises(RecursionError) as info:
        ex.submit(bad.recurse, 0).result(T)
    assert "return recurse(n + 1) + 1" in info.value.__cause__.tb
    still_works(ex)


def test_a_builtin_exception_that_cannot_be_pickled_keeps_its_type(ex):
    with pytest.raises(ValueError, match="bad value") as info:
        ex.submit(bad.raise_builtin_with_unpicklable_arg).result(T)
    assert not isinstance(info.value, errors.RemoteError)
    assert "raise_builtin_with_unpicklable_arg" in info.value.__cause__.tb
    still_works(ex)


def test_a_traceback_too_deep_to_pickle_still_comes_back_as_the_error(ex):
    with pytest.raises(ValueError, match="at the bottom") as info:
        ex.submit(bad.deep_traceback, 900).result(T)
    assert "in down" in info.value.__cause__.tb  # the text traceback survives
    still_works(ex)


def test_recursion_past_the_c_stack_costs_only_its_worker(ex):
    try:
        ex.submit(bad.stack_overflow).result(T)
    except errors.WorkerCrashedError as exc:  # Python <= 3.11: the C stack overflows
        assert "killed by signal SIGSEGV" in str(exc)
        assert "stack_overflow" in str(exc)
        assert "in down" in str(exc)  # faulthandler's dump of the frames, from stderr
    except RecursionError:  # Python >= 3.12 guards the C stack too
        pass
    else:
        pytest.fail("a stack overflow returned a value")
    still_works(ex)


def test_argument_or_result_nested_too_deep_for_pickle_names_it(ex):
    fut = ex.submit(basic.echo, bad.nested(100_000))
    assert fut.done()  # refused at submit, in the caller
    with pytest.raises(errors.PicklingError, match=r"argument 0 \(builtins.list\)"):
        fut.result()
    with pytest.raises(errors.PicklingError, match="result of type list returned by .*nested"):
        ex.submit(bad.nested, 100_000).result(T)
    still_works(ex)


# -- os.fork() in a task ----------------------------------------------------------------------


def test_fork_whose_child_exits_is_fine(ex):
    assert ex.submit(bad.fork_child_exits, 5).result(T) == 5
    still_works(ex)


def test_fork_whose_child_falls_out_of_the_task_never_answers(caplog):
    caplog.set_level(logging.INFO, logger="bayou.worker")
    with EnvExecutor(1, output="logging") as ex:
        worker = ex.submit(basic.getpid).result(T)
        # the parent's answer, never the child's
        assert ex.submit(bad.fork_and_return, 5).result(T) == ("parent", 5)
        # the forked child reads no TASK from the socket it shares with the worker
        assert {ex.submit(basic.getpid).result(T) for _ in range(20)} == {worker}
        children = psutil.Process(worker).children()
        deadline = time.monotonic() + 10  # the child is on its way out (os._exit): let it
        while time.monotonic() < deadline and any(
            c.status() != psutil.STATUS_ZOMBIE for c in children
        ):
            time.sleep(0.05)
        assert all(c.status() == psutil.STATUS_ZOMBIE for c in children)
    assert any("forked by a task" in r.getMessage() for r in caplog.records)


# -- stdout and stdin --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_task_writing_1_gb_to_stdout_does_not_stall_the_protocol(tmp_path, monkeypatch):
    with open(os.devnull, "w") as sink:
        monkeypatch.setattr(sys, "stdout", sink)  # output="inherit" writes here
        logs = tmp_path / "logs"
        with EnvExecutor(2, heartbeat_timeout=2.0, log_dir=logs) as ex:
            ex.submit(basic.add, 1, 1).result(T)
            # no newline at all: the worst case for line splitting
            big = ex.submit(bad.write_stdout, 1 << 30, 1 << 20, False)
            small = [ex.submit(basic.sleep_then, 0.01, i) for i in range(50)]
            assert [f.result(300) for f in small] == list(range(50))
            assert not big.done(), "the 1 GB task should still be writing"
            assert big.result(600) == 1 << 30  # no WorkerHungError: heartbeats flowed
            still_works(ex)
        sizes = {p.name: p.stat().st_size for p in logs.iterdir()}
    # the chatty worker's log was rotated by size (bayou.logs.WORKER_LOG_MAX_BYTES)
    # rather than growing to 1 GB: its current file and one older one
    cap = bayou_logs.WORKER_LOG_MAX_BYTES
    rotated = [name for name in sizes if name.endswith(".log.1")]
    assert len(rotated) == 1, sizes
    assert sizes[rotated[0][: -len(".1")]] > 0
    assert all(size < cap + (1 << 20) for size in sizes.values()), sizes


def test_a_task_reading_stdin_gets_end_of_file_not_a_hang(ex):
    with pytest.raises(EOFError, match="EOF when reading a line"):
        ex.submit(bad.read_stdin, "input").result(T)
    assert ex.submit(bad.read_stdin, "read").result(T) == ""
    still_works(ex)


# -- modules that do not exist or do not compile --------------------------------------------------


def test_module_path_that_does_not_exist(ex, tmp_path):
    missing = tmp_path / "missing_tools.py"
    with pytest.raises(FileNotFoundError, match="no such module file: .*missing_tools.py"):
        ex.import_module(missing)
    with pytest.raises(FileNotFoundError, match="missing_tools.py"):
        ex.execute(str(missing), "total")
    with pytest.raises(errors.UnpicklingError, match="No module named 'bayou_no_such_mod'"):
        ex.execute("bayou_no_such_mod", "total")
    proxy = ex.import_module("bayou_no_such_mod")  # a name: only the env can tell
    with pytest.raises(errors.UnpicklingError, match="bayou_no_such_mod.total could not be"):
        proxy.total([1])
    still_works(ex)


def test_module_with_a_syntax_error_names_file_and_line(ex, tmp_path):
    path = tmp_path / "broken_tools.py"
    path.write_text("def total(xs):\n    return sum(xs\n")
    with pytest.raises(errors.UnpicklingError) as info:
        ex.import_module(path).total([1, 2])
    message = str(info.value)
    assert "broken_tools.total could not be loaded in the worker" in message
    assert "SyntaxError" in message and "broken_tools.py, line 2" in message
    assert isinstance(info.value.__cause__, SyntaxError)
    fine = tmp_path / "ok_tools.py"
    fine.write_text("def total(xs):\n    return sum(xs)\n")
    with pytest.raises(errors.UnpicklingError, match="has no attribute 'nope'"):
        ex.execute(str(fine), "nope")
    assert ex.execute(str(fine), "total", args=([1, 2],)) == 3
    still_works(ex)


def test_function_submitted_by_reference_whose_module_is_gone_in_the_worker(ex, tmp_path):
    """The caller imported it; the worker cannot (the file went away): the module is named."""
    pkg = tmp_path / "gone_src"
    pkg.mkdir()
    (pkg / "vanishing_mod.py").write_text("def double(x):\n    return 2 * x\n")
    sys.path.insert(0, str(pkg))
    try:
        import vanishing_mod

        (pkg / "vanishing_mod.py").unlink()
        with pytest.raises(errors.UnpicklingError) as info:
            ex.submit(vanishing_mod.double, 2).result(T)
        assert "vanishing_mod.double could not be loaded in the worker" in str(info.value)
        assert "No module named 'vanishing_mod'" in str(info.value)
    finally:
        sys.path.remove(str(pkg))
        sys.modules.pop("vanishing_mod", None)
    still_works(ex)


@pytest.mark.slow
def test_result_whose_class_only_the_env_has_names_the_module(store):
    import bayou

    env = bayou.Env(pip=["six==1.16.0"])  # the caller has no six
    with pytest.raises(ImportError):
        import six  # noqa: F401
    with EnvExecutor(1, env=env) as ex:
        with pytest.raises(errors.UnpicklingError) as info:
            ex.execute("six", "MovedModule", args=("a", "b"))
        assert "the result of six.MovedModule could not be unpickled in the caller" in str(
            info.value
        )
        assert "No module named 'six'" in str(info.value)
        assert ex.execute("six", "ensure_str", args=(b"ok",)) == "ok"


def test_submitting_something_not_callable(ex):
    with pytest.raises(TypeError, match="'int' object is not callable"):
        ex.submit(42).result(T)
    still_works(ex)


# -- the catalogue itself ---------------------------------------------------------------------------

_TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _catalogue_rows() -> list[tuple[str, list[tuple[str, str]]]]:
    rows = []
    for line in CATALOGUE.read_text().splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].lower() == "input":
            continue
        rows.append((cells[0], _TEST_REF.findall(cells[-1])))
    return rows


def test_every_catalogue_row_names_an_existing_test():
    rows = _catalogue_rows()
    assert len(rows) >= 25
    for what, refs in rows:
        assert refs, f"docs/errors.md: row {what!r} names no test"
        for path, name in refs:
            source = (REPO / path).read_text()
            assert re.search(rf"^(async )?def {name}\(", source, re.M), (
                f"docs/errors.md: row {what!r} names {path}::{name}, which does not exist"
            )


def test_every_test_here_is_in_the_catalogue():
    named = {(p, n) for _, refs in _catalogue_rows() for p, n in refs}
    here = re.findall(r"^def (test_\w+)\(", Path(__file__).read_text(), re.M)
    catalogue_tests = {"test_every_catalogue_row_names_an_existing_test"}
    catalogue_tests.add("test_every_test_here_is_in_the_catalogue")
    missing = [
        n for n in here if n not in catalogue_tests and ("tests/test_bad_input.py", n) not in named
    ]
    assert missing == [], f"add these to docs/errors.md: {missing}"
