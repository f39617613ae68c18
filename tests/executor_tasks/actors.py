"""Classes the actor tests build in envs (Python 3.8+, stdlib only; numpy when the env
has it). Importable by reference, so an env of another Python can build them."""

import os
import re
import time
import uuid


class Accumulator:
    """State that a test can check call by call: which object (`gen`), and the sum."""

    def __init__(self, start=0, *, label="acc"):
        self.total = start
        self.label = label
        self.gen = uuid.uuid4().hex
        self.history = []

    def add(self, value):
        self.total += value
        self.history.append(value)
        return self.total

    def state(self):
        return {"gen": self.gen, "total": self.total, "pid": os.getpid(), "label": self.label}

    def history_length(self):
        return len(self.history)

    def fail(self, message):
        raise ValueError(message)

    def die(self, code=3):
        os._exit(code)

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    def hold_gil(self):
        re.match(r"(a+)+$", "a" * 40 + "b")  # C code that never releases the GIL

    def getenv(self, name):
        return os.environ.get(name)

    def versions(self):
        import sys

        try:
            import numpy
        except ImportError:
            numpy = None
        return sys.version_info[:2], getattr(numpy, "__version__", None)

    def with_progress(self, steps):
        import bayou

        for i in range(steps):
            bayou.report_progress(i + 1, steps, f"step {i + 1}")
            time.sleep(0.02)
        return steps

    def until_cancelled(self, seconds):
        import bayou

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if bayou.cancel_requested():
                return "stopped"
            time.sleep(0.01)
        return "ran out"


class Model:
    """A 'model': slow to build, fast to call; holds a numpy array when the env has numpy."""

    def __init__(self, size, scale=2.0):
        import numpy

        self.weights = numpy.arange(size, dtype="float64") * scale

    def predict(self, x):
        return self.weights * x

    def numpy_version(self):
        import numpy

        return numpy.__version__


class BrokenConstructor:
    def __init__(self, message):
        raise KeyError(message)


class DyingConstructor:
    def __init__(self):
        os._exit(7)
