"""Conda environments provisioned for real with py-rattler from the local
test channel (see tests/support/conda_channel.py), with pip on top."""

from __future__ import annotations

import time

import pytest

import bayou
from bayou import Env, ProvisionError
from tests.conftest import CALLER_XY

pytestmark = pytest.mark.slow


def in_env(env, code: str) -> str:
    result = bayou.run(env, ["python", "-c", code])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_conda_env_with_pip_on_top(store, conda_channel):
    env = Env(
        conda=["bayou-demo-lib=1.0", "bayou-demo-tool"],
        pip=["six==1.16.0"],
        channels=[conda_channel],
        name="demo",
    )
    events = []
    built = bayou.provision(env, progress=events.append)
    stages = [e.stage for e in events]
    assert {"solve", "link", "pip", "publish", "done"} <= set(stages)
    assert built.python_version.startswith(CALLER_XY + ".")
    names = {p["name"]: p["version"] for p in built.record["conda_packages"]}
    assert names["bayou-demo-lib"] == "1.0" and "python" in names
    assert built.record["pip_packages"] == [{"name": "six", "version": "1.16.0"}]
    out = in_env(
        env,
        "import sys, bayou_demo_lib, six; print(sys.prefix, bayou_demo_lib.__version__, six.__version__)",
    )
    assert out == f"{built.prefix} 1.0 1.16.0"
    # Nothing in the env points at the directory it was built in.
    assert not list(store.builds_dir.iterdir())
    lock = (built.prefix / ".bayou" / "conda-lock.yml").read_text()
    assert "bayou-demo-lib" in lock and conda_channel.rstrip("/") in lock


def test_activation_from_env_vars_d_and_activate_d(store, conda_channel):
    env = Env(conda=["bayou-demo-tool"], channels=[conda_channel], env_vars={"MINE": "1"})
    built = bayou.provision(env)
    result = bayou.run(env, ["bayou-demo-tool"])  # found on the env's PATH, no shell
    assert result.returncode == 0, result.stderr
    assert "bayou-demo-tool ok" in result.stdout
    assert "BAYOU_DEMO_VAR=from-env-vars-d" in result.stdout
    assert f"BAYOU_DEMO_ACTIVATED=yes:{built.prefix}" in result.stdout
    environ = built.environ({"PATH": "/usr/bin:/bin", "HOME": "/root"})
    assert environ["CONDA_PREFIX"] == str(built.prefix) and environ["MINE"] == "1"
    assert environ["PATH"].split(":")[0] == str(built.prefix / "bin")


def test_cache_hit_is_far_cheaper_than_a_warm_build(store, conda_channel):
    env = Env(conda=["bayou-demo-lib=2.0"], channels=[conda_channel])
    first = bayou.provision(env)
    started = time.perf_counter()
    again = bayou.provision(env)
    hit = time.perf_counter() - started
    assert again.prefix == first.prefix
    assert hit < first.record["build_seconds"] / 10


def test_conflicting_conda_pins_coexist(store, conda_channel):
    one = Env(conda=["bayou-demo-lib=1.0"], channels=[conda_channel])
    two = Env(conda=["bayou-demo-lib=2.0"], channels=[conda_channel])
    code = "import bayou_demo_lib; print(bayou_demo_lib.__version__)"
    assert in_env(bayou.provision(one), code) == "1.0"
    assert in_env(bayou.provision(two), code) == "2.0"


def test_conda_python_39(store, conda_channel):
    env = bayou.provision(
        Env(python="3.9", conda=["bayou-demo-lib=1.0"], channels=[conda_channel])
    )
    assert env.python_version.startswith("3.9.")
    assert in_env(env, "import sys; print(sys.version_info[:2])") == "(3, 9)"


def test_missing_conda_package_names_it_and_the_channels(store, conda_channel):
    env = Env(conda=["bayou-demo-lib", "no-such-conda-pkg>=1"], channels=[conda_channel])
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env)
    assert info.value.package == "no-such-conda-pkg>=1"
    assert conda_channel.rstrip("/") in str(info.value)
    assert info.value.channels == (conda_channel.rstrip("/"),)
    assert store.list() == [] and not list(store.builds_dir.iterdir())


def test_unsolvable_conda_pins(store, conda_channel):
    env = Env(conda=["bayou-demo-lib=3.0"], channels=[conda_channel])
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env)
    assert info.value.package == "bayou-demo-lib=3.0"
    assert store.list() == []


def test_environment_yml_end_to_end(store, conda_channel, tmp_path):
    path = tmp_path / "environment.yml"
    path.write_text(
        f"name: fromfile\nchannels:\n  - {conda_channel}\n"
        f"dependencies:\n  - python={CALLER_XY}\n  - bayou-demo-lib=2.0\n  - pip\n"
        "  - pip:\n    - six==1.16.0\nvariables:\n  FROM_YML: 'yes'\n"
    )
    env = Env.from_file(path)
    out = in_env(
        env,
        "import os, bayou_demo_lib, six; print(bayou_demo_lib.__version__, os.environ['FROM_YML'])",
    )
    assert out == "2.0 yes"


def test_timeout_kills_the_solver_child(store, conda_channel, monkeypatch):
    # A channel served by a socket that never answers keeps the solver waiting.
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/never"
    env = Env(conda=["bayou-demo-lib"], channels=[url])
    started = time.monotonic()
    with pytest.raises(bayou.ProvisionTimeout):
        bayou.provision(env, timeout=2)
    assert time.monotonic() - started < 10
    server.close()
    assert store.list() == [] and not list(store.builds_dir.iterdir())


def test_channel_names_resolve_against_the_channel_alias(
    store, conda_channel, tmp_path, monkeypatch
):
    from pathlib import Path
    from urllib.parse import urlparse

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "conda-forge").symlink_to(Path(urlparse(conda_channel).path))
    env = Env(conda=["bayou-demo-lib=2.0"], channels=["conda-forge"])
    plain_hash = env.hash
    monkeypatch.setenv("BAYOU_CHANNEL_ALIAS", mirror.as_uri())
    built = bayou.provision(env)
    assert env.hash == plain_hash  # a mirror serves the same channel: same identity
    lib = next(p for p in built.record["conda_packages"] if p["name"] == "bayou-demo-lib")
    assert lib["version"] == "2.0"
    assert lib["channel"].startswith(mirror.as_uri())
    # a package the mirror doesn't have names the alias in the error
    monkeypatch.setenv("BAYOU_CHANNEL_ALIAS", (tmp_path / "empty").as_uri())
    (tmp_path / "empty" / "conda-forge" / "noarch").mkdir(parents=True)
    with pytest.raises(ProvisionError, match="BAYOU_CHANNEL_ALIAS"):
        bayou.provision(Env(conda=["bayou-demo-lib=1.0"], channels=["conda-forge"]))
