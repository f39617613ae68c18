"""Pip environments built for real with uv from PyPI, over the machine's
interpreters; the store's build-once and crash-safety guarantees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bayou
from bayou import Env, ProvisionError
from tests.conftest import require_interpreter

pytestmark = pytest.mark.slow


def in_env(env, code: str) -> str:
    result = bayou.run(env, ["python", "-c", code])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_pip_env_is_built_once_and_found_again(store):
    env = Env(pip=["packaging==21.3"])
    events = []
    first = bayou.provision(env, progress=events.append)
    assert first.prefix == store.env_dir(env.hash)
    assert [e.stage for e in events][-1] == "done"
    assert {"name": "packaging", "version": "21.3"} in first.record["pip_packages"]
    assert in_env(env, "import packaging; print(packaging.__version__)") == "21.3"

    again_events = []
    started = time.perf_counter()
    second = bayou.provision(env, progress=again_events.append)
    hit = time.perf_counter() - started
    assert second.prefix == first.prefix and again_events == []
    assert hit < first.record["build_seconds"] / 10


def test_an_env_is_found_by_every_name_it_was_asked_for(store):
    built = bayou.provision(Env(pip=["packaging==21.3"]))  # no name
    for name in ("old-packaging", "legacy"):
        again = bayou.provision(Env(pip=["packaging==21.3"], name=name))
        assert again.prefix == built.prefix  # the same files: names are labels
        assert store.resolve(name).prefix == built.prefix
    assert store.names(built.hash) == {"old-packaging", "legacy"}
    with pytest.raises(KeyError, match="no environment matches 'other'"):
        store.resolve("other")


def test_conflicting_pins_coexist(store):
    old = bayou.provision(Env(pip=["packaging==21.3"]))
    new = bayou.provision(Env(pip=["packaging==24.1"]))
    assert old.prefix != new.prefix
    code = "import packaging; print(packaging.__version__)"
    assert in_env(old, code) == "21.3"
    assert in_env(new, code) == "24.1"


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_envs_from_the_machines_interpreters(store, version):
    require_interpreter(version)
    env = bayou.provision(Env(python=version, pip=["six==1.16.0"]))
    assert env.python_version.startswith(version + ".")
    out = in_env(env, "import sys, six; print('%d.%d' % sys.version_info[:2], six.__version__)")
    assert out == f"{version} 1.16.0"


def test_activation_is_the_envs_not_the_callers(store):
    env = bayou.provision(Env(pip=["six"], env_vars={"BAYOU_X": "42"}))
    out = in_env(
        env,
        "import os, sys; print(sys.prefix == os.environ['VIRTUAL_ENV'], os.environ['BAYOU_X'],"
        " os.environ['PATH'].split(os.pathsep)[0])",
    )
    assert out == f"True 42 {env.prefix / 'bin'}"
    assert os.path.dirname(sys.executable) not in in_env(
        env, "import os; print(os.environ['PATH'])"
    )


def test_missing_package_names_it(store):
    env = Env(pip=["six", "bayou-no-such-package-xyz==1.0"])
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env)
    assert info.value.package == "bayou-no-such-package-xyz==1.0"
    assert "bayou-no-such-package-xyz" in str(info.value)
    log = Path(info.value.log_file).read_text()
    assert "bayou-no-such-package-xyz" in log
    assert store.list() == [] and list(store.builds_dir.iterdir()) == []


def test_conflicting_pins_in_one_env(store):
    with pytest.raises(ProvisionError, match="packaging==21.3") as info:
        bayou.provision(Env(pip=["packaging==21.3", "packaging==24.1"]))
    assert "unsatisfiable" in str(info.value)
    assert store.list() == []


def test_python_that_no_interpreter_matches_lists_what_was_found(store):
    with pytest.raises(ProvisionError) as info:
        bayou.provision(Env(python="3.4", pip=["six"]))
    message = str(info.value)
    assert "no Python 3.4 interpreter" in message
    assert f"{sys.version_info.major}.{sys.version_info.minor}." in message


def test_timeout_leaves_store_as_it_was(store):
    # An index that accepts the connection and never answers keeps uv busy.
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    env = Env(
        pip=["bayou-never-answered==1.0"],
        pip_options=[f"--index-url http://127.0.0.1:{port}/simple"],
    )
    started = time.monotonic()
    with pytest.raises(bayou.ProvisionTimeout):
        bayou.provision(env, timeout=2)
    assert time.monotonic() - started < 10
    server.close()
    assert store.list() == [] and list(store.builds_dir.iterdir()) == []


CHILD = textwrap.dedent(
    """
    import json, sys, bayou
    built = []
    env = bayou.provision(bayou.Env(pip=sys.argv[1:]), progress=lambda e: built.append(e.stage))
    print(json.dumps({"prefix": str(env.prefix), "built": "done" in built}))
    """
)


def test_four_processes_build_one_env_once(store_root, store):
    reqs = ["attrs==23.2.0", "six==1.16.0"]
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, *reqs], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    answers = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert len({a["prefix"] for a in answers}) == 1
    assert sum(a["built"] for a in answers) == 1
    assert len(store.list()) == 1


def test_sigkill_during_build_leaves_nothing_usable(store_root, store):
    reqs = ["numpy", "attrs==23.2.0"]
    env = Env(pip=reqs)
    for _attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *reqs], stdout=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if store.builds_dir.is_dir() and any(store.builds_dir.iterdir()):
                break
            time.sleep(0.005)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.3)
        assert not _processes_mentioning(str(store_root))  # no tool left writing
        assert store.lookup(env.hash) is None
        assert not store.env_dir(env.hash).exists()
        assert store.list() == []
    # The next call cleans the debris and builds cleanly.
    built = bayou.provision(env)
    assert list(store.builds_dir.iterdir()) == []
    assert in_env(built, "import numpy, attrs; print(attrs.__version__)") == "23.2.0"


def _processes_mentioning(text: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_ctrl_c_kills_the_build_and_leaves_the_store_as_it_was(store_root, store):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    index = f"--index-url http://127.0.0.1:{server.getsockname()[1]}/simple"
    code = textwrap.dedent(
        f"""
        import bayou
        try:
            bayou.provision(bayou.Env(pip=["bayou-never-answered"], pip_options=[{index!r}]))
        except KeyboardInterrupt:
            print("interrupted")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    server.settimeout(60)
    try:
        waiting, _ = server.accept()  # uv asks the index: the build is under way, stuck
    except TimeoutError:
        proc.kill()
        pytest.fail("the build never reached the package index")
    assert _processes_mentioning(str(store_root)), "no build process is running"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    waiting.close()
    server.close()
    assert "interrupted" in out
    time.sleep(0.2)
    assert not _processes_mentioning(str(store_root))
    assert store.list() == [] and list(store.builds_dir.iterdir()) == []


