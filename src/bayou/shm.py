"""The caller's shared-memory segments: a pool of warm segments, leased to tasks.

Fresh shared memory is slow to fill (the kernel allocates and zeroes every
page: about 40 ms per 100 MB here, more than the copy itself), so the caller
keeps the segments it made and reuses them. Each `Segment` is an anonymous
memfd (`bayou.worker.shm`): filled with ``pwrite`` while fresh, then through
a persistent writable mapping in the caller (a plain memcpy, no page faults).

A task with big arguments leases two: the *args* segment (its out-of-band
buffers are copied in once, at submit, so the caller may change its arrays
afterwards, as with any submitted argument) and a *reply* segment of the
same size, which the worker fills with the result's buffers when they fit.
A segment returns to the free list only when nobody can see it any more:

* args: the task is settled and the worker has reported its mapping gone
  (RESULT meta), or the worker died. If the task's code kept a view, the
  caller drops its descriptor instead: the worker's mapping keeps the memory
  alive, the kernel frees it with that mapping.
* reply: the worker filled it and unmapped it before sending its RESULT; the
  result objects view a fresh caller mapping of it, and the segment comes
  back when that mapping dies (a weak-reference callback, which only queues
  it: callbacks run at arbitrary points, so they take no lock).

Free segments not reused within `KEEP_SECONDS`, or beyond `MAX_FREE_BYTES`,
are closed (`trim`, called by the pool's supervisor). Above `max_live`
descriptors, `stage` returns None and the buffers travel inline instead.
Nothing outlives the processes: memfds have no name, so a killed caller or
worker leaves nothing behind (see the worker module).
"""

from __future__ import annotations

import collections
import itertools
import mmap
import os
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .worker import shm as _shm

ENABLED = _shm.ENABLED
THRESHOLD = _shm.THRESHOLD
KEEP_SECONDS = 10.0
MAX_FREE_BYTES = 1 << 30
MAX_FREE_SEGMENTS = 16
# Result buffers mapped at once. A mapping costs a descriptor while its objects
# live (Python's mmap keeps a dup), and a program may keep thousands of results:
# past this many, results are copied out of their segment into private memory.
MAX_MAPPED_RESULTS = 64


