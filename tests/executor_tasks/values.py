"""Values and callables that cross the env boundary, for tests/test_boundary_matrix.py.

Runs in the caller (Python 3.10+, numpy 2) and in workers of Python 3.9+ with
numpy 1.2x or 2.x, so it is plain Python 3.8 syntax, and numpy is imported
inside the functions (an env of the matrix may lack it).

`make(name)` builds the same value on either side from its name; `describe`
turns a value into builtins that compare equal across numpy versions (dtype
descr, shape, layout flags, the bytes), so "the worker saw what the caller
sent" is `describe` in the worker == `describe` in the caller.
"""

import functools
import hashlib
import math


class Holder:
    """A user object with arrays inside, sent by reference to its class."""

    def __init__(self, array, extra):
        self.array = array
        self.extra = extra


def _structured(np):
    dtype = np.dtype([("id", "<i4"), ("pos", "<f8", (2,)), ("name", "S4")])
    return np.array([(1, (0.5, 1.5), b"ab"), (2, (2.5, 3.5), b"cd")], dtype=dtype)


def _arrays(np):
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    return {
        "bool": np.array([True, False, True]),
        "int8": np.arange(-3, 3, dtype=np.int8),
        "uint16": np.arange(5, dtype=np.uint16),
        "int64": np.arange(6, dtype=np.int64) * (1 << 40),
        "float16": np.linspace(0, 1, 5).astype(np.float16),
        "float32": np.linspace(0, 1, 7, dtype=np.float32),
        "complex128": np.arange(4) * (1 + 2j),
        "big-endian": np.arange(4, dtype=">i4"),
        "structured": _structured(np),
        "datetime64": np.array(["2024-01-01T00:00", "2026-12-07T12:30"], dtype="M8[ns]"),
        "timedelta64": np.array([1, 2, 3], dtype="m8[s]"),
        "object": np.array([1, "two", (3,), None], dtype=object),
        "unicode": np.array(["a", "bée", "ccc"]),
        "bytes": np.array([b"a", b"bb"], dtype="S2"),
        "fortran": np.asfortranarray(base),
        "strided view": base[::2, 1::3],
        "transposed": base.T,
        "0-d": np.array(3.25),
        "empty": np.empty((0, 3), dtype=np.int32),
        "big": np.arange(3_000_000, dtype=np.float64).reshape(1000, 3000),
        "big fortran": np.asfortranarray(np.arange(1_000_000, dtype=np.int32).reshape(1000, 1000)),
    }


def _scalars(np):
    return {
        "float64 scalar": np.float64(1.5),
        "int32 scalar": np.int32(7),
        "bool scalar": np.bool_(True),
        "complex64 scalar": np.complex64(1 - 2j),
        "datetime64 scalar": np.datetime64("2026-12-07", "D"),
        "str scalar": np.str_("wörd"),
        "void scalar": _structured(np)[0],
    }


def _nested(np):
    return {
        "list of arrays": [np.arange(3), np.ones((2, 2), dtype=np.float32)],
        "dict of arrays and scalars": {"a": np.arange(3), "s": np.float64(2.0), "n": 4},
        "user object": Holder(np.arange(6).reshape(2, 3), np.int64(9)),
    }


def names():
    import numpy as np

    return sorted(list(_arrays(np)) + list(_scalars(np)) + list(_nested(np)))


def make(name):
    import numpy as np

    for group in (_arrays, _scalars, _nested):
        values = group(np)
        if name in values:
            return values[name]
    raise KeyError(name)


def describe(value):
    """Builtins standing for `value`, equal on every numpy and Python version."""
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            content = repr(value.tolist())
        else:
            content = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return (
            "ndarray",
            str(value.dtype.descr),
            value.shape,
            # the order pickle keeps (a strided view arrives C-contiguous, as with PPE)
            "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C",
            content,
        )
    if isinstance(value, np.generic):
        return ("scalar", str(value.dtype.descr), value.tobytes())  # numpy 2 renamed bool_
    if isinstance(value, dict):
        return ("dict", tuple((k, describe(v)) for k, v in sorted(value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(describe(v) for v in value))
    if isinstance(value, Holder):
        return ("Holder", describe(value.array), describe(value.extra))
    return ("plain", repr(value))


def environment():
    """(Python X.Y, numpy version) where this runs."""
    import sys

    import numpy

    return tuple(sys.version_info[:2]), numpy.__version__


def echo(value):
    return value


def buffer_owner(array):
    """The type of what finally owns `array`'s memory (``mmap`` for shared memory)."""
    owner = array
    while getattr(owner, "base", None) is not None:
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    return type(owner).__name__


def owner_and_echo(array):
    return buffer_owner(array), array


def describe_both(value):
    """What the worker saw, and the value back (a round trip)."""
    return describe(value), value


class Scaler:
    """Methods of an importable class: bound, class, static, and of a nested class."""

    def __init__(self, factor):
        self.factor = factor
        self.calls = 0

    def scale(self, array):
        self.calls += 1
        return array * self.factor, self.calls

    @classmethod
    def doubling(cls):
        return cls(2)

    @classmethod
    def factor_of(cls, factor):
        return cls(factor).factor

    @staticmethod
    def plus_one(x):
        return x + 1

    class Inner:
        def __init__(self, offset=0):
            self.offset = offset

        def shift(self, x):
            return x + self.offset

        @classmethod
        def offset_of(cls, offset):
            return cls(offset).offset


def callables():
    """name -> (callable, args, expected result), the same on every version."""
    scaler = Scaler(3)
    return {
        "module function": (describe, ([1, 2],), describe([1, 2])),
        "bound method": (Scaler(3).scale, ([1],), ([1, 1, 1], 1)),
        "classmethod": (Scaler.factor_of, (5,), 5),
        "staticmethod": (Scaler.plus_one, (1,), 2),
        "method of a nested class": (Scaler.Inner(10).shift, (1,), 11),
        "classmethod of a nested class": (Scaler.Inner.offset_of, (4,), 4),
        "partial of a bound method": (functools.partial(scaler.scale), ([2],), ([2, 2, 2], 1)),
        "partial of a classmethod": (functools.partial(Scaler.factor_of, 6), (), 6),
        "partial of a module function": (functools.partial(echo, 8), (), 8),
        "builtin": (len, ([1, 2, 3],), 3),
        "method of a builtin": ("a-b-c".split, ("-",), ["a", "b", "c"]),
        "method descriptor": (str.upper, ("abc",), "ABC"),
        "builtin classmethod": (dict.fromkeys, ("ab", 0), {"a": 0, "b": 0}),
        "stdlib function": (math.hypot, (3, 4), 5.0),
    }


def import_and_make(directory, module_name):
    """An instance of a class only this worker can import."""
    import importlib
    import sys

    sys.path.insert(0, directory)
    try:
        return importlib.import_module(module_name).Thing()
    finally:
        sys.path.remove(directory)
