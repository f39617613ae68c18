"""The conda part built by micromamba, pixi or conda instead of py-rattler.

The real tools cannot be downloaded here, so the executables are the
stand-ins of tests/support/fake_tools/: they accept the real tools' command
lines, record them, and build the env for real (bayou's rattler child, the
local test channel) with the prefix placeholders pointing where the real tool
would point them. Downloads are tested against a local HTTP server laid out
like GitHub's release URLs.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

import bayou
from bayou import Env, ProvisionError, SpecError
from bayou.provision import download, external
from bayou.provision.relocate import replace_binary
from tests.conftest import CALLER_XY

FAKE_TOOLS = Path(__file__).resolve().parent / "support" / "fake_tools"
TOOLS = ("micromamba", "conda", "pixi")


def fake_tool_text(tool: str) -> str:
    """The stand-in script with this interpreter (it has rattler) in its shebang."""
    text = (FAKE_TOOLS / tool).read_text()
    assert text.startswith("#!")
    return f"#!{sys.executable}\n" + text.split("\n", 1)[1]


class FakeTools:
    def __init__(self, root: Path, log: Path) -> None:
        self.bin = root
        self.log = log

    def install(self, tool: str, where: Path | None = None) -> Path:
        where = where or self.bin
        where.mkdir(parents=True, exist_ok=True)
        path = where / tool
        path.write_text(fake_tool_text(tool))
        path.chmod(0o755)
        return path

    def calls(self, tool: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [e for e in entries if tool is None or e["tool"] == tool]

    def create_call(self, tool: str) -> dict:
        calls = [c for c in self.calls(tool) if c["argv"] != ["--version"]]
        assert len(calls) == 1, calls
        return calls[0]


@pytest.fixture
def fake_tools(tmp_path, monkeypatch) -> FakeTools:
    """No real tool on PATH; the stand-ins' directory (empty until `install`) first."""
    tools = FakeTools(tmp_path / "fake-bin", tmp_path / "fake-tool-calls.jsonl")
    tools.bin.mkdir()
    monkeypatch.setenv("BAYOU_FAKE_TOOLS_DIR", str(FAKE_TOOLS))
    monkeypatch.setenv("BAYOU_FAKE_TOOL_LOG", str(tools.log))
    monkeypatch.setenv("PATH", f"{tools.bin}{os.pathsep}/usr/bin{os.pathsep}/bin")
    for name in ("BAYOU_BACKEND", "BAYOU_ALLOW_DOWNLOAD", "BAYOU_TOOLS_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    for tool in TOOLS:
        monkeypatch.delenv(f"BAYOU_{tool.upper()}", raising=False)
        monkeypatch.delenv(f"BAYOU_{tool.upper()}_SHA256", raising=False)
        monkeypatch.delenv(f"BAYOU_{tool.upper()}_VERSION", raising=False)
    return tools


def demo_env(channel: str, backend: str | None, **extra) -> Env:
    return Env(
        conda=["bayou-demo-lib=1.0", "bayou-demo-tool"],
        channels=[channel],
        backend=backend,
        **extra,
    )


def run_in(env: Env, *argv: str) -> str:
    result = bayou.run(env, list(argv))
    assert result.returncode == 0, result.stderr
    return result.stdout


def files_mentioning(root: Path, needle: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


# -- the Env field and the store-wide setting ---------------------------------------


def test_backend_is_not_part_of_the_identity():
    plain = Env(python="3.12", conda=["numpy=2"], channels=["conda-forge"])
    mamba = Env(python="3.12", conda=["numpy=2"], channels=["conda-forge"], backend="micromamba")
    assert mamba.hash == plain.hash
    assert mamba.backend == "micromamba" and plain.backend is None
    assert mamba != plain  # it changes how the env is built
    assert "backend='micromamba'" in repr(mamba)
    again = Env.from_dict(mamba.to_dict())
    assert again == mamba and again.backend == "micromamba"
    assert mamba.replace(pip=["six"]).backend == "micromamba"
    assert "backend" not in mamba.canonical()


def test_unknown_backend_is_a_spec_error_naming_it():
    with pytest.raises(SpecError) as info:
        Env(conda=["numpy"], backend="mamba")
    assert info.value.entry == "mamba"
    assert "micromamba" in str(info.value) and "pixi" in str(info.value)


def test_store_wide_backend_from_the_environment(monkeypatch):
    env = Env(conda=["numpy"])
    monkeypatch.delenv("BAYOU_BACKEND", raising=False)
    assert external.selected_backend(env) == "rattler"
    monkeypatch.setenv("BAYOU_BACKEND", "Pixi")
    assert external.selected_backend(env) == "pixi"
    assert external.selected_backend(env.replace(backend="conda")) == "conda"
    monkeypatch.setenv("BAYOU_BACKEND", "brew")
    with pytest.raises(SpecError, match=r"BAYOU_BACKEND") as info:
        external.selected_backend(env)
    assert info.value.entry == "brew"


def test_pixi_dependencies_from_conda_match_specs():
    convert = external.pixi_dependency
    assert convert("numpy") == ("numpy", {"version": "*"})
    assert convert("numpy=1.26") == ("numpy", {"version": "1.26.*"})
    assert convert("numpy==1.26.4") == ("numpy", {"version": "==1.26.4"})
    assert convert("numpy>=1.2,<2") == ("numpy", {"version": ">=1.2,<2"})
    assert convert("python 3.11.*") == ("python", {"version": "3.11.*"})
    assert convert("numpy=1.26=py311_0") == ("numpy", {"version": "1.26.*", "build": "py311_0"})
    assert convert("numpy 1.26.* py311_0") == ("numpy", {"version": "1.26.*", "build": "py311_0"})
    assert convert("conda-forge::numpy>=2") == (
        "numpy",
        {"version": ">=2", "channel": "conda-forge"},
    )
    assert convert("numpy[build=py311*]") == ("numpy", {"version": "*", "build": "py311*"})


def test_binary_relocation_keeps_every_offset():
    old, new = b"/store/builds/abc-1234/.bayou/conda-prefix", b"/store/envs/abc"
    data = b"\x7fELF\0" + old + b"/lib:" + old + b"/lib64\0tail" + old + b"\0end"
    out = replace_binary(data, old, new)
    assert len(out) == len(data)
    strings = out.split(b"\0")
    assert strings[1] == new + b"/lib:" + new + b"/lib64"
    assert out.endswith(b"\0end") and old not in out
    with pytest.raises(ValueError, match="longer"):
        replace_binary(data, old, old + b"-and-more")


# -- building with each tool ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_builds_a_working_env(tool, store, conda_channel, fake_tools):
    fake_tools.install(tool)
    env = demo_env(conda_channel, tool, pip=["six==1.16.0"], name=f"via-{tool}")
    events = []
    built = bayou.provision(env, progress=events.append)

    record = built.record
    assert record["backend"] == tool
    assert record["backend_tool"]["name"] == tool
    assert record["backend_tool"]["path"] == str(fake_tools.bin / tool)
    assert record["backend_tool"]["source"] == "PATH"
    assert record["backend_tool"]["version"] in ("2.3.0", "24.11.3", "0.66.0")
    versions = {p["name"]: p["version"] for p in record["conda_packages"]}
    assert versions["bayou-demo-lib"] == "1.0" and "python" in versions
    assert record["python_version"] == versions["python"]
    assert record["pip_packages"] == [{"name": "six", "version": "1.16.0"}]
    assert {"solve", "link", "pip", "publish", "done"} <= {e.stage for e in events}

    code = (
        "import sys, sysconfig, bayou_demo_lib, six; "
        "print(sys.prefix, sysconfig.get_config_var('prefix'), bayou_demo_lib.__version__)"
    )
    assert run_in(env, "python", "-c", code).split() == [str(built.prefix)] * 2 + ["1.0"]
    tool_out = run_in(env, "bayou-demo-tool")  # activation computed from the moved files
    assert f"BAYOU_DEMO_ACTIVATED=yes:{built.prefix}" in tool_out
    assert "BAYOU_DEMO_VAR=from-env-vars-d" in tool_out
    # Nothing refers to where the tool built it, nothing is left in builds/.
    assert files_mentioning(built.prefix, str(store.builds_dir)) == []
    assert list(store.builds_dir.iterdir()) == []

    # What the tool was asked to do.
    call = fake_tools.create_call(tool)
    argv = call["argv"]
    if tool == "pixi":
        assert argv[:2] == ["install", "--manifest-path"] and len(argv) == 3
        assert call["env"]["PIXI_CACHE_DIR"] == str(store.pkgs_dir / "pixi")
        import tomllib

        manifest = tomllib.loads((built.prefix / ".bayou" / "pixi.toml").read_text())
        assert manifest["workspace"]["channels"] == [conda_channel]
        assert manifest["workspace"]["platforms"] == [bayou.env.conda_platform()]
        py = f"{sys.version_info.major}.{sys.version_info.minor}.*"
        assert manifest["dependencies"] == {
            "bayou-demo-lib": "1.0.*",
            "bayou-demo-tool": "*",
            "python": py,
        }
        lock = (built.prefix / ".bayou" / "conda-lock.yml").read_text()
        assert "bayou-demo-lib" in lock  # pixi.lock kept: `bayou env export` uses it
    else:
        assert argv[0] == "create" and "--yes" in argv and "--override-channels" in argv
        prefix = Path(argv[argv.index("--prefix") + 1])
        assert prefix.is_relative_to(store.builds_dir)  # built aside, then published
        assert argv[argv.index("--channel") + 1] == conda_channel
        specs = [a for a in argv[1:] if not a.startswith("-")]
        assert set(env.conda) <= set(specs)
        cache = store.pkgs_dir / ("micromamba" if tool == "micromamba" else "conda-tool")
        assert call["env"]["CONDA_PKGS_DIRS"] == str(cache)
        if tool == "micromamba":
            assert argv[argv.index("--relocate-prefix") + 1] == str(built.prefix)
            assert "--no-rc" in argv
            root = Path(argv[argv.index("--root-prefix") + 1])
            assert root.is_relative_to(store.root)
        else:
            assert "--relocate-prefix" not in argv  # conda has none: bayou relocates


@pytest.mark.slow
def test_backend_from_the_environment_and_channel_order(
    store, conda_channel, fake_tools, monkeypatch
):
    fake_tools.install("micromamba")
    monkeypatch.setenv("BAYOU_BACKEND", "micromamba")
    mirror = conda_channel.rstrip("/") + "/"  # another spelling of the same channel
    env = Env(conda=["bayou-demo-lib=2.0"], channels=[conda_channel, mirror + "../x"])
    with pytest.raises(ProvisionError):
        bayou.provision(env)  # the second channel does not exist: proves both were passed
    argv = fake_tools.create_call("micromamba")["argv"]
    channels = [argv[i + 1] for i, a in enumerate(argv) if a == "--channel"]
    assert channels == list(env.channels)

    env = Env(conda=["bayou-demo-lib=2.0"], channels=[conda_channel])
    built = bayou.provision(env)
    assert built.record["backend"] == "micromamba"
    code = "import bayou_demo_lib; print(bayou_demo_lib.__version__)"
    assert run_in(env, "python", "-c", code).strip() == "2.0"


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_unsolvable_package_is_named(tool, store, conda_channel, fake_tools):
    fake_tools.install(tool)
    env = Env(conda=["bayou-demo-lib", "nosuchpkg=1.0"], channels=[conda_channel], backend=tool)
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env)
    error = info.value
    assert error.package == "nosuchpkg=1.0"
    assert f"{tool} could not create the conda environment for 'nosuchpkg=1.0'" in str(error)
    assert error.channels == (conda_channel,)
    assert "nosuchpkg" in error.output and str(fake_tools.bin / tool) in error.output
    assert Path(error.log_file).read_text() == error.output
    assert store.lookup(env.hash) is None
    assert list(store.builds_dir.iterdir()) == []


@pytest.mark.slow
def test_configured_executable_path(store, conda_channel, fake_tools, monkeypatch, tmp_path):
    elsewhere = fake_tools.install("conda", tmp_path / "opt" / "miniforge" / "bin")
    monkeypatch.setenv("BAYOU_CONDA", str(elsewhere))
    env = Env(conda=["bayou-demo-lib=1.0"], channels=[conda_channel], backend="conda")
    built = bayou.provision(env)
    assert built.record["backend_tool"]["path"] == str(elsewhere)
    assert built.record["backend_tool"]["source"] == "$BAYOU_CONDA"


def test_configured_path_that_is_not_executable(store, fake_tools, monkeypatch, tmp_path):
    monkeypatch.setenv("BAYOU_MICROMAMBA", str(tmp_path / "nope" / "micromamba"))
    env = Env(conda=["numpy"], backend="micromamba")
    with pytest.raises(ProvisionError, match=r"\$BAYOU_MICROMAMBA is .*not an executable"):
        bayou.provision(env)
    assert list(store.builds_dir.iterdir()) == []


def test_missing_tool_says_where_it_looked_and_how_to_allow_a_download(store, fake_tools):
    env = Env(conda=["numpy"], backend="pixi")
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env)
    text = str(info.value)
    assert "$BAYOU_PIXI (unset), PATH" in text and str(store.root / "tools") in text
    assert "allow_download=True" in text and "BAYOU_ALLOW_DOWNLOAD=1" in text
    assert info.value.package == "pixi"
    with pytest.raises(ProvisionError, match=r"install conda \(e\.g\. Miniforge\)"):
        bayou.provision(env.replace(backend="conda"), allow_download=True)