def _max_live() -> int:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY:
        soft = 4096
    return max(8, min(1024, soft // 4))


@dataclass(eq=False)
class Segment:
    """One memfd of the pool and the caller's persistent mapping of it."""

    id: int
    fd: int
    size: int
    mm: mmap.mmap | None = None
    leased: bool = True  # held by a task or by result objects
    in_worker: bool = False  # a worker may still map it
    written: bool = False  # its pages exist (a fresh segment is filled with pwrite instead)
    last_used: float = field(default_factory=time.monotonic)


class SegmentPool:
    """The segments of one executor's pool."""

    def __init__(self, name: str | None = None, max_live: int | None = None) -> None:
        self.name = name or _shm.segment_name(os.getpid())
        self.max_live = max_live if max_live is not None else _max_live()
        self._lock = threading.Lock()
        self._segments: dict[int, Segment] = {}
        self._free: list[Segment] = []
        self._returned: collections.deque[Segment] = collections.deque()
        self._ids = itertools.count(1)
        self._closed = False
        self.mapped = 0  # result mappings alive (changed without a lock: an estimate)

    # -- leasing ----------------------------------------------------------------------

    def acquire(self, size: int) -> Segment | None:
        """A segment of at least `size` bytes, reused when one fits, else new; None if over budget."""
        size = max(size, 1)
        with self._lock:
            self._fold_returned()
            if self._closed:
                return None
            best = None
            for seg in self._free:
                if size <= seg.size <= 2 * size + (1 << 20) and (
                    best is None or seg.size < best.size
                ):
                    best = seg
            if best is not None:
                self._free.remove(best)
                best.leased = True
                return best
            if len(self._segments) >= self.max_live:
                if not self._free:
                    return None
                self._discard(self._free.pop(0))  # make room: the oldest free one
            seg_size = size + (-size % mmap.PAGESIZE)
            try:
                fd = _shm.create(self.name, seg_size)
            except OSError:
                return None
            seg = Segment(next(self._ids), fd, seg_size)
            self._segments[seg.id] = seg
            return seg

    def stage(self, buffers: Sequence[memoryview]) -> tuple[Segment, tuple, int] | None:
        """Copy `buffers` into a leased segment: (segment, places, size), or None."""
        places, size = _shm.layout([b.nbytes for b in buffers])
        seg = self.acquire(size)
        if seg is None:
            return None
        try:
            if not seg.written:  # fresh pages: pwrite beats faulting them in
                _shm.write_at(seg.fd, buffers, places)
                seg.written = True
            else:  # warm pages: a plain memcpy through the persistent mapping
                if seg.mm is None:
                    flags = mmap.MAP_SHARED | _shm.MAP_POPULATE
                    seg.mm = mmap.mmap(seg.fd, seg.size, flags=flags)
                mm = seg.mm
                for buf, (offset, n) in zip(buffers, places, strict=True):
                    mm[offset : offset + n] = buf
        except BaseException:
            self.settle(seg)
            raise
        return seg, places, size

    def settle(self, seg: Segment) -> None:
        """The lease ends: back to the free list, or closed if a worker may still see it."""
        with self._lock:
            if seg.id not in self._segments:
                return
            if seg.in_worker or self._closed:
                self._discard(seg)
                return
            seg.leased = False
            seg.last_used = time.monotonic()
            self._free.append(seg)
            self._trim_locked(seg.last_used)

    def worker_released(self, ids: Sequence[int]) -> None:
        """A worker reports that its mappings of these segments are gone."""
        for seg_id in ids:
            seg = self._segments.get(seg_id)
            if seg is not None:
                seg.in_worker = False

    def map_reply(self, seg: Segment, size: int, places: tuple) -> list[memoryview]:
        """Views of a reply segment the worker filled; the segment returns when they die.

        Past `MAX_MAPPED_RESULTS` live mappings, the buffers are copied out
        and the segment returns at once.
        """
        seg.in_worker = False
        seg.written = True
        if self.mapped >= MAX_MAPPED_RESULTS:
            try:
                return _shm.read_copy(seg.fd, size, places)
            finally:
                self.settle(seg)
        self.mapped += 1
        return _shm.map_views(seg.fd, size, places, False, lambda: self._give_back(seg))

    def map_foreign(self, fd: int, size: int, places: tuple) -> list[memoryview]:
        """Views of a segment a worker made for a result (its descriptor is closed here)."""
        try:
            if self.mapped >= MAX_MAPPED_RESULTS:
                return _shm.read_copy(fd, size, places)
            self.mapped += 1
            return _shm.map_views(fd, size, places, False, self._unmapped)
        finally:
            os.close(fd)

    def _unmapped(self) -> None:
        self.mapped -= 1

    def _give_back(self, seg: Segment) -> None:
        """A reply mapping died (weakref callback: any thread, any moment, so no lock)."""
        self.mapped -= 1
        self._returned.append(seg)
        if self._closed:  # nobody will fold it in: close it now
            while True:
                try:
                    seg = self._returned.popleft()
                except IndexError:
                    return
                self._segments.pop(seg.id, None)
                self._close_segment(seg)

    # -- housekeeping ---------------------------------------------------------------------

    def _fold_returned(self) -> None:
        while self._returned:
            seg = self._returned.popleft()
            if seg.id in self._segments:
                if self._closed:
                    self._discard(seg)
                else:
                    seg.leased = False
                    seg.last_used = time.monotonic()
                    self._free.append(seg)

    def trim(self) -> None:
        """Close free segments unused for KEEP_SECONDS or beyond the free-memory cap."""
        with self._lock:
            self._fold_returned()
            self._trim_locked(time.monotonic())

    def _trim_locked(self, now: float) -> None:
        free = self._free
        if not free:
            return
        free.sort(key=lambda s: s.last_used)
        total = sum(s.size for s in free)
        while free and (
            now - free[0].last_used > KEEP_SECONDS
            or total > MAX_FREE_BYTES
            or len(free) > MAX_FREE_SEGMENTS
        ):
            seg = free.pop(0)
            total -= seg.size
            self._discard(seg)

    def _discard(self, seg: Segment) -> None:
        self._segments.pop(seg.id, None)
        self._close_segment(seg)

    @staticmethod
    def _close_segment(seg: Segment) -> None:
        if seg.mm is not None:
            try:
                seg.mm.close()
            except BufferError:
                pass  # a view is alive; the mapping goes with it
            seg.mm = None
        try:
            os.close(seg.fd)
        except OSError:
            pass

    def live(self) -> int:
        """Segments with an open descriptor (leased or free)."""
        return len(self._segments)

    def close(self) -> None:
        """Close every free segment now; leased ones close when their lease ends."""
        with self._lock:
            self._closed = True
            self._fold_returned()
            for seg in self._free:
                self._discard(seg)
            self._free.clear()


def segments_held(pid: int, caller_pid: int | None = None) -> list[str]:
    """The bayou segments process `pid` holds open or mapped, as readable lines.

    Only segments made for `caller_pid`'s pools (its segment name), or for
    any caller's when it is None. Linux only (``/proc``); empty when `pid` is
    gone or not ours to read. Tests and the chaos benchmark use it to prove
    that nothing is left behind.
    """
    tag = "/memfd:" + (_shm.segment_name(caller_pid) + " " if caller_pid else "bayou-")
    held = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (target + " ").startswith(tag):
                held.append(f"fd {fd}: {target}")
        with open(f"/proc/{pid}/maps") as maps:
            held += [f"map: {line.strip()}" for line in maps if tag in line]
    except OSError:
        pass
    return held
