"""Builds you can watch: what uv and py-rattler are doing reaches
`ProgressEvent`s, the terminal status line and the log lines, from real
builds (PyPI through uv with an empty uv cache, so something is downloaded;
the local conda channel, as files and served over HTTP)."""

from __future__ import annotations

import fcntl
import http.server
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import threading
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import bayou
from bayou import Env, ProvisionError
from bayou.provision import uv_step
from bayou.provision.progress import ProgressEvent, format_bytes
from bayou.provision.tools import Deadline, run_tool, terminal_text
from bayou.provision.uv_progress import UvProgress, parse_size

pytestmark = pytest.mark.slow

# A pure-Python wheel of 2.0 MiB (large enough for uv to announce it on a pipe too)
# and a small one: every Python the tests run on installs both.
BIG, SMALL = "pip==24.0", "six==1.16.0"
REPO = Path(__file__).resolve().parent.parent


def fresh_store(tmp_path: Path) -> bayou.Store:
    """A store whose package caches are empty: its builds download."""
    return bayou.Store(tmp_path / "store", pkgs_dir=tmp_path / "pkgs")


def stages_in_order(events: list[ProgressEvent]) -> list[str]:
    seen: list[str] = []
    for event in events:
        if not seen or seen[-1] != event.stage:
            seen.append(event.stage)
    return seen


def test_pip_build_reports_resolved_downloaded_installed_in_order(tmp_path):
    events: list[ProgressEvent] = []
    built = bayou.provision(
        Env(pip=[BIG, SMALL]), progress=events.append, store=fresh_store(tmp_path)
    )
    stages = stages_in_order(events)
    pip_stages = [s for s in stages if s.startswith("pip")]
    assert pip_stages == ["pip", "pip-resolve", "pip-download", "pip-install", "pip"], stages
    assert stages[-2:] == ["publish", "done"]

    resolved = [e for e in events if e.stage == "pip-resolve" and e.done is not None]
    assert [(e.done, e.total, e.message) for e in resolved] == [(2, 2, "packages")]
    downloads = [e for e in events if e.stage == "pip-download"]
    assert downloads[-1].done == downloads[-1].total == 2
    # uv's own byte counts (rounded as it prints them), the bar of pip's wheel seen
    with_bytes = [e for e in downloads if e.bytes_total]
    assert with_bytes, downloads
    assert downloads[-1].bytes_done == downloads[-1].bytes_total >= 2_000_000
    done_bytes = [e.bytes_done for e in with_bytes]
    assert done_bytes == sorted(done_bytes)
    installs = [e for e in events if e.stage == "pip-install"]
    assert (installs[-1].done, installs[-1].total) == (2, 2)
    assert built.record["pip_packages"] == [
        {"name": "pip", "version": "24.0"},
        {"name": "six", "version": "1.16.0"},
    ]
    text = " | ".join(str(e) for e in downloads)
    assert re.search(r"pip-download 2/2 2\.0 MiB/2\.0 MiB \(100%\)", text), text


def test_uv_on_a_pipe_is_read_too(tmp_path):
    """Where no pseudo-terminal can be had, uv's plain lines still give the
    counts, and the size of each large wheel it announces."""
    venv = tmp_path / "venv"
    subprocess.run(
        [uv_step.uv_binary(), "venv", "-q", "--python", sys.executable, venv], check=True
    )
    events: list[dict] = []
    reader = UvProgress(events.append)
    argv = [uv_step.uv_binary(), "pip", "install", "--python", str(venv / "bin" / "python")]
    result = run_tool(
        [*argv, "--no-config", BIG, SMALL],
        deadline=Deadline(300),
        what="installing",
        env=uv_step.uv_environ(tmp_path / "cache"),
        on_stderr=reader.feed,
    )
    reader.finish()
    assert result.returncode == 0, result.output
    assert "Downloading pip (" in result.stderr  # what uv prints on a pipe
    said = [(e["stage"], e["done"], e["total"], e["message"]) for e in events]
    assert said[0] == ("pip-resolve", 2, 2, "packages")
    started = next(e for e in events if e["message"] == "pip")
    assert started["stage"] == "pip-download" and started["bytes_done"] == 0
    assert 2_000_000 <= started["bytes_total"] <= 2_200_000
    assert events[-2]["stage"] == "pip-download" and events[-2]["done"] == 2
    assert events[-2]["bytes_done"] == events[-2]["bytes_total"] == started["bytes_total"]
    assert said[-1] == ("pip-install", 2, 2, "packages")


def test_uv_output_kept_for_errors_has_no_terminal_codes(tmp_path):
    with pytest.raises(ProvisionError) as caught:
        bayou.provision(Env(pip=["bayou-no-such-package-zzz==1.0"]), store=fresh_store(tmp_path))
    error = caught.value
    assert error.package == "bayou-no-such-package-zzz==1.0"
    assert "not found in the package registry" in str(error)
    assert "\x1b" not in error.output and "\r" not in error.output
    assert "Resolving dependencies" not in error.output  # a spinner, not a line


