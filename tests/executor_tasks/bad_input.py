"""Tasks that misbehave on purpose, for the bad-input catalogue (stdlib only)."""

import os
import sys
import threading


class LockedError(Exception):
    """An exception carrying an attribute that cannot be pickled."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_locked_error():
    raise LockedError("holding a lock")


class TwoArgError(Exception):
    """Pickles (args has one item) but cannot be rebuilt: __init__ wants two."""

    def __init__(self, what, code):
        super().__init__(f"{what} failed with {code}")
        self.code = code


def raise_two_arg_error():
    raise TwoArgError("step", 3)


def recurse(n):
    return recurse(n + 1) + 1


def nested(depth):
    """A result too deeply nested for pickle."""
    value = []
    for _ in range(depth):
        value = [value]
    return value


def fork_and_return(value):
    """os.fork() whose child falls out of the task as the parent does."""
    pid = os.fork()
    return ("child" if pid == 0 else "parent", value)


def fork_child_exits(value):
    """The usual fork pattern: the child does its work and leaves with os._exit."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return value


def write_stdout(total, chunk=1 << 20, newlines=True):
    """Write `total` bytes to fd 1 through sys.stdout, in `chunk`-sized writes."""
    line = ("x" * (chunk - 1) + "\n") if newlines else "x" * chunk
    written = 0
    while written < total:
        sys.stdout.write(line)
        written += len(line)
    sys.stdout.flush()
    return written


def read_stdin(how):
    if how == "input":
        return input("prompt> ")
    return sys.stdin.read()


def stack_overflow():
    """Recursion through C calls past the C stack: a segfault on 3.11, RecursionError on 3.12+."""
    sys.setrecursionlimit(10**7)

    def down(n):
        return list(map(down, [n + 1]))

    return down(0)


def deep_traceback(depth):
    """Raise from `depth` frames down: near the recursion limit, the traceback's
    nested description can be built but not pickled (as in nested joblib calls)."""

    def down(n):
        if n == 0:
            raise ValueError("at the bottom")
        return down(n - 1) + 1

    down(depth)


def raise_builtin_with_unpicklable_arg():
    raise ValueError("bad value", threading.Lock())
