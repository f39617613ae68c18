"""Shared stores ($BAYOU_STORE_PATH): envs an admin built, served read-only, never written.

The slow tests build a pip env (PyPI) and a conda env (the local channel) into
a store, then make that store a real read-only bind mount at the path it was
built at (the store's directory is renamed aside and bind-mounted back,
``remount,bind,ro``), as a site would export it. A user whose own store
(`$BAYOU_HOME`) is empty then provisions, runs, and executes in those envs;
a recursive listing of the mounted tree (names, sizes, mtimes, modes) before
and after proves nothing was written there, and the user's store proves
nothing was built. The fast tests cover the store's refusals without a mount.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bayou
from bayou import Env, EnvExecutor
from bayou.store import SharedStoreError, Store
from tests.conftest import CALLER_XY
from tests.env_tasks import six_version

PIP_ENV = Env(pip=["six==1.16.0"])
BAYOU = [sys.executable, "-m", "bayou.cli"]


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under `root`: (size, mtime_ns, mode), directories included."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return found


class SharedStore:
    """The read-only mount (`mount`, the path the envs were built at) of `source`."""

    def __init__(self, mount: Path, source: Path, conda_env: Env) -> None:
        self.mount = mount
        self.source = source
        self.conda_env = conda_env
        self.before = snapshot(source)

    def assert_untouched(self) -> None:
        assert snapshot(self.source) == self.before


def _mount_read_only(source: Path, mount: Path) -> str | None:
    """Bind-mount `source` read-only at `mount`; the reason when not permitted."""
    done = subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True)
    if done.returncode != 0:
        return f"mount --bind is not permitted here: {done.stderr.decode().strip()}"
    ro = subprocess.run(
        ["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True, text=True
    )
    if ro.returncode != 0:
        subprocess.run(["umount", str(mount)], check=False)
        return f"remount,bind,ro is not permitted here: {ro.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory, shared_pkgs, conda_channel):
    base = tmp_path_factory.mktemp("site")
    mount = base / "bayou-site"
    conda_env = Env(conda=[f"python={CALLER_XY}", "bayou-demo-lib=1.0"], channels=[conda_channel])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAYOU_PKGS_DIR", str(shared_pkgs))
        mp.delenv("BAYOU_STORE_PATH", raising=False)
        mp.delenv("BAYOU_OFFLINE", raising=False)
        for env in (PIP_ENV, conda_env):  # the admin's builds
            bayou.provision(env, store=mount)
    source = base / "bayou-site.src"
    os.rename(mount, source)
    mount.mkdir()
    reason = _mount_read_only(source, mount)
    if reason is not None:
        os.rmdir(mount)
        os.rename(source, mount)
        pytest.skip(reason)
    try:
        probe = mount / "probe"
        with pytest.raises(OSError) as info:
            probe.touch()
        assert info.value.errno == errno.EROFS
        yield SharedStore(mount, source, conda_env)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def user(shared_store, tmp_path, shared_pkgs, monkeypatch) -> Path:
    """An empty primary store, and the read-only one on $BAYOU_STORE_PATH."""
    home = tmp_path / "home-store"
    monkeypatch.setenv("BAYOU_HOME", str(home))
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(shared_pkgs))
    monkeypatch.setenv(
        "BAYOU_STORE_PATH", os.pathsep.join([str(tmp_path / "absent"), str(shared_store.mount)])
    )
    monkeypatch.delenv("BAYOU_OFFLINE", raising=False)
    return home


def built_in(home: Path) -> list[str]:
    envs = home / "envs"
    return sorted(p.name for p in envs.iterdir()) if envs.is_dir() else []


@pytest.mark.slow
def test_provision_and_run_use_the_read_only_store_and_write_nothing(shared_store, user):
    for env in (PIP_ENV, shared_store.conda_env):
        found = bayou.provision(env)
        assert found.prefix == shared_store.mount / "envs" / env.hash
    ran = bayou.run(
        PIP_ENV, ["python", "-c", "import six, sys; print(six.__version__, sys.prefix)"]
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["1.16.0", str(shared_store.mount / "envs" / PIP_ENV.hash)]
    code = "import bayou_demo_lib, sys; print(bayou_demo_lib.__version__, sys.prefix)"
    ran = bayou.run(shared_store.conda_env, ["python", "-c", code])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[0] == "1.0"
    assert ran.stdout.split()[1] == str(shared_store.mount / "envs" / shared_store.conda_env.hash)
    assert built_in(user) == []
    shared_store.assert_untouched()


@pytest.mark.slow
def test_executors_run_in_shared_envs_holding_them_read_only(shared_store, user):
    lock_file = shared_store.source / "locks" / f"{PIP_ENV.hash}.use"
    with EnvExecutor(1, env=PIP_ENV) as ex:
        assert ex.submit(six_version).result(120) == "1.16.0"
        assert str(ex.environment.prefix).startswith(str(shared_store.mount))
        # the executor's use-hold is a shared flock on the lock file the admin's
        # build left: an admin's removal (an exclusive flock) would see it
        fd = os.open(lock_file, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the executor
    finally:
        os.close(fd)
    with EnvExecutor(1, env=shared_store.conda_env) as ex:
        exe = ex.submit(os.path.realpath, "/proc/self/exe").result(120)
        assert exe.startswith(str(shared_store.mount / "envs" / shared_store.conda_env.hash))
    assert built_in(user) == []
    shared_store.assert_untouched()


@pytest.mark.slow
def test_a_spec_the_shared_store_lacks_is_built_in_the_primary_store(shared_store, user):
    env = Env(pip=["six==1.15.0"])
    built = bayou.provision(env)
    assert built.prefix == user / "envs" / env.hash
    assert built_in(user) == [env.hash]
    assert bayou.provision(PIP_ENV).prefix.is_relative_to(shared_store.mount)
    shared_store.assert_untouched()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BAYOU, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_shows_the_store_of_each_env_and_never_changes_the_shared_one(shared_store, user):
    own = Env(pip=["six==1.15.0"])
    bayou.provision(own)
    rows = {r["hash"]: r for r in json.loads(cli("env", "list", "--json").stdout)}
    assert rows[own.hash]["store"] == str(user) and rows[own.hash]["shared"] is False
    for env in (PIP_ENV, shared_store.conda_env):
        assert rows[env.hash]["store"] == str(shared_store.mount)
        assert rows[env.hash]["shared"] is True
    listing = cli("env", "list").stdout
    assert "STORE" in listing and f"shared: {shared_store.mount}" in listing

    doctor = cli("doctor")
    assert doctor.returncode == 0, doctor.stderr
    assert f"{shared_store.mount} (read-only): 2 environment(s)" in doctor.stdout
    assert "MISSING" in doctor.stdout  # the absent first entry of $BAYOU_STORE_PATH

    shown = cli("env", "show", PIP_ENV.hash[:10])
    assert shown.returncode == 0 and json.loads(shown.stdout)["hash"] == PIP_ENV.hash
    ran = cli("run", PIP_ENV.hash[:10], "--", "python", "-c", "import six; print(six.__version__)")
    assert ran.returncode == 0 and ran.stdout.strip() == "1.16.0"

    removed = cli("env", "remove", PIP_ENV.hash[:10])
    assert removed.returncode == 1
    assert "lives in the shared store" in removed.stderr
    assert str(shared_store.mount) in removed.stderr
    collected = cli("env", "gc", "--max-age", "0s")
    assert collected.returncode == 0, collected.stderr
    assert f"removed {own.hash}" in collected.stdout
    assert PIP_ENV.hash not in collected.stdout
    assert bayou.provision(PIP_ENV).prefix.is_relative_to(shared_store.mount)
    shared_store.assert_untouched()


# -- without a mount --------------------------------------------------------------------


def publish_fake(store: Store, env_hash: str, prefix: Path | None = None) -> None:
    """Publish a directory the way a build does (no tool needed)."""
    with store.lock(env_hash):
        build = store.new_build_dir(env_hash)
        record = {"hash": env_hash, "size": 1, "spec": {}}
        record["prefix"] = str(prefix or store.env_dir(env_hash))
        store.publish(build, env_hash, record)


def test_a_shared_store_refuses_every_change(tmp_path, monkeypatch):
    site = Store(tmp_path / "site")
    publish_fake(site, "abc")
    before = snapshot(site.root)
    monkeypatch.setenv("BAYOU_STORE_PATH", str(site.root))
    home = Store(tmp_path / "home")
    found_store, record = home.find("abc")
    assert found_store.shared and found_store.root == site.root and record["hash"] == "abc"
    shared = Store(site.root, shared=True)
    for change in (
        lambda: shared.remove("abc"),
        lambda: shared.gc(max_age=0),
        lambda: shared.lock("abc").__enter__(),
        lambda: shared.new_build_dir("new"),
    ):
        with pytest.raises(SharedStoreError, match="shared store .* never writes there"):
            change()
    shared.touch("abc")
    shared.add_name("abc", "a-name")
    shared.hold("abc").release()
    assert Store.containing(site.env_dir("abc")).shared
    assert snapshot(site.root) == before
    with pytest.raises(KeyError):
        home.resolve("abc")  # the primary store's own envs only


def test_removing_an_env_only_a_shared_store_has_is_refused_naming_the_store(
    tmp_path, monkeypatch
):
    site = Store(tmp_path / "site")
    publish_fake(site, "abcdef")
    monkeypatch.setenv("BAYOU_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BAYOU_STORE_PATH", str(site.root))
    removed = cli("env", "remove", "abcd")
    assert removed.returncode == 1
    assert f"environment abcdef lives in the shared store {site.root}" in removed.stderr
    assert site.lookup("abcdef") is not None
    with pytest.raises(SharedStoreError, match="cannot collect garbage"):
        Store(site.root, shared=True).gc(max_age=0)


def test_a_shared_env_not_at_the_path_it_was_built_at_is_not_used(tmp_path, monkeypatch):
    site = Store(tmp_path / "site")
    publish_fake(site, "moved", prefix=tmp_path / "elsewhere" / "envs" / "moved")
    publish_fake(site, "here")
    monkeypatch.setenv("BAYOU_STORE_PATH", str(site.root))
    home = Store(tmp_path / "home")
    assert home.find("moved") is None  # its files name another prefix: built anew
    assert home.find("here") is not None
    assert [e.hash for e in Store(site.root, shared=True).list()] == ["here"]
    monkeypatch.setenv("BAYOU_HOME", str(home.root))
    doctor = cli("doctor")
    assert "1 env(s) not used: built at another path" in doctor.stdout