@pytest.mark.slow
def test_timeout_kills_the_tool_and_keeps_the_store(store, conda_channel, fake_tools, monkeypatch):
    fake_tools.install("micromamba")
    monkeypatch.setenv("BAYOU_FAKE_TOOL_SLEEP", "60")
    env = Env(conda=["bayou-demo-lib=1.0"], channels=[conda_channel], backend="micromamba")
    with pytest.raises(bayou.ProvisionTimeout):
        bayou.provision(env, timeout=5)
    assert store.lookup(env.hash) is None
    assert list(store.builds_dir.iterdir()) == []


# -- downloads -----------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def release_server(tmp_path, monkeypatch):
    """A local HTTP server with GitHub's release layout; $BAYOU_TOOLS_MIRROR points at it."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("BAYOU_TOOLS_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()


def publish(root: Path, tool: str, payload: bytes, digest: str | None = None) -> str:
    """Put `payload` where the release URL points, with a sha256 file beside it."""
    release = download.release_for(tool, mirror="http://x")
    path = root / release.url.removeprefix("http://x/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    digest = digest or hashlib.sha256(payload).hexdigest()
    Path(str(path) + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def pixi_archive(script: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = script.encode()
        info = tarfile.TarInfo("pixi")
        info.size, info.mode = len(data), 0o755
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.slow
def test_download_micromamba_then_build_with_it(store, conda_channel, fake_tools, release_server):
    publish(release_server, "micromamba", fake_tool_text("micromamba").encode())
    env = Env(conda=["bayou-demo-lib=1.0"], channels=[conda_channel], backend="micromamba")
    built = bayou.provision(env, allow_download=True)
    release = download.release_for("micromamba")
    installed = release.executable(store)
    assert built.record["backend_tool"] == {
        "name": "micromamba",
        "path": str(installed),
        "version": "2.3.0",
        "source": "downloaded",
    }
    assert os.access(installed, os.X_OK)
    names = {p.name for p in (store.root / "tools").iterdir()}
    assert f"micromamba-{release.version}" in names
    assert not [n for n in names if n.startswith(".tmp")]
    code = "import bayou_demo_lib; print(bayou_demo_lib.__version__)"
    assert run_in(env, "python", "-c", code).strip() == "1.0"
    # The next build finds the store's copy without downloading again.
    (release_server / release.url.split("/", 3)[3]).unlink()
    other = Env(conda=["bayou-demo-lib=2.0"], channels=[conda_channel], backend="micromamba")
    assert bayou.provision(other).record["backend_tool"]["source"] == "store"


def test_download_pixi_archive(store, fake_tools, release_server, monkeypatch):
    monkeypatch.setenv("BAYOU_ALLOW_DOWNLOAD", "1")
    publish(release_server, "pixi", pixi_archive(fake_tool_text("pixi")))
    tool = external.find_tool("pixi", store)
    assert tool.source == "downloaded"
    assert tool.path == download.release_for("pixi").executable(store)
    result = bayou.run(Env.current(), [str(tool.path), "--version"])
    assert result.stdout.strip() == "pixi 0.66.0"
    assert external.find_tool("pixi", store).source == "store"


def test_checksum_mismatch_is_rejected_and_leaves_nothing(store, fake_tools, release_server):
    publish(release_server, "micromamba", b"#!/bin/sh\necho tampered\n", digest="0" * 64)
    with pytest.raises(download.ToolDownloadError) as info:
        download.fetch_tool("micromamba", store)
    text = str(info.value)
    assert "checksum mismatch" in text and "0" * 64 in text
    assert hashlib.sha256(b"#!/bin/sh\necho tampered\n").hexdigest() in text
    assert list((store.root / "tools").iterdir()) == []
    assert download.installed("micromamba", store) is None


def test_pinned_checksum_wins_over_the_published_one(
    store, fake_tools, release_server, monkeypatch
):
    publish(release_server, "micromamba", b"#!/bin/sh\necho hi\n")  # consistent with itself
    monkeypatch.setenv("BAYOU_MICROMAMBA_SHA256", "ab" * 32)
    env = Env(conda=["numpy"], backend="micromamba")
    with pytest.raises(ProvisionError, match="checksum mismatch") as info:
        bayou.provision(env, allow_download=True)
    assert info.value.log_file  # reported like any failed build
    assert list((store.root / "tools").iterdir()) == []
    assert store.lookup(env.hash) is None and list(store.builds_dir.iterdir()) == []


def test_missing_checksum_file_is_an_error(store, fake_tools, release_server):
    publish(release_server, "pixi", pixi_archive("#!/bin/sh\n"))
    checksum = download.release_for("pixi").checksum_url.split("/", 3)[3]
    (release_server / checksum).unlink()
    with pytest.raises(download.ToolDownloadError, match=r"HTTP 404"):
        download.fetch_tool("pixi", store)
    assert list((store.root / "tools").iterdir()) == []


@pytest.mark.slow
def test_cli_create_with_a_backend_and_doctor_lists_the_tools(
    store_root, conda_channel, fake_tools
):
    import subprocess

    fake_tools.install("micromamba")
    bayou_cli = [sys.executable, "-m", "bayou.cli"]
    environ = dict(os.environ)
    doctor = subprocess.run([*bayou_cli, "doctor"], capture_output=True, text=True, env=environ)
    assert doctor.returncode == 0, doctor.stderr
    assert f"micromamba: {fake_tools.bin / 'micromamba'} (from PATH)" in doctor.stdout
    assert "pixi: not found" in doctor.stdout
    created = subprocess.run(
        [*bayou_cli, "env", "create", "--conda", "bayou-demo-lib=1.0", "-c", conda_channel]
        + ["--python", CALLER_XY, "--backend", "micromamba", "--name", "mm"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )
    assert created.returncode == 0, created.stderr
    assert bayou.Store(store_root).resolve("mm").record["backend"] == "micromamba"
    assert len(fake_tools.calls("micromamba")) >= 1
