"""Offline builds (`BAYOU_OFFLINE=1`, `provision(offline=True)`, `env create --offline`).

The package index stays reachable throughout, so a test can tell "did not
try" from "could not reach": uv runs with its proxy variables pointing at a
recording CONNECT proxy that really tunnels to PyPI (an online control build
shows the proxy sees uv's traffic); a remote conda channel is a local HTTP
server that records every request; tool downloads go to a recording mirror.
Offline, every one of them must record nothing, and what is missing from the
caches is named at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bayou
from bayou import Env, ProvisionError
from bayou.provision import download
from tests.conftest import CALLER_XY

BAYOU = [sys.executable, "-m", "bayou.cli"]


@pytest.fixture(autouse=True)
def _online_by_default(monkeypatch):
    for name in ("BAYOU_OFFLINE", "BAYOU_STORE_PATH", "BAYOU_BACKEND", "BAYOU_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(name, raising=False)


def fresh_store(tmp_path: Path, name: str, monkeypatch) -> Path:
    root = tmp_path / name
    monkeypatch.setenv("BAYOU_HOME", str(root))
    return root


# -- pip: uv's cache only -------------------------------------------------------------


@pytest.fixture(scope="module")
def uv_cached(tmp_path_factory) -> Path:
    """A package cache (BAYOU_PKGS_DIR) holding six 1.16.0, filled by one online build."""
    pkgs = tmp_path_factory.mktemp("offline-pkgs")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BAYOU_OFFLINE", raising=False)
        mp.setenv("BAYOU_PKGS_DIR", str(pkgs))
        bayou.provision(Env(pip=["six==1.16.0"]), store=tmp_path_factory.mktemp("online"))
    return pkgs


@pytest.mark.slow
def test_offline_pip_env_builds_from_the_uv_cache_without_network(
    uv_cached, proxy, tmp_path, monkeypatch
):
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(uv_cached))
    monkeypatch.setenv("BAYOU_OFFLINE", "1")
    home = fresh_store(tmp_path, "fresh", monkeypatch)
    env = Env(pip=["six==1.16.0"])
    built = bayou.provision(env)
    assert built.prefix == home / "envs" / env.hash
    assert built.record["pip_packages"] == [{"name": "six", "version": "1.16.0"}]
    ran = bayou.run(env, ["python", "-c", "import six; print(six.__version__)"])
    assert ran.stdout.strip() == "1.16.0"
    assert proxy.seen == []


@pytest.mark.slow
def test_offline_pip_package_not_in_the_cache_fails_at_once_naming_it(
    uv_cached, proxy, tmp_path, monkeypatch
):
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(uv_cached))
    home = fresh_store(tmp_path, "fresh", monkeypatch)
    env = Env(pip=["six==1.15.0"])
    started = time.monotonic()
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env, offline=True)
    took = time.monotonic() - started
    print(f"offline failure after {took:.2f} s")
    error = info.value
    assert error.package == "six==1.15.0"
    message = str(error)
    assert "offline ($BAYOU_OFFLINE): six==1.15.0 is not in the uv cache" in message
    assert str(uv_cached / "uv") in message and "the package index was not contacted" in message
    assert proxy.seen == []  # not even an attempt
    assert not any("1.15.0" in p.name for p in (uv_cached / "uv").rglob("*"))
    assert not (home / "envs").exists() or list((home / "envs").iterdir()) == []

    # the control: online, the same build goes through the proxy (which reaches PyPI)
    assert bayou.provision(env, offline=False).record["pip_packages"][0]["version"] == "1.15.0"
    assert proxy.seen and all(host.endswith(":443") for host in proxy.seen)


@pytest.mark.slow
def test_env_create_offline_names_what_the_cache_lacks(uv_cached, proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(uv_cached))
    fresh_store(tmp_path, "fresh", monkeypatch)
    argv = [*BAYOU, "env", "create", "--offline", "--pip", "six==1.14.0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "offline ($BAYOU_OFFLINE): six==1.14.0 is not in the uv cache" in done.stderr
    argv[-1] = "six==1.16.0"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert proxy.seen == []


def test_bayou_offline_must_say_yes_or_no(monkeypatch, tmp_path):
    fresh_store(tmp_path, "store", monkeypatch)
    monkeypatch.setenv("BAYOU_OFFLINE", "ture")
    with pytest.raises(ValueError, match=r"\$BAYOU_OFFLINE='ture': expected 1/true/yes/on"):
        bayou.provision(Env(pip=["six==1.16.0"]))
    argv = [*BAYOU, "env", "create", "--pip", "six==1.16.0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "$BAYOU_OFFLINE='ture'" in done.stderr


# -- conda: the package cache only ------------------------------------------------------


class CondaCache:
    def __init__(self, pkgs: Path, channel: Path, env: Env, online: bayou.Environment) -> None:
        self.pkgs = pkgs
        self.channel = channel  # renamed away: it no longer exists
        self.env = env
        self.online = online


@pytest.fixture(scope="module")
def conda_cached(tmp_path_factory, conda_channel) -> CondaCache:
    """A package cache filled by one online build from a copy of the local channel,
    whose directory is then renamed away: only the package cache can serve."""
    from urllib.parse import urlparse

    base = tmp_path_factory.mktemp("offline-conda")
    channel = base / "channel"
    shutil.copytree(urlparse(conda_channel).path, channel)
    pkgs = base / "pkgs"
    env = Env(conda=[f"python={CALLER_XY}", "bayou-demo-lib=1.0"], channels=[channel.as_uri()])
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BAYOU_OFFLINE", raising=False)
        mp.setenv("BAYOU_PKGS_DIR", str(pkgs))
        online = bayou.provision(env, store=base / "online-store")
    os.rename(channel, base / "channel-gone")
    return CondaCache(pkgs, channel, env, online)


@pytest.mark.slow
def test_offline_conda_env_builds_from_the_package_cache_with_the_channel_gone(
    conda_cached, tmp_path, monkeypatch
):
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(conda_cached.pkgs))
    monkeypatch.setenv("BAYOU_OFFLINE", "1")
    home = fresh_store(tmp_path, "fresh", monkeypatch)
    assert not conda_cached.channel.exists()
    built = bayou.provision(conda_cached.env)
    assert built.prefix == home / "envs" / conda_cached.env.hash
    # the same packages, from the same channel URLs, as the online build
    assert built.record["conda_packages"] == conda_cached.online.record["conda_packages"]
    code = "import bayou_demo_lib, sys; print(bayou_demo_lib.__version__, sys.version_info[:2])"
    ran = bayou.run(conda_cached.env, ["python", "-c", code])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[0] == "1.0"


@pytest.mark.slow
def test_offline_conda_package_not_in_the_cache_fails_at_once_naming_it(
    conda_cached, tmp_path, monkeypatch
):
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(conda_cached.pkgs))
    home = fresh_store(tmp_path, "fresh", monkeypatch)
    env = conda_cached.env.replace(conda=[f"python={CALLER_XY}", "bayou-demo-lib=2.0"])
    started = time.monotonic()
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env, offline=True)
    print(f"offline failure after {time.monotonic() - started:.2f} s")
    assert info.value.package == "bayou-demo-lib=2.0"
    message = str(info.value)
    assert "offline ($BAYOU_OFFLINE): 'bayou-demo-lib=2.0' is not in the package cache" in message
    assert str(conda_cached.pkgs / "conda") in message
    assert "No candidates were found for bayou-demo-lib" in message
    assert not (home / "envs").exists() or list((home / "envs").iterdir()) == []


def test_offline_never_contacts_a_remote_channel(recording_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(tmp_path / "pkgs"))
    fresh_store(tmp_path, "store", monkeypatch)
    env = Env(conda=["bayou-demo-lib"], channels=[recording_server.url + "/channel"])
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env, offline=True)
    print(info.value)
    assert info.value.package == "bayou-demo-lib"
    assert "no remote channel was contacted" in str(info.value)
    assert recording_server.seen == []
    # the control: online, the same spec asks the server for repodata
    with pytest.raises(ProvisionError):
        bayou.provision(env)
    assert any("repodata" in path for path in recording_server.seen)


@pytest.mark.slow
def test_offline_reads_a_local_channel_that_exists(conda_channel, tmp_path, monkeypatch):
    """A file:// channel is a disk, not the network: offline reads it (as conda does)."""
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(tmp_path / "empty-pkgs"))
    fresh_store(tmp_path, "store", monkeypatch)
    env = Env(conda=[f"python={CALLER_XY}", "bayou-demo-lib=2.0"], channels=[conda_channel])
    built = bayou.provision(env, offline=True)
    versions = {p["name"]: p["version"] for p in built.record["conda_packages"]}
    assert versions["bayou-demo-lib"] == "2.0"


