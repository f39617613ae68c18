"""Task functions for the transport tests: big buffers in, big buffers out.

numpy is imported inside the functions, so the module imports in any worker.
"""

import os
import pickle
import signal
import time


def identity(x):
    return x


def describe(arr):
    """What arrived: shape, dtype, order, writability, checksum."""
    return (
        arr.shape,
        str(arr.dtype),
        bool(arr.flags.f_contiguous and not arr.flags.c_contiguous),
        bool(arr.flags.writeable),
        float(arr.sum()),
    )


def add_inplace(arr, value):
    """Change the argument in place and return it (the caller's copy must not change)."""
    arr += value
    return arr


def make(n, value):
    import numpy as np

    return np.full(n, value, dtype=np.float64)


def several(arrays):
    return [a * 2 for a in arrays], b"x" * 10, bytearray(b"y" * 200_000)


def raise_about(arr):
    raise ValueError("sum is " + str(arr.sum()))


def kill_self_holding(arr):
    arr.sum()  # the mapping is in use
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_holding(arr, seconds):
    arr.sum()
    time.sleep(seconds)
    return arr.shape


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("not today")


def unpicklable_result(arr):
    return [arr, Unpicklable()]


def maybe_fail(x):
    if x == 57:
        raise KeyError(x)
    return x * 2


def maybe_unpicklable(x):
    return Unpicklable() if x == 33 else x
