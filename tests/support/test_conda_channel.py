"""Checks that the local test channel yields real, working, relocatable conda envs.

One channel holds python 3.11 and, when the machine has one, python 3.9 (a single
``build_channel(("3.11", "3.9"))`` call), plus the demo packages.  Every rattler call
(indexing, solving, installing) runs in a child process via ``conda_channel``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.conda_channel import (
    build_channel,
    create_env,
    find_interpreter,
    read_runpath,
)

pytestmark = pytest.mark.slow

PLACEHOLDER_FILES_311 = (
    "bin/python3.11-config",
    "lib/pkgconfig/python-3.11.pc",
    "lib/pkgconfig/python-3.11-embed.pc",
    "lib/python3.11/_sysconfigdata__linux_x86_64-linux-gnu.py",
    "lib/python3.11/config-3.11-x86_64-linux-gnu/Makefile",
    "lib/python3.11/config-3.11-x86_64-linux-gnu/python-config.py",
)


def _has_python(version: str) -> bool:
    try:
        find_interpreter(version)
    except LookupError:
        return False
    return True


PYTHONS = ("3.11", "3.9") if _has_python("3.9") else ("3.11",)


def _run(*cmd: str | Path, **kwargs) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _source_prefix(version: str) -> str:
    """The interpreter's own prefix (``.../versions/3.11.7``), as it reports it."""
    exe = find_interpreter(version)
    return _run(exe, "-I", "-S", "-c", "import sys; print(sys.base_prefix)").strip()


@pytest.fixture(scope="module")
def channel() -> Path:
    start = time.perf_counter()
    path = build_channel(PYTHONS)
    print(f"\nchannel {path} ready in {time.perf_counter() - start:.2f}s")
    return path


