"""Fast checks of the conformance harness itself (no executor is run here)."""

from __future__ import annotations

import concurrent.futures
import io
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from integrations.concurrent_futures import cpython_suite

HERE = "integrations.concurrent_futures.test_harness"


class RecordingExecutor(concurrent.futures.Executor):
    """Stands for an executor that takes `env=`; records what it was given."""

    def __init__(self, max_workers: int | None = None, mp_context: Any = None, *, env: Any = None):
        self.max_workers, self.mp_context, self.env = max_workers, mp_context, env


FACTORY_CALLS: list[int] = []


def make_env() -> str:
    FACTORY_CALLS.append(1)
    return "the-env"


def test_readme_skips_table_matches_skips() -> None:
    text = cpython_suite.README.read_text()
    assert cpython_suite.readme_with_table(text) == text, (
        "README.md's skips table is stale: "
        "python -m integrations.concurrent_futures.cpython_suite readme"
    )


def test_every_skip_has_a_reason_and_a_class_dot_test_key() -> None:
    for key, reason in cpython_suite.SKIPS.items():
        cls, _, method = key.partition(".")
        assert cls and method.startswith("test_"), key
        assert len(reason) > 20, key


def test_skips_name_tests_of_this_version_or_say_which_version() -> None:
    suite = cpython_suite.load_suite()
    names = {case.id for case in suite.cases.values()}
    names |= {case.defined_in for case in suite.cases.values()}
    for key, reason in cpython_suite.SKIPS.items():
        assert key in names or reason.startswith("(3."), f"{key} matches no test"


def test_env_factory_subclass_injects_env_once_and_keeps_the_name() -> None:
    FACTORY_CALLS.clear()
    cls = cpython_suite.make_executor_type(f"{HERE}:RecordingExecutor", f"{HERE}:make_env")
    assert cls.__name__ == "RecordingExecutor" and issubclass(cls, RecordingExecutor)
    first, second = cls(2, "ctx"), cls(max_workers=1)
    assert (first.max_workers, first.mp_context, first.env) == (2, "ctx", "the-env")
    assert second.env == "the-env" and FACTORY_CALLS == [1]
    assert cls(1, env="mine").env == "mine"
    assert cpython_suite.make_executor_type(f"{HERE}:RecordingExecutor") is RecordingExecutor


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:Executor", "No module named 'no_such_module_xyz'"),
        ("concurrent.futures:NoSuchExecutor", "NoSuchExecutor"),
        ("concurrent.futures", "module:qualname"),
        ("concurrent.futures:Future", "is not a concurrent.futures.Executor"),
    ],
)
def test_unimportable_executor_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(cpython_suite.ExecutorUnavailable, match=message):
        cpython_suite.make_executor_type(spec)


def _ar(members: dict[str, bytes]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def test_suite_files_are_read_out_of_a_deb(tmp_path: Path) -> None:
    files = {
        "./usr/lib/python3.11/test/test_concurrent_futures.py": b"SUITE = 1\n",
        "./usr/lib/python3.11/test/__pycache__/test_concurrent_futures.cpython-311.pyc": b"x",
        "./usr/lib/python3.11/test/test_os.py": b"other\n",
        "./usr/lib/python3.12/test/test_concurrent_futures.py": b"wrong version\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = tmp_path / "libpython3.11-testsuite_1_all.deb"
    deb.write_bytes(
        _ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buffer.getvalue()})
    )
    dest = tmp_path / "out"
    assert cpython_suite._extract_suite(deb, "3.11", dest) == 1
    assert [p.name for p in dest.rglob("*")] == ["test_concurrent_futures.py"]
    assert (dest / "test_concurrent_futures.py").read_bytes() == b"SUITE = 1\n"


def test_scripts_get_the_prelude_before_their_code() -> None:
    seen: list[tuple] = []
    wrapped = cpython_suite._with_prelude(lambda *a, **k: seen.append((a, k)), "PRELUDE\n")
    wrapped("-X", "dev", "-c", "if 1:\n    pass\n", __cwd="/")
    assert seen == [(("-X", "dev", "-c", "PRELUDE\nif 1:\n    pass\n"), {"__cwd": "/"})]


def test_time_limit_interrupts_a_hung_call_and_leaves_no_thread() -> None:
    before = threading.active_count()
    started = time.monotonic()
    stack = cpython_suite._call_with_time_limit(threading.Event().wait, 0.5)
    assert stack is not None and "wait" in stack
    assert time.monotonic() - started < 5
    assert cpython_suite._call_with_time_limit(lambda: None, 5) is None
    assert threading.active_count() == before
