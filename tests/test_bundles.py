"""Bundles: `bayou.pack` / `bayou env pack` and `bayou.unpack` / `bayou env unpack`.

Real envs throughout: a conda env from a copy of the local test channel (with
a pip package from PyPI) and a pip-only env, each built and packed in one
store, then unpacked into another store at another path with its own,
empty, package caches, offline: the channel copy renamed away, uv's proxy
variables pointing at a recording tunnel that does reach PyPI (so "nothing
was fetched" is observed, not assumed: see tests/test_offline.py) and uv's
index set to a closed port. The unpacked env must be the same env (same hash,
records and spec; `provision(spec)` then builds nothing), relocated for its
new prefix (no file names the packing store), and must run.

Damaged bundles are made from good ones: cut short, a byte flipped, a
member dropped, a manifest edited to another platform. Each must fail with a
`BundleError` that says what is wrong, and the target store must be left
exactly as it was.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

import bayou
from bayou import BundleError, Env, interpreters
from tests.conftest import CALLER_XY, require_interpreter
from tests.env_tasks import six_version
from tests.support.network import PROXY_VARS
from tests.test_external_backends import fake_tools  # noqa: F401 (a fixture)

BAYOU = [sys.executable, "-m", "bayou.cli"]
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"  # the discard port: nothing listens


@dataclass
class Packed:
    env: Env
    bundle: Path
    origin: bayou.Environment  # the env where it was packed
    origin_root: Path  # the packing store
    origin_pkgs: Path  # the packing machine's package caches
    channel: Path | None = None  # renamed away once packed
    times: dict[str, float] = field(default_factory=dict)


@pytest.fixture(autouse=True)
def _online_own_store(monkeypatch):
    for name in ("BAYOU_OFFLINE", "BAYOU_STORE_PATH", "BAYOU_BACKEND", "UV_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, round(time.monotonic() - started, 2)


@pytest.fixture(scope="module")
def conda_packed(tmp_path_factory, conda_channel) -> Packed:
    """python + bayou-demo-lib from a channel copy, six from PyPI; built (cold, then
    warm into a second store for the comparison), packed, and the channel renamed away."""
    base = tmp_path_factory.mktemp("bundle-conda")
    channel = base / "channel"
    shutil.copytree(urlparse(conda_channel).path, channel)
    pkgs, origin_root = base / "origin-pkgs", base / "origin-store"
    env = Env(
        conda=[f"python={CALLER_XY}", "bayou-demo-lib=1.0"],
        pip=["six==1.16.0"],
        channels=[channel.as_uri()],
        name="bundled-conda",
    )
    with pytest.MonkeyPatch.context() as mp:
        for name in ("BAYOU_OFFLINE", "BAYOU_STORE_PATH", "UV_INDEX_URL"):
            mp.delenv(name, raising=False)
        mp.setenv("BAYOU_PKGS_DIR", str(pkgs))
        origin, cold = timed(bayou.provision, env, store=origin_root)
        _, warm = timed(bayou.provision, env, store=base / "warm-store")
        bundle, packing = timed(bayou.pack, env, base / "out" / "conda.tar.gz", store=origin_root)
    os.rename(channel, base / "channel-gone")
    times = {"build_cold": cold, "build_warm": warm, "pack": packing}
    return Packed(env, bundle, origin, origin_root, pkgs, channel, times)


@pytest.fixture(scope="module")
def pip_packed(tmp_path_factory, shared_pkgs) -> Packed:
    """A pip-only env, built and packed with the CLI."""
    base = tmp_path_factory.mktemp("bundle-pip")
    origin_root = base / "origin-store"
    env = Env(pip=["six==1.16.0", "packaging==24.1"], name="bundled-pip")
    environ = {k: v for k, v in os.environ.items() if k not in ("BAYOU_OFFLINE", "UV_INDEX_URL")}
    environ.update(BAYOU_HOME=str(origin_root), BAYOU_PKGS_DIR=str(shared_pkgs))
    create = [*BAYOU, "env", "create", "--pip", *env.pip, "--name", env.name]
    _, cold = timed(subprocess.run, create, env=environ, check=True, timeout=600)
    warm_env = {**environ, "BAYOU_HOME": str(base / "warm-store")}
    _, warm = timed(subprocess.run, create, env=warm_env, check=True, timeout=600)
    bundle = base / "out" / "pip.tar.gz"
    argv = [*BAYOU, "env", "pack", "bundled-pip", "-o", str(bundle)]
    done, packing = timed(
        subprocess.run, argv, env=environ, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert f"packed {env.hash} into {bundle}" in done.stdout and "2 wheel(s)" in done.stdout
    origin = bayou.provision(env, store=origin_root)
    times = {"build_cold": cold, "build_warm": warm, "pack": packing}
    return Packed(env, bundle, origin, origin_root, shared_pkgs, None, times)


def offline_node(monkeypatch, tmp_path: Path, name: str = "node") -> Path:
    """Another machine: its own store and empty package caches, offline, no index."""
    home = tmp_path / f"{name}-store"
    monkeypatch.setenv("BAYOU_HOME", str(home))
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(tmp_path / f"{name}-pkgs"))
    monkeypatch.setenv("BAYOU_OFFLINE", "1")
    monkeypatch.setenv("UV_INDEX_URL", UNREACHABLE_INDEX)
    return home


def files_naming(prefix: Path, text: str) -> list[str]:
    """Files of an env (its .bayou/ record aside) whose bytes contain `text`."""
    needle = text.encode()
    hits = []
    for path in prefix.rglob("*"):
        if ".bayou" in path.relative_to(prefix).parts or path.is_symlink() or not path.is_file():
            continue
        if needle in path.read_bytes():
            hits.append(str(path.relative_to(prefix)))
    return hits


def report(what: str, packed: Packed, unpack_seconds: float) -> None:
    size = packed.bundle.stat().st_size
    print(
        f"\n{what}: bundle {size / 1e6:.2f} MB; build cold {packed.times['build_cold']} s, "
        f"warm-cache build {packed.times['build_warm']} s, pack {packed.times['pack']} s, "
        f"unpack {unpack_seconds} s"
    )


# -- round trips ------------------------------------------------------------------------


@pytest.mark.slow
def test_conda_bundle_unpacks_offline_in_another_store_as_the_same_env(
    conda_packed, proxy, tmp_path, monkeypatch
):
    home = offline_node(monkeypatch, tmp_path)
    assert not conda_packed.channel.exists()
    unpacked, took = timed(bayou.unpack, conda_packed.bundle)
    report("conda env (python, bayou-demo-lib, six)", conda_packed, took)
    env = conda_packed.env
    assert unpacked.hash == env.hash and unpacked.prefix == home / "envs" / env.hash
    original = conda_packed.origin.record
    for key in ("spec", "conda_packages", "pip_packages", "python_version", "name"):
        assert unpacked.record[key] == original[key], key
    assert unpacked.record["bundle"]["source"] == str(conda_packed.bundle)

    events: list = []
    again = bayou.provision(env, progress=events.append)  # a cache hit: nothing is built
    assert again.prefix == unpacked.prefix and events == []
    code = "import bayou_demo_lib, six, sys; print(bayou_demo_lib.__version__, sys.prefix)"
    ran = bayou.run(env, ["python", "-c", code])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["1.0", str(unpacked.prefix)]
    with bayou.EnvExecutor(1, env=env) as ex:
        assert ex.submit(six_version).result(timeout=120) == "1.16.0"
    # relocated: nothing names the store or the package cache it was packed from
    assert files_naming(unpacked.prefix, str(conda_packed.origin_root)) == []
    assert files_naming(unpacked.prefix, str(conda_packed.origin_pkgs)) == []
    # the unpacked packages serve later offline solves on this node too (their origins
    # are noted next to its package cache), with the channel still gone
    conda_only = Env(conda=list(env.conda), channels=list(env.channels))
    solved = bayou.provision(conda_only)
    assert {p["name"] for p in solved.record["conda_packages"]} >= {"python", "bayou-demo-lib"}
    assert proxy.seen == []


@pytest.mark.slow
def test_pip_bundle_unpacks_offline_in_another_store_with_the_cli(
    pip_packed, proxy, tmp_path, monkeypatch
):
    home = offline_node(monkeypatch, tmp_path)
    argv = [*BAYOU, "env", "unpack", str(pip_packed.bundle)]
    done, took = timed(subprocess.run, argv, capture_output=True, text=True, timeout=600)
    report("pip-only env (six, packaging)", pip_packed, took)
    assert done.returncode == 0, done.stderr
    env = pip_packed.env
    prefix = home / "envs" / env.hash
    assert done.stdout.startswith(f"{env.hash}  {prefix}  (python ")
    events: list = []
    found = bayou.provision(env, progress=events.append)
    assert found.prefix == prefix and events == []
    assert found.record["pip_packages"] == pip_packed.origin.record["pip_packages"]
    code = "import six, packaging, sys; print(six.__version__, packaging.__version__, sys.prefix)"
    ran = bayou.run(env, ["python", "-c", code])
    assert ran.stdout.split() == ["1.16.0", "24.1", str(prefix)], ran.stderr
    assert files_naming(prefix, str(pip_packed.origin_root)) == []
    assert proxy.seen == []


@pytest.mark.slow
def test_unpack_reads_a_url_uses_a_built_env_and_refuses_another_env(
    pip_packed, tmp_path, monkeypatch
):
    offline_node(monkeypatch, tmp_path)
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(pip_packed.bundle.parent)
    )
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        got = bayou.unpack(f"{url}/{pip_packed.bundle.name}", env=pip_packed.env)
        assert got.hash == pip_packed.env.hash
        assert not list((tmp_path / "node-store" / "builds").iterdir())  # no download left
        with pytest.raises(BundleError, match=r"cannot read the bundle http://.*404"):
            bayou.unpack(f"{url}/nothing-here.tar.gz")
    finally:
        server.shutdown()
        server.server_close()
    # the store has it: the bundle is not even read
    assert bayou.unpack(tmp_path / "missing.tar.gz", env=pip_packed.env).prefix == got.prefix
    other = Env(pip=["six==1.15.0"])
    with pytest.raises(BundleError) as info:
        bayou.unpack(pip_packed.bundle, env=other)
    assert f"holds env {pip_packed.env.hash} (bundled-pip), not the env asked for" in str(
        info.value
    )


# -- what is refused ------------------------------------------------------------------


@pytest.mark.slow
def test_a_pip_bundle_needs_its_python_on_the_target_and_names_it(
    shared_pkgs, tmp_path, monkeypatch
):
    require_interpreter("3.9")
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(shared_pkgs))
    env = Env(python="3.9", pip=["six==1.16.0"])
    bayou.provision(env, store=tmp_path / "origin")
    bundle = bayou.pack(env, tmp_path / "py39.tar.gz", store=tmp_path / "origin")
    # the target machine has the caller's Python and /usr/bin's, no pyenv, no 3.9
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "no-uv-pythons"))
    for name in ("PYENV_ROOT", "BAYOU_PYTHONS"):
        monkeypatch.delenv(name, raising=False)
    if interpreters.find("3.9") is not None:
        pytest.fail(f"a Python 3.9 is still found: {interpreters.find('3.9')}")
    home = tmp_path / "node"
    with pytest.raises(BundleError) as info:
        bayou.unpack(bundle, store=home)
    message = str(info.value)
    print(message)
    assert info.value.package == "python=3.9"
    assert "holds a pip-only env, which runs on this machine's own Python 3.9" in message
    assert "no Python 3.9 was found here (found: " in message and CALLER_XY in message
    assert not home.exists()  # refused before anything was written


def rewrite(bundle: Path, out: Path, *, manifest=None, drop=None) -> Path:
    """A copy of `bundle` with its manifest edited and/or members dropped."""
    with tarfile.open(bundle, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            if drop is not None and drop(member.name):
                continue
            data = src.extractfile(member) if member.isfile() else None
            if member.name.endswith("/manifest.json") and manifest is not None:
                edited = json.loads(data.read())
                manifest(edited)
                blob = json.dumps(edited).encode()
                member.size = len(blob)
                data = io.BytesIO(blob)
            dst.addfile(member, data)
    return out


def store_state(home: Path, pkgs: Path) -> list[str]:
    """What a failed unpack must not change: envs (and their records), builds, the caches."""
    found = []
    for top in (home / "envs", home / "builds", pkgs):
        if top.exists():
            found += [str(p.relative_to(home.parent)) for p in sorted(top.rglob("*"))]
    return found


@pytest.fixture
def busy_node(pip_packed, tmp_path, monkeypatch) -> Path:
    """A target store that already has an env (unpacked from the pip bundle)."""
    home = offline_node(monkeypatch, tmp_path)
    bayou.unpack(pip_packed.bundle)
    return home


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    return bytes(damaged)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_half, r"is corrupted or truncated \(after \d+ of \d+ files\)"),
        (lambda d: d[:-700], r"is corrupted or truncated \(after \d+ of \d+ files\)"),
        (_flip, r"is damaged: conda/python-.* does not match its sha256|is corrupted or trunc"),
        (lambda d: b"not a bundle" * 100, "is not a readable bundle"),
    ],
    ids=["cut-in-half", "cut-at-the-end", "a-byte-flipped", "not-a-bundle"],
)
def test_a_damaged_bundle_is_refused_and_the_store_is_unchanged(
    damage, expected, conda_packed, busy_node, tmp_path
):
    pkgs = tmp_path / "node-pkgs"
    before = store_state(busy_node, pkgs)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(damage(conda_packed.bundle.read_bytes()))
    with pytest.raises(BundleError, match=expected) as info:
        bayou.unpack(bad)
    print(info.value)
    assert info.value.bundle == str(bad)
    assert store_state(busy_node, pkgs) == before


@pytest.mark.slow
def test_a_bundle_for_another_platform_is_refused_before_anything_is_written(
    conda_packed, tmp_path
):
    other = "linux-aarch64" if bayou.env.conda_platform() != "linux-aarch64" else "linux-64"
    bad = rewrite(
        conda_packed.bundle, tmp_path / "other.tar.gz", manifest=lambda m: m.update(platform=other)
    )
    home = tmp_path / "node"
    with pytest.raises(BundleError) as info:
        bayou.unpack(bad, store=home)
    assert f"holds an env for {other}; this machine is {bayou.env.conda_platform()}" in str(
        info.value
    )
    assert not home.exists()


def _drop_demo_lib(manifest: dict) -> None:
    """The bundle as if packed without bayou-demo-lib (its lock still installs it)."""
    manifest["conda"] = [c for c in manifest["conda"] if "bayou-demo-lib" not in c["pin"]]
    manifest["files"] = {k: v for k, v in manifest["files"].items() if "bayou-demo-lib" not in k}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("manifest", "drop", "package", "expected"),
    [
        (None, "wheels/six-", "six==1.16.0", "lacks wheels/six-1.16.0-py2.py3-none-any.whl"),
        (None, "conda/bayou-demo-lib-", "bayou-demo-lib==1.0=", "the package bayou-demo-lib=="),
        (_drop_demo_lib, "conda/bayou-demo-lib-", "bayou-demo-lib==1.0=", "which its lock"),
    ],
    ids=["wheel-member-gone", "conda-tree-gone", "conda-package-never-packed"],
)
def test_a_bundle_missing_a_package_names_it_and_the_store_is_unchanged(
    manifest, drop, package, expected, conda_packed, busy_node, tmp_path
):
    pkgs = tmp_path / "node-pkgs"
    before = store_state(busy_node, pkgs)
    bad = rewrite(
        conda_packed.bundle,
        tmp_path / "missing.tar.gz",
        manifest=manifest,
        drop=lambda name: name.startswith(f"bayou-bundle/{drop}"),
    )
    with pytest.raises(BundleError) as info:
        bayou.unpack(bad)
    print(info.value)
    assert info.value.package.startswith(package)
    assert expected in str(info.value)
    assert store_state(busy_node, pkgs) == before


@pytest.mark.slow
def test_pack_refuses_a_damaged_or_lost_cache_entry_and_writes_nothing(
    conda_channel, tmp_path, monkeypatch
):
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(tmp_path / "pkgs"))
    env = Env(conda=[f"python={CALLER_XY}", "bayou-demo-lib=2.0"], channels=[conda_channel])
    bayou.provision(env, store=tmp_path / "store")
    (tree,) = [p for p in (tmp_path / "pkgs" / "conda").glob("bayou-demo-lib-2.0-*") if p.is_dir()]
    module = tree / "site-packages" / "bayou_demo_lib" / "__init__.py"
    module.write_text(module.read_text() + "# changed\n")
    out = tmp_path / "out"
    with pytest.raises(BundleError, match="the package cache's copy of bayou-demo-lib==2.0="):
        bayou.pack(env, out / "b.tar.gz", store=tmp_path / "store")
    shutil.rmtree(tree)
    with pytest.raises(BundleError) as info:
        bayou.pack(env, out / "b.tar.gz", store=tmp_path / "store")
    assert info.value.package.startswith("bayou-demo-lib==2.0=")
    assert "is not in the package cache (looked in " in str(info.value)
    assert list(out.iterdir()) == []  # no bundle, no partial file, no work directory


@pytest.mark.slow
def test_pack_refuses_a_pip_package_installed_from_an_sdist(shared_pkgs, tmp_path, monkeypatch):
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(shared_pkgs))
    env = Env(pip=["pyperclip==1.8.2"])  # released as an sdist only
    bayou.provision(env, store=tmp_path / "store")
    with pytest.raises(BundleError) as info:
        bayou.pack(env, tmp_path / "out" / "b.tar.gz", store=tmp_path / "store")
    assert info.value.package == "pyperclip==1.8.2"
    assert "was installed from a source distribution (pyperclip-1.8.2.tar.gz)" in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_pack_offline_refuses_to_download_the_wheels(pip_packed, proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("BAYOU_OFFLINE", "1")
    with pytest.raises(BundleError, match=r"offline \(\$BAYOU_OFFLINE\): \w+ has pip packages"):
        bayou.pack(pip_packed.env, tmp_path / "b.tar.gz", store=pip_packed.origin_root)
    assert proxy.seen == [] and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_pack_refuses_a_conda_env_another_tool_built(
    fake_tools,  # noqa: F811 (the fixture)
    conda_channel,
    tmp_path,
    monkeypatch,
):
    fake_tools.install("micromamba")  # builds for real, as micromamba would
    monkeypatch.setenv("BAYOU_PKGS_DIR", str(tmp_path / "pkgs"))
    env = Env(conda=["bayou-demo-lib=1.0"], channels=[conda_channel], backend="micromamba")
    bayou.provision(env, store=tmp_path / "store")
    with pytest.raises(BundleError, match="was built by micromamba, which leaves no lock"):
        bayou.pack(env, tmp_path / "out" / "b.tar.gz", store=tmp_path / "store")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_pack_of_an_unknown_env_exits_3(tmp_path):
    environ = {**os.environ, "BAYOU_HOME": str(tmp_path / "store")}
    argv = [*BAYOU, "env", "pack", "no-such-env", "-o", str(tmp_path / "x.tar.gz")]
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "no environment matches 'no-such-env'" in done.stderr
    argv = [*BAYOU, "env", "unpack", str(tmp_path / "x.tar.gz")]
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "cannot read the bundle" in done.stderr