@pytest.fixture(scope="module")
def env311(channel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("envs") / "py311"
    installed = create_env(
        channel, ["python 3.11.*", "bayou-demo-lib ==1.0", "bayou-demo-tool"], prefix
    )
    assert installed["bayou-demo-lib"] == "1.0"
    assert installed["python"].startswith("3.11.")
    return prefix


def test_find_interpreter_discovers_real_binary() -> None:
    exe = find_interpreter("3.11")
    assert "shims" not in exe.parts
    out = _run(exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    assert out.strip() == "3.11"
    with pytest.raises(LookupError):
        find_interpreter("2.99")


def test_channel_layout(channel: Path) -> None:
    repodata = json.loads((channel / "linux-64" / "repodata.json").read_text())
    pythons = {r["version"].rsplit(".", 1)[0] for r in repodata["packages.conda"].values()}
    assert pythons == set(PYTHONS)
    noarch = json.loads((channel / "noarch" / "repodata.json").read_text())
    names = sorted((r["name"], r["version"]) for r in noarch["packages.conda"].values())
    assert names == [
        ("bayou-demo-gpu", "1.0"),
        ("bayou-demo-lib", "1.0"),
        ("bayou-demo-lib", "2.0"),
        ("bayou-demo-tool", "0.1"),
    ]
    gpu = next(r for r in noarch["packages.conda"].values() if r["name"] == "bayou-demo-gpu")
    assert gpu["depends"] == ["__cuda >=12"]


def test_second_call_is_a_cache_hit(channel: Path) -> None:
    start = time.perf_counter()
    again = build_channel(PYTHONS)
    elapsed = time.perf_counter() - start
    assert again == channel
    assert elapsed < 0.5, f"cache hit took {elapsed:.2f}s"


def test_python_env_works(env311: Path) -> None:
    python = env311 / "bin" / "python"
    out = _run(
        python,
        "-c",
        "import sys, ssl, sqlite3, ctypes, json, bayou_demo_lib; "
        "print(sys.prefix, bayou_demo_lib.__version__)",
    )
    assert out.split() == [str(env311), "1.0"]
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    assert Path(purelib.strip()) == env311 / "lib" / "python3.11" / "site-packages"


def test_python_env_is_relocated(env311: Path) -> None:
    source = _source_prefix("3.11")
    ldd = _run("ldd", env311 / "bin" / "python")
    libpython = next(line for line in ldd.splitlines() if "libpython" in line)
    assert source not in ldd
    resolved = Path(libpython.split("=>")[1].split("(")[0].strip()).resolve()
    assert resolved == (env311 / "lib" / "libpython3.11.so.1.0").resolve()

    assert read_runpath(env311 / "bin" / "python3.11") == ["$ORIGIN/../lib"]
    assert read_runpath(env311 / "lib" / "libpython3.11.so.1.0") == ["$ORIGIN"]
    ssl_ext = next((env311 / "lib" / "python3.11" / "lib-dynload").glob("_ssl.*.so"))
    assert read_runpath(ssl_ext) == ["$ORIGIN/../.."]

    for rel in PLACEHOLDER_FILES_311:
        text = (env311 / rel).read_text()
        assert str(env311) in text, rel
        assert source not in text, rel
    # Only libpython's compiled-in PREFIX (a getpath fallback) and conda-meta still say it.
    hits = subprocess.run(
        ["grep", "-rlF", source, str(env311)], capture_output=True, text=True
    ).stdout.split()
    allowed = re.compile(r"(/lib/libpython3\.11\.so\.1\.0|/conda-meta/python-.*\.json)$")
    assert [h for h in hits if not allowed.search(h)] == []


def test_uv_installs_into_env(env311: Path) -> None:
    from uv import find_uv_bin

    python = env311 / "bin" / "python"
    _run(find_uv_bin(), "pip", "install", "--python", python, "six")
    out = _run(python, "-c", "import six; print(six.__file__)")
    assert Path(out.strip()).is_relative_to(env311)


def test_demo_tool_activation(env311: Path) -> None:
    env_vars = json.loads(
        (env311 / "etc" / "conda" / "env_vars.d" / "bayou-demo-tool.json").read_text()
    )
    assert env_vars == {"BAYOU_DEMO_VAR": "from-env-vars-d"}
    script = env311 / "etc" / "conda" / "activate.d" / "bayou-demo-tool.sh"
    env = {"PATH": f"{env311 / 'bin'}:/usr/bin:/bin", "CONDA_PREFIX": str(env311), **env_vars}
    out = _run("sh", "-c", f'. "{script}" && bayou-demo-tool', env=env)
    assert out.splitlines() == [
        "bayou-demo-tool ok",
        "BAYOU_DEMO_VAR=from-env-vars-d",
        f"BAYOU_DEMO_ACTIVATED=yes:{env311}",
    ]


@pytest.mark.skipif("3.9" not in PYTHONS, reason="no python3.9 on this machine")
def test_noarch_python_relinks_for_39(channel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "py39"
    installed = create_env(channel, ["python 3.9.*", "bayou-demo-lib ==2.0"], prefix)
    assert installed["python"].startswith("3.9.")
    out = _run(
        prefix / "bin" / "python",
        "-c",
        "import sys, ssl, sqlite3, ctypes, bayou_demo_lib; "
        "print(sys.prefix, bayou_demo_lib.__version__, bayou_demo_lib.__file__)",
    )
    assert out.split() == [
        str(prefix),
        "2.0",
        str(prefix / "lib" / "python3.9" / "site-packages" / "bayou_demo_lib" / "__init__.py"),
    ]


def test_alternative_target_prefix_then_rename(channel: Path, tmp_path: Path) -> None:
    """Install into a staging dir with the final prefix patched in, then rename: works."""
    staging, final = tmp_path / "staging", tmp_path / "final"
    create_env(
        channel,
        ["python 3.11.*", "bayou-demo-lib ==2.0"],
        staging,
        alternative_target_prefix=final,
    )
    assert not final.exists()
    os.rename(staging, final)

    out = _run(
        final / "bin" / "python",
        "-c",
        "import sys, sysconfig, ssl, bayou_demo_lib; "
        "print(sys.prefix, sysconfig.get_config_var('prefix'), "
        "sysconfig.get_paths()['purelib'], bayou_demo_lib.__version__)",
    )
    assert out.split() == [
        str(final),
        str(final),
        str(final / "lib" / "python3.11" / "site-packages"),
        "2.0",
    ]
    for rel in PLACEHOLDER_FILES_311:
        text = (final / rel).read_text()
        assert str(final) in text, rel
    hits = subprocess.run(
        ["grep", "-rlF", str(staging), str(final)], capture_output=True, text=True
    ).stdout.split()
    assert hits == []


def test_concurrent_builds_share_one_channel(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from tests.support.conda_channel import build_channel
        print(build_channel(("3.11",), Path(sys.argv[1])))
        """
    )
    root_dir = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            cwd=root_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        outs.append(stdout.strip())
    assert len(set(outs)) == 1
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert [e for e in entries if not e.endswith(".lock")] == [Path(outs[0]).name]
