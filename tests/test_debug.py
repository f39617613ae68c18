"""Debug workers: each listens with debugpy and answers a real DAP client.

The DAP client here is a few lines of socket code speaking the protocol's
framing (``Content-Length`` headers, JSON bodies), so nothing mocks debugpy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import bayou
from bayou import debugging
from bayou.persistent import registry
from bayou.store import Store

T = 120
BAYOU = [sys.executable, "-m", "bayou.cli"]


def dap_request(port: int, command: str, arguments: dict, timeout: float = 30.0) -> dict:
    """Send one DAP request to 127.0.0.1:`port`; return the response to it."""
    body = json.dumps(
        {"seq": 1, "type": "request", "command": command, "arguments": arguments}
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                assert chunk, "the debug server closed the connection"
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            while len(buffer) < length:
                chunk = sock.recv(65536)
                assert chunk, "the debug server closed the connection"
                buffer += chunk
            message, buffer = json.loads(buffer[:length]), buffer[length:]
            if message.get("type") == "response" and message.get("request_seq") == 1:
                return message


INITIALIZE = {"adapterID": "bayou-test", "clientID": "bayou-test", "linesStartAt1": True}


def test_a_debug_worker_accepts_a_dap_connection(store):
    with bayou.EnvExecutor(2, debug=True, name="dbg") as ex:
        pids = set(ex.map(_pid_after, [0.3, 0.3]))
        ports = ex.debug_ports
        assert pids and pids <= set(ports), (pids, ports)
        for pid in pids:
            response = dap_request(ports[pid], "initialize", INITIALIZE)
            assert response["command"] == "initialize" and response["success"] is True
            assert "supportsConfigurationDoneRequest" in response["body"]
        # the debug directory is private, and the pool still runs tasks
        directory = debugging.debug_root(store) / "dbg"
        assert oct(directory.stat().st_mode & 0o777) == "0o700"
        assert ex.submit(sum, [1, 2]).result(T) == 3
    assert not directory.exists()  # removed with the pool


def _pid_after(seconds):
    import time

    time.sleep(seconds)
    return os.getpid()


def test_no_debugpy_without_debug(store):
    with bayou.EnvExecutor(1) as ex:
        assert ex.debug_ports == {}
        assert ex.submit(lambda: "debugpy" in sys.modules).result(T) is False


def test_launch_json_is_written_and_merged(tmp_path):
    workers = [
        {"pid": 11, "host": "127.0.0.1", "port": 5001},
        {"pid": 12, "host": "127.0.0.1", "port": 5002},
    ]
    path = tmp_path / ".vscode" / "launch.json"
    path.parent.mkdir()
    mine = {"name": "my own", "type": "debugpy", "request": "launch", "program": "x.py"}
    path.write_text(json.dumps({"version": "0.2.0", "configurations": [mine]}))
    debugging.write_launch_json(path, "seg", workers)
    debugging.write_launch_json(path, "seg", workers[:1])  # a rerun replaces, never duplicates
    data = json.loads(path.read_text())
    assert data["configurations"][0] == mine
    (attach,) = data["configurations"][1:]
    assert attach["request"] == "attach" and attach["connect"] == {
        "host": "127.0.0.1",
        "port": 5001,
    }
    assert data["compounds"] == []
    both = debugging.launch_configurations("seg", workers)
    assert both["compounds"][0]["configurations"] == [c["name"] for c in both["configurations"]]
    path.write_text("// a comment VS Code allows\n{}")
    with pytest.raises(ValueError, match="not plain JSON"):
        debugging.write_launch_json(path, "seg", workers)


@pytest.mark.slow
def test_debugpy_comes_from_the_caller_not_the_env(store, tmp_path):
    """A pip env without debugpy: the worker gets the caller's copy, the env stays clean;
    a persistent debug pool is found by `bayou debug NAME`, which writes launch.json."""
    env = bayou.Env(pip=["packaging==21.3"])
    ex = bayou.EnvExecutor(1, env=env, debug=True, persistent=True, name="dbgp")
    try:
        where = ex.submit(lambda: __import__("debugpy").__file__).result(T)
        prefix = ex.environment.prefix
        assert where.startswith(str(Path(store.root) / "debugpy")), where
        assert not list(prefix.rglob("debugpy")), "debugpy was installed into the env"
        ((pid, port),) = ex.debug_ports.items()
        assert dap_request(port, "initialize", INITIALIZE)["success"] is True

        launch = tmp_path / "launch.json"
        out = subprocess.run(
            [*BAYOU, "debug", "dbgp", "-o", str(launch)], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        (config,) = json.loads(launch.read_text())["configurations"]
        assert config["connect"]["port"] == port and str(pid) in config["name"]
        listing = subprocess.run([*BAYOU, "debug"], capture_output=True, text=True)
        assert f"dbgp: pid {pid} on 127.0.0.1:{port}" in listing.stdout
        missing = subprocess.run([*BAYOU, "debug", "nope"], capture_output=True, text=True)
        assert missing.returncode == 3 and "dbgp" in missing.stderr
    finally:
        ex.shutdown()
        for entry in registry.entries(Store(store.root)):
            registry.kill_host(entry)


@pytest.mark.slow
def test_a_debug_worker_of_another_python_accepts_a_dap_connection(store):
    """The caller's debugpy in a Python 3.9 worker: pure-Python pydevd, no compiled speedups."""
    from tests.conftest import require_interpreter
    from tests.executor_tasks import basic

    require_interpreter("3.9")
    env = bayou.Env(python="3.9", pip=["six==1.16.0"])
    with bayou.EnvExecutor(1, env=env, debug=True) as ex:
        pid = ex.submit(basic.getpid).result(T)
        assert tuple(ex.submit(basic.version).result(T)[0][:2]) == (3, 9)
        response = dap_request(ex.debug_ports[pid], "initialize", INITIALIZE)
        assert response["success"] is True
