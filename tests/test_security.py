"""The authenticated boundary between a caller and its workers (docs/security.md).

Real pools, real sockets: a client that connects to a live pool's socket
without the key (or with garbage, or with a pickle meant to run code, or
with nothing at all) is dropped and the pool keeps working; a worker drops a
"caller" that does not know the key; the key shows up in no argv,
environment, log or error message; private files and directories have
private modes whatever the umask; and no code path hands a user string to a
shell.
"""

from __future__ import annotations

import ast
import logging
import os
import pickle
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bayou
from bayou import pool as pool_module
from bayou.executor import EnvExecutor
from bayou.pool import connection as pool_connection
from bayou.worker import deploy, wire
from tests.executor_tasks import basic

REPO = Path(__file__).resolve().parent.parent

T = 30
SRC = Path(bayou.__file__).resolve().parent


@pytest.fixture
def ex():
    with EnvExecutor(1) as executor:
        executor.submit(basic.add, 1, 1).result(T)  # the pool (and its socket) is up
        yield executor


def _connect(ex) -> tuple[socket.socket, bytes]:
    """Connect to the pool's socket as a stranger; the CHALLENGE nonce it sends."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(T)
    sock.connect(ex._pool.listener.path)
    kind, nonce = wire.recv_frame(sock, wire.FrameReader())
    assert kind == wire.CHALLENGE and len(nonce) == wire.NONCE_SIZE
    return sock, bytes(nonce)


def _dropped(sock: socket.socket) -> bool:
    """True when the pool closed the connection (EOF or reset), having said nothing."""
    try:
        data = sock.recv(1 << 16)
    except ConnectionResetError:
        return True
    finally:
        sock.close()
    return data == b""


def _auth_frame(answer: bytes, worker_id: int = 1) -> bytes:
    info = {"pid": os.getpid(), "version": tuple(sys.version_info[:3])}
    payload = pickle.dumps((answer, os.urandom(32), worker_id, info), 4)
    return wire.HEADER.pack(len(payload), wire.AUTH) + payload


def _still_works(ex) -> None:
    assert ex._pool.broken is None
    assert ex.submit(basic.add, 2, 3).result(T) == 5


# -- strangers on the socket ----------------------------------------------------------------------


def test_client_without_the_key_is_rejected(ex, caplog):
    caplog.set_level(logging.DEBUG, logger="bayou")
    sock, nonce = _connect(ex)
    wrong_key = os.urandom(wire.KEY_SIZE)
    sock.sendall(_auth_frame(wire.digest(wrong_key, nonce)))
    assert _dropped(sock)
    assert "worker failed authentication" in caplog.text
    _still_works(ex)


def test_client_of_another_pool_is_rejected():
    """A stale or foreign worker holding some other pool's key gets nowhere."""
    with EnvExecutor(1) as a, EnvExecutor(1) as b:
        a.submit(basic.add, 1, 1).result(T)
        b.submit(basic.add, 1, 1).result(T)
        sock, nonce = _connect(b)
        sock.sendall(_auth_frame(wire.digest(a._pool.listener.key, nonce)))
        assert _dropped(sock)
        _still_works(a)
        _still_works(b)


def test_key_holder_claiming_an_unknown_worker_is_rejected(ex):
    sock, nonce = _connect(ex)
    sock.sendall(_auth_frame(wire.digest(ex._pool.listener.key, nonce), worker_id=10**6))
    assert _dropped(sock)
    _still_works(ex)


