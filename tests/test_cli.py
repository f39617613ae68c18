"""The `bayou` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

BAYOU = [sys.executable, "-m", "bayou.cli"]


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*BAYOU, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_create_list_show_export_run_remove(store_root, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("packaging==21.3\n")
    created = cli("env", "create", str(req))
    assert created.returncode == 0, created.stderr
    env_hash = created.stdout.split()[0]

    listing = cli("env", "list")
    assert env_hash[:12] in listing.stdout and "HASH" in listing.stdout
    rows = json.loads(cli("env", "list", "--json").stdout)
    assert rows[0]["hash"] == env_hash and rows[0]["size"] > 0

    shown = json.loads(cli("env", "show", env_hash[:8]).stdout)
    assert shown["spec"]["pip"] == ["packaging==21.3"]

    exported = tmp_path / "exact.yml"
    assert cli("env", "export", env_hash[:8], "-o", str(exported)).returncode == 0
    assert "packaging==21.3" in exported.read_text()
    assert "pyparsing==" in exported.read_text()  # the dependency is pinned too

    ran = cli(
        "run", env_hash[:8], "--", "python", "-c", "import packaging; print(packaging.__version__)"
    )
    assert ran.returncode == 0 and ran.stdout.strip() == "21.3"
    failing = cli("run", env_hash[:8], "--", "python", "-c", "raise SystemExit(7)")
    assert failing.returncode == 7

    assert cli("env", "remove", env_hash[:8]).returncode == 0
    assert cli("env", "list", "--json").stdout.strip() == "[]"


@pytest.mark.slow
def test_export_rebuilds_the_same_packages(store_root, tmp_path):
    created = cli("env", "create", "--pip", "packaging==21.3", "--name", "exp")
    assert created.returncode == 0, created.stderr
    exported = tmp_path / "environment.yml"
    assert cli("env", "export", "exp", "-o", str(exported)).returncode == 0
    import bayou

    again = bayou.Env.from_file(exported)
    assert "pyparsing" in " ".join(again.pip)


def test_errors_and_exit_codes(store_root, tmp_path):
    bad = tmp_path / "environment.yml"
    bad.write_text("dependencies:\n  - numpy ^^ 2\n")
    out = cli("env", "create", str(bad))
    assert out.returncode == 2 and f"{bad}:2" in out.stderr and "numpy ^^ 2" in out.stderr
    assert cli("env", "show", "nosuchenv").returncode == 3
    assert cli("run", "nosuchenv", "--", "true").returncode == 3
    assert cli("env", "create").returncode == 2
    assert cli("env", "gc").returncode == 2


def test_help_on_every_command():
    for args in (["--help"], ["env", "--help"], ["run", "--help"], ["doctor", "--help"]):
        out = cli(*args)
        assert out.returncode == 0 and "usage:" in out.stdout
    for action in ("create", "list", "show", "export", "remove", "gc"):
        out = cli("env", action, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout


def test_doctor_lists_interpreters_and_backends(store_root):
    out = cli("doctor")
    assert out.returncode == 0
    assert "py-rattler" in out.stdout and "uv " in out.stdout
    assert f"{sys.version_info.major}.{sys.version_info.minor}." in out.stdout
    assert str(store_root) in out.stdout


def test_gc_cli(store_root):
    out = cli("env", "gc", "--max-age", "30d", "--dry-run")
    assert out.returncode == 0 and "would remove 0 environment(s)" in out.stdout
    assert cli("env", "gc", "--max-size", "lots").returncode == 2


def test_env_create_without_a_terminal_shows_the_builds_progress_on_stderr(store_root):
    """CI and pipes have no status line: the stages of the build come as log lines."""
    done = cli("env", "create", "--pip", "six==1.16.0", "--name", "progress")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "[bayou " in line]
    stages = [line.split("] ", 1)[1].split()[0] for line in lines]
    assert "pip-install" in stages and stages[-1] == "done", done.stderr
    assert all(re.match(r"\d\d:\d\d:\d\d \[bayou [0-9a-f]{8}\] ", line) for line in lines)