def test_conda_build_reports_each_package_linked(store, conda_channel):
    env = Env(conda=["bayou-demo-lib=1.0", "bayou-demo-tool"], channels=[conda_channel])
    events: list[ProgressEvent] = []
    built = bayou.provision(env, progress=events.append)
    names = {p["name"] for p in built.record["conda_packages"]}
    links = [e for e in events if e.stage == "link"]
    assert [e.done for e in links] == list(range(len(names) + 1))
    assert {e.total for e in links} == {len(names)}
    assert {e.message for e in links[1:]} == names
    assert stages_in_order(events)[:2] == ["solve", "link"]


@pytest.fixture
def served_channel(conda_channel, monkeypatch):
    """The local conda channel served over HTTP on loopback: rattler downloads."""
    directory = unquote(urlparse(conda_channel).path)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield f"http://127.0.0.1:{server.server_address[1]}/", Path(directory)
    server.shutdown()
    server.server_close()


def test_conda_downloads_report_packages_and_bytes(tmp_path, served_channel):
    url, directory = served_channel
    events: list[ProgressEvent] = []
    built = bayou.provision(
        Env(conda=["bayou-demo-lib=1.0"], channels=[url]),
        progress=events.append,
        store=fresh_store(tmp_path),
    )
    records = built.record["conda_packages"]
    sizes = sum((directory / r["subdir"] / r["file_name"]).stat().st_size for r in records)
    downloads = [e for e in events if e.stage == "download"]
    assert downloads and all(e.bytes_total == sizes for e in downloads)
    last = downloads[-1]
    assert last.done == last.total == len(records) and last.bytes_done == sizes
    done_bytes = [e.bytes_done for e in downloads]
    assert done_bytes == sorted(done_bytes)
    assert any(e.message == "python" for e in downloads)  # the big one, waited on
    assert [e.done for e in events if e.stage == "link"][-1] == len(records)


CHILD = textwrap.dedent(
    """
    import logging, sys
    import bayou

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s: %(message)s")
    store = bayou.Store(sys.argv[1], pkgs_dir=sys.argv[2])
    bayou.provision(bayou.Env(pip=sys.argv[3:]), store=store)
    """
)


def child_argv(tmp_path: Path) -> list[str]:
    return [sys.executable, "-c", CHILD, str(tmp_path / "store"), str(tmp_path / "pkgs"), BIG]


def child_environ() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


def test_log_lines_without_a_terminal(tmp_path):
    out = subprocess.run(
        child_argv(tmp_path), capture_output=True, text=True, timeout=300, env=child_environ()
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("bayou.provision: ")]
    text = "\n".join(lines)
    assert "\r" not in out.stdout + out.stderr
    for expected in (
        r"\] pip 0/1 installing with uv$",
        r"\] pip-resolve 1/1 packages$",
        r"\] pip-download 1/1 2\.0 MiB/2\.0 MiB \(100%\)$",
        r"\] pip-install 1/1 ",
        r"\] pip 1/1 done$",
        r"\] done pip==24\.0 in ",
    ):
        assert re.search(expected, text, re.MULTILINE), (expected, text)
    order = [re.search(r"\] (\S+)", line).group(1) for line in lines]
    assert order.index("pip-resolve") < order.index("pip-download") < order.index("pip-install")
    assert len(lines) <= 16, text  # stage boundaries, not every redraw


def test_status_line_on_a_terminal(tmp_path):
    """The child's stderr is a terminal 60 columns wide: one line redrawn with
    uv's progress, each redraw cut to fit, then the last line kept."""
    ours, theirs = pty.openpty()
    fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    proc = subprocess.Popen(
        child_argv(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=theirs,
        env=child_environ(),
    )
    os.close(theirs)
    chunks = []
    while True:
        try:
            data = os.read(ours, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(ours)
    assert proc.wait(timeout=300) == 0
    raw = b"".join(chunks).decode()
    # The tty turned "\n" into "\r\n"; every other "\r" starts a redraw.
    draws = [d.rstrip() for d in raw.replace("\r\n", "\n").split("\r") if d.strip()]
    assert all(len(d) <= 59 for d in draws[:-1]), draws
    assert draws[-1].startswith("[bayou ") and " done pip==24.0 in " in draws[-1]
    shown = "\n".join(draws)
    assert re.search(r"\] pip-resolve \S", shown), draws
    assert re.search(r"\] pip-download \d/1 .*MiB", shown), draws
    assert re.search(r"\] pip-install \d/1", shown), draws


def test_sizes_and_terminal_text():
    assert parse_size("12.43 MiB") == int(12.43 * 2**20)
    assert parse_size("2.0GiB") == 2 * 2**30 and parse_size("0 B") == 0
    assert format_bytes(512) == "512 B" and format_bytes(18_252_005) == "17.4 MiB"
    drawn = "⠋ Resolving...\r\x1b[2K⠙ x\r\x1b[2KResolved 1 package in 3ms\nbar \x1b[1A\r\x1b[2K"
    assert terminal_text(drawn) == "Resolved 1 package in 3ms\n"
    event = ProgressEvent("ab" * 8, "pip-download", 1, 3, "torch", 2**30, 2**31)
    assert str(event) == "[bayou abababab] pip-download 1/3 1.0 GiB/2.0 GiB (50%) torch"
