"""Task functions that run in workers of any Python 3.8+ (stdlib only)."""

import os
import sys
import time


def version():
    return tuple(sys.version_info[:3]), sys.executable


def add(a, b):
    return a + b


def getpid():
    return os.getpid()


def echo(*args, **kwargs):
    return args, kwargs


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def call(fn, *args):
    return fn(*args)


def exit_with(code):
    os._exit(code)


def kill_self(sig):
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault():
    import ctypes

    ctypes.string_at(0)


def maybe_crash(i, bad, how="exit"):
    if i == bad:
        if how == "exit":
            os._exit(3)
        if how == "kill":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        segfault()
    return i * i


def hold_gil(seconds):
    """Run C code that never releases the GIL (catastrophic regex backtracking)."""
    import re

    re.match(r"(a+)+$", "a" * 40 + "b")
    return "unreachable"


def print_lines(n):
    for i in range(n):
        print("out line", i)
        print("err line", i, file=sys.stderr)
    return n


def write_raw(text, stream="out"):
    """Write `text` as is (no newline added) to stdout or stderr, and flush."""
    target = sys.stdout if stream == "out" else sys.stderr
    target.write(text)
    target.flush()
    return len(text)


def authkey():
    import multiprocessing

    return bytes(multiprocessing.current_process().authkey)


class Dummy:
    pass


def make_dummy(_):
    return Dummy()


class TouchOnDelete:
    """Creates `path` when garbage collected: shows when a worker let go of an argument."""

    def __init__(self, path):
        self.path = path

    def __del__(self):
        open(self.path, "w").close()


def touched(obj):
    return os.path.exists(obj.path)


def fail_holding(obj):
    """Raise while `obj` is a local of the failing frame (kept alive by the traceback)."""
    raise RuntimeError("failed while holding " + type(obj).__name__)


def raise_value_error(msg):
    raise ValueError(msg)


class LocalOnlyError(Exception):
    pass


def raise_custom():
    raise LocalOnlyError("custom", 42)


def system_exit(code):
    sys.exit(code)


def keyboard_interrupt():
    raise KeyboardInterrupt


def return_unpicklable():
    import threading

    return threading.Lock()


def allocate(nbytes, hold=5.0):
    data = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        data[i] = 1
    time.sleep(hold)
    return len(data)


def _bayou():
    """`bayou` as user code sees it (the shim in envs without bayou)."""
    import bayou

    return bayou


def report_steps(n, delay=0.06):
    bayou = _bayou()
    for i in range(n):
        bayou.report_progress(i + 1, n, f"step {i + 1}")
        time.sleep(delay)
    return n


def wait_for_cancel(limit):
    bayou = _bayou()

    deadline = time.time() + limit
    while time.time() < deadline:
        if bayou.cancel_requested():
            return "stopped"
        time.sleep(0.01)
    return "not cancelled"


def bayou_kind():
    import bayou

    return bool(getattr(bayou, "__bayou_shim__", False))


def cloudpickle_version():
    import cloudpickle

    return cloudpickle.__version__, cloudpickle.__file__


def sys_path():
    return list(sys.path)


def flaky(marker_path):
    """Crash the first time (no marker yet), succeed afterwards."""
    if not os.path.exists(marker_path):
        open(marker_path, "w").close()
        os._exit(7)
    return "ok"


_init_value = None


def init(value):
    global _init_value
    _init_value = value


def init_fail():
    raise ValueError("error in initializer")


def get_init():
    return _init_value


def make_closure(k):
    return lambda x: x * k


def whoami_parent():
    return os.getppid()


def getenv(name):
    return os.environ.get(name)


_KEPT = []


def keep_memory(nbytes):
    """Grow this worker by `nbytes` for good (a leak), then answer at once."""
    _KEPT.append(bytearray(nbytes))
    return os.getpid()


def rss():
    import psutil

    return psutil.Process().memory_info().rss


def exit_leaving_a_child(code, child_seconds):
    """Exit while a forked child keeps every descriptor of the worker (its socket too) open."""
    if os.fork() == 0:
        time.sleep(child_seconds)
        os._exit(0)
    time.sleep(0.1)
    os._exit(code)


def pid_and_env(name, pause=0.0):
    """(this worker's pid, its value of the variable `name`), after `pause` seconds."""
    import time

    time.sleep(pause)
    return os.getpid(), os.environ.get(name)
