"""Global names a pickle holds, mapped to what this interpreter calls them.

Shared by the caller (``bayou.worker.names``) and the worker
(``_bayou_worker.names``), so it is stdlib-only and runs on Python 3.8+.

A pickle names every class and function it needs as ``module`` + ``name``
(the GLOBAL and STACK_GLOBAL opcodes). The two sides of an env boundary can
call the same thing by different names, and an unpickler's ``find_class``
asks `resolve` before it imports anything::

    pickle written by ──▶ names in the pickle ──▶ resolve() here ──▶ find_class
    numpy 2.x             numpy._core.numeric     numpy 1.x: numpy.core.numeric
    numpy 1.x             numpy.core.multiarray   numpy 2.x: numpy._core.multiarray
    the caller            cloudpickle.*           worker: _bayou_vendor_cloudpickle.*
    a worker              _bayou_vendor_*.*       caller: the public name
    the caller            __main__.f              worker: the caller's script (mainscript)
    a worker              __mp_main__.Point       caller: __main__.Point

numpy 2 renamed its private ``numpy.core`` package to ``numpy._core``. Arrays,
dtypes and scalars pickle through a few of its functions (``_reconstruct``,
``_frombuffer``, ``scalar``), whose arguments are the same in both: the
dtype's description, the shape, the order and the buffer. So mapping the
module name is all it takes, and the bytes of the pickle (and the zero-copy
out-of-band buffers) are those of the same-version path. numpy 1.26 has a
partial ``numpy._core`` (no ``numeric``), so the test is the major version,
not whether ``numpy._core`` imports. numpy 2 still loads ``numpy.core``
names, but some with a DeprecationWarning: the mapping avoids it.

`mentions` is the cheap test that decides whether a pickle needs this at all
(the C unpickler without a ``find_class`` hook is faster).
"""

from __future__ import annotations

import re

MAIN = "__main__"
WORKER_MAIN = "__mp_main__"  # what the worker calls the caller's script, as spawn does
VENDOR_PREFIX = "_bayou_vendor_"

_TOKENS = re.compile(rb"cloudpickle|numpy\.(?:_core|core)|__main__|__mp_main__|_bayou_vendor_")
_numpy_major = None


def mentions(data, start=0, end=None) -> bool:
    """Whether `data[start:end]` may name something `resolve` maps."""
    if end is None:
        end = len(data)
    return _TOKENS.search(data, start, end) is not None


def numpy_major():
    """The major version of the numpy this interpreter imports (it is imported: the
    pickle that asks needs it anyway); None without numpy."""
    global _numpy_major
    if _numpy_major is None:
        try:
            import numpy
        except ImportError:
            return None
        _numpy_major = int(numpy.__version__.split(".")[0])
    return _numpy_major


def numpy_module(module: str) -> str:
    """`module` as this interpreter's numpy calls it."""
    if module == "numpy._core" or module.startswith("numpy._core."):
        major = numpy_major()
        if major is not None and major < 2:
            return "numpy.core" + module[len("numpy._core") :]
    elif module == "numpy.core" or module.startswith("numpy.core."):
        major = numpy_major()
        if major is not None and major >= 2:
            return "numpy._core" + module[len("numpy.core") :]
    return module


def vendored(module: str) -> str:
    """The worker's private copy for a caller's ``cloudpickle`` name."""
    if module == "cloudpickle" or module.startswith("cloudpickle."):
        return VENDOR_PREFIX + module
    return module


def public(module: str) -> str:
    """The caller's name for a worker's private ``_bayou_vendor_*`` name."""
    if module.startswith(VENDOR_PREFIX):
        return module[len(VENDOR_PREFIX) :]
    return module