def test_gc_and_remove_leave_an_env_a_running_executor_uses(store, tmp_path):
    from bayou.executor import EnvExecutor

    env = Env(pip=["packaging==21.3"])
    built = bayou.provision(env)
    other = bayou.provision(Env(pip=["packaging==24.1"]))
    # an executor in another process holds the env while it lives
    code = textwrap.dedent(
        """
        import sys, time, bayou
        with bayou.EnvExecutor(1, env=bayou.Env(pip=["packaging==21.3"])) as ex:
            print(ex.submit(sum, [1, 2]).result(), flush=True)
            sys.stdin.readline()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "3"
        evicted = store.gc(max_age=0)
        assert [e.hash for e in evicted] == [other.hash]  # the one in use is kept
        with pytest.raises(bayou.EnvInUseError, match=built.hash):
            store.remove(built.hash)
        cli = [sys.executable, "-m", "bayou.cli", "env", "remove", built.hash]
        refused = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "in use by a running executor" in refused.stderr
        assert store.lookup(built.hash) is not None
        # in this process too, for as long as the executor runs
        with EnvExecutor(1, env=env) as ex:
            assert ex.submit(sum, [2, 3]).result(60) == 5
            with pytest.raises(bayou.EnvInUseError):
                store.remove(built.hash)
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    assert store.remove(built.hash)  # nobody uses it any more
    assert store.lookup(built.hash) is None


def test_force_removes_an_env_in_use(store):
    from bayou.executor import EnvExecutor

    env = Env(pip=["packaging==21.3"])
    with EnvExecutor(1, env=env) as ex:
        ex.submit(sum, [1]).result(60)
        assert store.remove(env.hash, force=True)
