"""Shared-memory segments for large pickle buffers: stdlib only, used by caller and worker.

A segment is an anonymous memory file (``memfd_create``, Linux) handed to the
peer as a descriptor attached to the frame that describes it (SCM_RIGHTS, see
`wire`). It has no name in any file system, so nothing can be left behind:
the kernel frees its memory when the last descriptor and the last mapping are
gone, in whichever process they were and however that process ended (normal
exit, exception, SIGKILL). They show in ``/proc/<pid>/fd`` and
``/proc/<pid>/maps`` as ``/memfd:bayou-<caller pid> (deleted)``.

Data flow of a big argument and a big result::

    caller  pickle(args, protocol 5): PickleBuffers of >= MIN_BUFFER bytes go out of band;
            if they total >= THRESHOLD: memcpy into a pooled segment (bayou.shm), one copy
            TASK_FDS frame + [args fd, reply fd]
    worker  mmap(args fd, MAP_PRIVATE): unpickle with buffers= views, no copy (the task's
            writes stay private); fn(...); pickle(result): its buffers are written once,
            into the caller's reply segment when they fit ("r"), else into a fresh
            segment sent back with RESULT_FDS
    caller  mmap: unpickle with buffers= views, no copy; the mapping lives as long as
            the objects that view it, then the reply segment returns to the pool

Out-of-band buffers that total less than THRESHOLD travel inline in the frame.
"""

from __future__ import annotations

import mmap
import os
import platform
import sys
import weakref

ENABLED = sys.platform.startswith("linux") and hasattr(os, "memfd_create")
MIN_BUFFER = 4096  # smaller PickleBuffers stay in-band: not worth a separate part
THRESHOLD = 64 * 1024  # out-of-band bytes of one message above which a segment is used
SEGMENT_ALIGN = 64
# Page tables filled in one call: far cheaper than a fault per page (and in a VM, an
# exit per fault). Not for private writable mappings: that would copy every page.
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_POPULATE_0x8000 = ("x86_64", "aarch64", "i686", "armv7l")  # Python < 3.10 lacks the constant
if (
    not MAP_POPULATE
    and sys.platform.startswith("linux")
    and platform.machine() in _POPULATE_0x8000
):
    MAP_POPULATE = 0x8000

# weak references with release callbacks, kept alive here
_refs: set[weakref.ref[mmap.mmap]] = set()


def segment_name(caller_pid: int) -> str:
    return "bayou-%d" % caller_pid


def collector(into: list):
    """A pickle ``buffer_callback`` that keeps big buffers out of band, in `into`.

    Buffers of MIN_BUFFER bytes or more are appended (as contiguous byte
    views) and left out of the pickle; smaller ones, and any that is not
    contiguous, are pickled in-band.
    """

    def callback(buf):
        try:
            raw = buf.raw()
        except BufferError:
            return True
        if raw.nbytes < MIN_BUFFER:
            return True
        into.append(raw)
        return False

    return callback


def total(buffers) -> int:
    return sum(b.nbytes for b in buffers)


def layout(sizes) -> tuple:
    """(((offset, size), ...), segment size) with each buffer SEGMENT_ALIGN-aligned."""
    places = []
    pos = 0
    for size in sizes:
        pos += -pos % SEGMENT_ALIGN
        places.append((pos, size))
        pos += size
    return tuple(places), max(pos, 1)


def create(name: str, size: int) -> int:
    """A new segment of `size` bytes; its descriptor (close-on-exec)."""
    fd = os.memfd_create(name, getattr(os, "MFD_CLOEXEC", 1))
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_at(fd: int, buffers, places) -> None:
    """Copy `buffers` into a segment at `places` with ``pwrite``.

    No mapping: for fresh pages that is faster than faulting them in one by
    one, and for pages already there it is as fast, without a mapping to
    set up and tear down.
    """
    for buf, (offset, n) in zip(buffers, places):  # noqa: B905 (3.8: no strict=)
        view = buf
        while n:
            done = os.pwrite(fd, view, offset)
            offset += done
            n -= done
            view = view[done:]


def write_fresh(name: str, buffers) -> tuple:
    """(fd, places, size): `buffers` written once into a new segment."""
    places, size = layout([b.nbytes for b in buffers])
    fd = create(name, size)
    try:
        write_at(fd, buffers, places)
    except BaseException:
        os.close(fd)
        raise
    return fd, places, size


def read_copy(fd: int, size: int, places) -> list:
    """Views of the buffers at `places`, copied out of segment `fd` into private memory."""
    data = bytearray(size)
    view = memoryview(data)
    pos = 0
    while pos < size:
        done = os.preadv(fd, [view[pos:]], pos)
        if not done:
            raise OSError("segment shorter than announced")
        pos += done
    return [view[offset : offset + n] for offset, n in places]


def map_views(fd: int, size: int, places, private: bool, on_release=None) -> list:
    """Views of the buffers at `places` in the segment `fd` (the descriptor stays open).

    The mapping lives as long as any view (or object made from one, such as
    a numpy array) does; `on_release()` is called once it is unmapped.
    `private` maps copy-on-write: writes stay in this process (page by page,
    as they fault); otherwise writes reach the segment, and the mapping is
    populated at once.
    """
    flags = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED | MAP_POPULATE
    mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if on_release is not None:

        def released(ref, on_release=on_release):
            _refs.discard(ref)
            on_release()

        _refs.add(weakref.ref(mm, released))
    view = memoryview(mm)
    del mm
    return [view[offset : offset + n] for offset, n in places]