def test_a_pickle_sent_before_authentication_runs_nothing(ex, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    sock, _ = _connect(ex)
    blob = pickle.dumps(Payload())
    sock.sendall(wire.HEADER.pack(len(blob), wire.AUTH) + blob)
    assert _dropped(sock)
    assert not marker.exists()
    _still_works(ex)


@pytest.mark.parametrize(
    "frame",
    [
        wire.HEADER.pack(1 << 40, wire.AUTH),  # announces 1 TiB: nothing is allocated
        wire.HEADER.pack(3, wire.RESULT) + b"abc",  # not an AUTH frame
        b"GET / HTTP/1.0\r\n\r\n",  # not bayou at all
    ],
    ids=["huge", "not-auth", "garbage"],
)
def test_malformed_first_frames_are_dropped(ex, frame):
    sock, _ = _connect(ex)
    sock.sendall(frame)
    assert _dropped(sock)
    _still_works(ex)


def test_a_silent_client_is_dropped_after_the_handshake_timeout(ex, monkeypatch):
    monkeypatch.setattr(pool_connection, "HANDSHAKE_TIMEOUT", 0.3)
    sock, _ = _connect(ex)
    assert _dropped(sock)  # blocks until the pool hangs up (T bounds it)
    _still_works(ex)


def test_many_strangers_at_once_do_not_disturb_the_workers(ex):
    futures = [ex.submit(basic.sleep_then, 0.01, i) for i in range(20)]
    socks = [_connect(ex)[0] for _ in range(20)]
    for sock in socks:
        sock.sendall(_auth_frame(os.urandom(32)))
    assert all(_dropped(sock) for sock in socks)
    assert [f.result(T) for f in futures] == list(range(20))
    _still_works(ex)


# -- a worker does not serve a stranger either ---------------------------------------------------------


def test_worker_leaves_a_caller_that_does_not_know_the_key(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "s")
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(T)
    runtime = str(deploy.ensure_runtime(None))
    worker_id = 7
    cmd = [sys.executable, "-c", pool_module.BOOTSTRAP, runtime, path, str(worker_id)]
    proc = subprocess.Popen(
        [*cmd, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        key = os.urandom(wire.KEY_SIZE)
        proc.stdin.write(key)
        proc.stdin.close()
        conn, _ = listener.accept()
        conn.settimeout(T)
        nonce = wire.new_nonce()
        wire.send_frame(conn, wire.CHALLENGE, nonce)
        kind, payload = wire.recv_frame(conn, wire.FrameReader())
        assert kind == wire.AUTH
        answer, worker_nonce, got_id, _info = pickle.loads(payload)
        assert got_id == worker_id and wire.verify(key, nonce, answer)  # it knows the key
        # ... but we do not: a WELCOME signed with another key
        bogus = wire.digest(os.urandom(wire.KEY_SIZE), worker_nonce) + pickle.dumps({}, 4)
        wire.send_frame(conn, wire.WELCOME, bogus)
        assert proc.wait(timeout=T) == 1
        err = proc.stderr.read()
        assert "the caller failed authentication" in err.decode()
        assert "Traceback" not in err.decode()
        assert conn.recv(1 << 16) == b""  # it sent no READY: it left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()


# -- the key stays secret ------------------------------------------------------------------------


def test_key_never_in_argv_environ_logs_or_error_messages(tmp_path, caplog):
    # argv and environ of the workers: tests/test_executor_basic.py::
    # test_key_never_in_argv_or_environ_and_socket_dir_private checks those too
    caplog.set_level(logging.DEBUG)
    logs = tmp_path / "logs"
    with EnvExecutor(2, log_dir=logs, output="logging", retries=0) as ex:
        ex.submit(basic.print_lines, 3).result(T)
        key = ex._pool.listener.key
        texts = []
        for fut in (
            ex.submit(basic.raise_value_error, "boom"),
            ex.submit(basic.exit_with, 3),
            ex.submit(basic.system_exit, 2),
        ):
            exc = fut.exception(T)
            texts += [str(exc), repr(exc), str(exc.__cause__)]
        sock, nonce = _connect(ex)
        sock.sendall(_auth_frame(wire.digest(os.urandom(32), nonce)))
        assert _dropped(sock)
        pids = list(ex._processes)
        for pid in pids:
            for name in ("cmdline", "environ"):
                texts.append(Path(f"/proc/{pid}/{name}").read_bytes().decode("latin-1"))
        mp_key = bytes(__import__("multiprocessing").current_process().authkey)
    texts.append(caplog.text)
    texts += [p.read_text(errors="replace") for p in logs.iterdir()]
    assert any("WorkerCrashedError" in t or "exit code 3" in t for t in texts)
    for secret in (key, mp_key):
        for form in (secret.hex(), repr(secret), secret.decode("latin-1")):
            for text in texts:
                assert form not in text


# -- modes ------------------------------------------------------------------------------------------


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_files_and_directories_whatever_the_umask(store):
    old = os.umask(0)  # the most permissive umask: modes must be set explicitly
    try:
        with EnvExecutor(1) as ex:
            ex.submit(basic.print_lines, 1).result(T)
            listener = ex._pool.listener
            assert _mode(listener.directory) == 0o700
            assert os.listdir(listener.directory) == ["s"]
            log_dir = ex._pool.log_dir
            assert _mode(log_dir) == 0o700
            log_files = list(Path(log_dir).iterdir())
            assert log_files and all(_mode(p) == 0o600 for p in log_files)
        with store.lock("0123456789abcdef"):
            assert _mode(store.root / "locks" / "0123456789abcdef.lock") == 0o600
        assert _mode(store.state_dir) == 0o700
    finally:
        os.umask(old)


# -- no shell -----------------------------------------------------------------------------------------

_SHELL_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
    ("asyncio", "create_subprocess_shell"),
}


def _constant_names(tree: ast.AST) -> set[str]:
    """Names only ever bound to string constants (or sums of them) in this module."""
    bound: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    ok = node.value is not None and _is_constant_text(node.value)
                    bound[target.id] = bound.get(target.id, True) and ok
    return {name for name, ok in bound.items() if ok}


def _is_constant_text(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_constant_text(node.left) and _is_constant_text(node.right)
    return False


def _shell_problems(source: str, where: str) -> list[str]:
    """`shell=`, os.system & co., and `-c PROGRAM` whose program is not a constant."""
    tree = ast.parse(source, where)
    constants = _constant_names(tree)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    problems.append(f"{where}:{node.lineno}: shell=")
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in _SHELL_CALLS
            ):
                problems.append(f"{where}:{node.lineno}: {func.value.id}.{func.attr}")
        if isinstance(node, ast.List | ast.Tuple):
            for item, program in zip(node.elts, node.elts[1:], strict=False):
                if not (isinstance(item, ast.Constant) and item.value == "-c"):
                    continue
                if not (
                    _is_constant_text(program)
                    or (isinstance(program, ast.Name) and program.id in constants)
                ):
                    problems.append(f"{where}:{node.lineno}: -c with a computed program")
    return problems


def test_no_shell_and_no_user_strings_in_code_arguments():
    """No `shell=True`, no os.system & co.; every `-c PROGRAM` is a constant of its module."""
    problems = []
    files = [p for p in sorted(SRC.rglob("*.py")) if "_vendor" not in p.parts]
    assert len(files) > 20
    for path in files:
        problems += _shell_problems(path.read_text(), str(path.relative_to(SRC.parent)))
    assert problems == []


def test_the_shell_scan_sees_each_forbidden_pattern():
    bad = (
        "import os, subprocess\n"
        "PROGRAM = 'print(1)'\n"
        "def f(user):\n"
        "    subprocess.run(user, shell=True)\n"
        "    os.system(user)\n"
        "    subprocess.run(['python', '-c', user])\n"
        "    subprocess.run(['python', '-c', PROGRAM])\n"  # fine: a constant
        "    subprocess.run(['python', '-c', 'print(2)'], shell=False)\n"  # fine\n"
    )
    assert [p.split(": ", 1)[1] for p in _shell_problems(bad, "bad.py")] == [
        "shell=",
        "os.system",
        "-c with a computed program",
    ]


def test_run_refuses_a_command_string():
    with pytest.raises(TypeError, match="no shell is used"):
        bayou.run(bayou.Env.current(), "echo hello; rm -rf /")


def test_a_killed_callers_socket_directory_is_swept_at_the_next_start(tmp_path):
    """SIGKILL gives a caller no chance to remove its `bayou-sock-*` directory: the next
    process that starts a pool removes it (once it is old enough not to be a caller
    that is just starting, and nothing listens on its socket)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    start = (
        "import os, bayou\n"
        "ex = bayou.EnvExecutor(1)\n"
        "print(ex.submit(os.getpid).result(60), ex._pool.listener.directory, flush=True)\n"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", start + "import time; time.sleep(600)\n"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        _, directory = caller.stdout.readline().split()
    finally:
        caller.kill()
        caller.wait()
    assert os.path.isdir(directory)  # left behind by the killed caller
    old = time.time() - 3600
    os.utime(directory, (old, old))
    mine = subprocess.run(
        [sys.executable, "-c", start], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert mine.returncode == 0, mine.stderr
    assert not os.path.exists(directory)
    assert not os.path.exists(mine.stdout.split()[1])  # and its own went at exit