# -- external tools: no downloads, their own offline flags ----------------------------------


def test_offline_never_downloads_a_missing_tool(recording_server, tmp_path, monkeypatch):
    fresh_store(tmp_path, "store", monkeypatch)
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty-bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("BAYOU_TOOLS_MIRROR", recording_server.url)
    monkeypatch.delenv("BAYOU_MICROMAMBA", raising=False)
    if shutil.which("micromamba"):
        pytest.fail("a micromamba on /usr/bin or /bin: this test needs it absent")
    env = Env(conda=["python"], channels=[recording_server.url + "/c"], backend="micromamba")
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env, offline=True, allow_download=True)
    assert info.value.package == "micromamba"
    assert "offline ($BAYOU_OFFLINE), bayou does not download it" in str(info.value)
    monkeypatch.setenv("BAYOU_OFFLINE", "1")
    with pytest.raises(download.ToolDownloadError, match="offline .*not downloading pixi"):
        download.fetch_tool("pixi", bayou.Store())
    assert recording_server.seen == []


def test_offline_passes_offline_to_micromamba_and_refuses_pixi(tmp_path, monkeypatch):
    from tests.test_external_backends import FAKE_TOOLS, fake_tool_text

    fresh_store(tmp_path, "store", monkeypatch)
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(tmp_path / "pkgs"))
    log = tmp_path / "calls.jsonl"
    tool = tmp_path / "bin" / "micromamba"
    tool.parent.mkdir()
    tool.write_text(fake_tool_text("micromamba"))
    tool.chmod(0o755)
    monkeypatch.setenv("BAYOU_FAKE_TOOLS_DIR", str(FAKE_TOOLS))
    monkeypatch.setenv("BAYOU_FAKE_TOOL_LOG", str(log))
    monkeypatch.setenv("BAYOU_MICROMAMBA", str(tool))
    monkeypatch.setenv("BAYOU_OFFLINE", "yes")
    env = Env(conda=["bayou-demo-lib=1.0"], channels=["https://conda.example.invalid/c"])
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env.replace(backend="micromamba"))
    assert str(info.value).startswith("offline ($BAYOU_OFFLINE; micromamba used only ")
    assert info.value.package == "bayou-demo-lib=1.0"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    create = [c["argv"] for c in calls if c["argv"] != ["--version"]]
    assert create and create[0][:2] == ["create", "--offline"]

    with pytest.raises(ProvisionError, match="the pixi backend cannot be told to stay off"):
        bayou.provision(env.replace(backend="pixi"))


