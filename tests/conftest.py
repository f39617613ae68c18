"""Shared fixtures: a private store per test, shared package caches, and the
local conda channel (built once per machine, see tests/support/conda_channel.py)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Envs the tests build from PyPI resolve as of the moment constraints/test.txt was
# frozen, so their unpinned dependencies are the same every day (.ci/run-latest sets
# it to false: the newest releases).
_FROZEN = re.search(r"^# frozen: (\S+)$", (REPO / "constraints" / "test.txt").read_text(), re.M)
if _FROZEN is not None:
    os.environ.setdefault("UV_EXCLUDE_NEWER", _FROZEN.group(1))


def cache_root() -> Path:
    root = Path(os.environ.get("BAYOU_TEST_CACHE") or Path.home() / ".cache" / "bayou-tests")
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def shared_pkgs() -> Path:
    """One uv/conda package cache for the session: real downloads happen once."""
    path = cache_root() / "pkgs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def store_root(tmp_path_factory, shared_pkgs, monkeypatch) -> Path:
    root = tmp_path_factory.mktemp("store")
    monkeypatch.setenv("BAYOU_HOME", str(root))
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(shared_pkgs))
    return root


@pytest.fixture
def store(store_root):
    import bayou

    return bayou.Store(store_root)


CALLER_XY = f"{sys.version_info.major}.{sys.version_info.minor}"
CONDA_PYTHONS = tuple(dict.fromkeys((CALLER_XY, "3.9")))


@pytest.fixture(scope="session")
def conda_channel() -> str:
    """URL of the local conda channel: python (the caller's X.Y and 3.9),
    bayou-demo-lib 1.0 and 2.0, bayou-demo-tool (activation scripts)."""
    from tests.support.conda_channel import build_channel

    return build_channel(CONDA_PYTHONS).as_uri()


def require_interpreter(version: str):
    """A discovered interpreter; its absence is a failure here, not a skip."""
    from bayou import interpreters

    found = interpreters.find(version)
    if found is None:
        versions = [i.version_text for i in interpreters.discover()]
        pytest.fail(f"no python {version} found on this machine (found {versions})")
    return found


# The envs that tests/test_boundary_*.py cross into: (Python X.Y, numpy pin) by name.
_NEWER = "3.13" if CALLER_XY == "3.12" else "3.12"
BOUNDARY_ENVS = {
    "py3.9-numpy1.23": ("3.9", "numpy==1.23.5"),  # another Python, old numpy
    f"py{CALLER_XY}-numpy1.26": (CALLER_XY, "numpy==1.26.4"),  # the caller's, old numpy
    f"py{_NEWER}-numpy2": (_NEWER, "numpy==2.2.6"),  # another Python, new numpy
}


@pytest.fixture(scope="session")
def boundary_envs(tmp_path_factory, shared_pkgs):
    """The BOUNDARY_ENVS as `Env.existing` (what every API takes), built once per
    session from PyPI in a store of their own."""
    import bayou

    store = tmp_path_factory.mktemp("boundary-store")
    built = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAYOU_PKGS_DIR", str(shared_pkgs))
        for name, (python, numpy) in BOUNDARY_ENVS.items():
            require_interpreter(python)
            env = bayou.provision(bayou.Env(python=python, pip=[numpy]), store=store)
            built[name] = bayou.Env.existing(env.prefix)
    return built


@pytest.fixture
def proxy(monkeypatch):
    """Every HTTP(S) connection uv or requests makes goes through this recording tunnel
    (`.seen`: the hosts), which relays it to the real network."""
    from tests.support.network import PROXY_VARS, Recorder, TunnelHandler

    server = Recorder(TunnelHandler)
    for name in PROXY_VARS:
        monkeypatch.setenv(name, server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    yield server
    server.stop()


@pytest.fixture
def recording_server():
    """An HTTP server that records each path asked for and answers 404."""
    from tests.support.network import NotFoundHandler, Recorder

    server = Recorder(NotFoundHandler)
    yield server
    server.stop()


@pytest.fixture
def pools(store_root):
    """The test's store; every persistent pool still running at the end is stopped."""
    from bayou.persistent import registry
    from bayou.store import Store

    store = Store(store_root)
    yield store
    for entry in registry.entries(store):
        registry.kill_host(entry, timeout=5.0)
