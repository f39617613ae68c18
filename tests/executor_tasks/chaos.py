"""The idempotent task the chaos run hammers.

`work(i)` returns a value computed from its inputs alone, so running it again
after its worker was killed gives the same answer: the caller can check every
result without knowing how many attempts it took. Big arguments and results
are numpy arrays (imported only when one is asked for), which travel out of
band through shared memory, so segments are in flight when workers die; the
task answers with a digest of the argument's bytes, so a corrupted transfer
shows as a wrong result.
"""

import hashlib
import os
import time


def _digest(data) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def expected(i, pad_digest="", reply_bytes=0):
    """What `work` returns for task `i` (`pad_digest`: `digest_of(pad)`), in comparable form."""
    return i, _digest(str(i).encode()), pad_digest, bytes([i % 251]) * reply_bytes


def digest_of(pad) -> str:
    return "" if pad is None else _digest(memoryview(pad))


def comparable(result):
    """`work`'s result with its array turned into bytes."""
    i, digest, pad_digest, reply = result
    return i, digest, pad_digest, bytes(reply)


def work(i, pad=None, seconds=0.002, reply_bytes=0):
    """Sleep `seconds` (a task that takes some time, so kills land mid-task) and answer."""
    time.sleep(seconds)
    reply = b""
    if reply_bytes:
        import numpy

        reply = numpy.full(reply_bytes, i % 251, dtype=numpy.uint8)
    return i, _digest(str(i).encode()), digest_of(pad), reply


def warm_up():
    """The pool's initializer: import numpy before the first task, as a pipeline would."""
    import numpy  # noqa: F401


def getpid():
    return os.getpid()