def test_offline_install_names_a_package_the_cache_lacks_instead_of_downloading(tmp_path):
    """The guard before rattler's installer (which would try to download, and retry):
    a record neither cached nor in a local channel fails at once, named."""
    import rattler

    from bayou.provision import rattler_offline

    record = rattler.PackageRecord("zlibx", "1.0", rattler.BuildString("h0_0"), 0, "noarch")
    remote = rattler.RepoDataRecord(
        record,
        "zlibx-1.0-h0_0.conda",
        "https://example.com/noarch/zlibx-1.0-h0_0.conda",
        "https://example.com/",
    )
    missing = rattler_offline.uncached([remote], str(tmp_path / "conda"))
    assert missing is not None and missing["package"] == "zlibx==1.0=h0_0"
    assert "offline it is not downloaded from https://example.com/" in missing["message"]
    local = rattler.RepoDataRecord(
        record, "zlibx-1.0-h0_0.conda", "file:///c/zlibx.conda", "file:///c/"
    )
    assert rattler_offline.uncached([local], str(tmp_path / "conda")) is None
    (tmp_path / "conda" / "zlibx-1.0-h0_0" / "info").mkdir(parents=True)
    (tmp_path / "conda" / "zlibx-1.0-h0_0" / "info" / "index.json").write_text("{}")
    assert rattler_offline.uncached([remote], str(tmp_path / "conda")) is None


@pytest.mark.slow
def test_offline_locked_conda_env_names_an_uncached_package_at_once(
    conda_cached, tmp_path, monkeypatch
):
    """A lock whose packages live on a remote channel, none of them cached: offline, the
    first one is named before the installer would try (and retry) to download it."""
    text = (conda_cached.online.prefix / ".bayou" / "conda-lock.yml").read_text()
    remote = "http://127.0.0.1:9/channel"  # nothing listens there
    local = str(conda_cached.channel)  # the channel's URL, and its packages' paths
    assert local in text
    lock = tmp_path / "pixi.lock"
    lock.write_text(text.replace(conda_cached.channel.as_uri(), remote).replace(local, remote))
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(tmp_path / "empty-pkgs"))
    home = fresh_store(tmp_path, "fresh", monkeypatch)
    with pytest.raises(ProvisionError) as info:
        bayou.provision(Env.from_file(lock), offline=True)
    message = str(info.value)
    assert "is not in the package cache" in message
    assert f"offline it is not downloaded from {remote}/" in message
    assert info.value.package
    assert not (home / "envs").exists() or list((home / "envs").iterdir()) == []
