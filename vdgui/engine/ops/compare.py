"""Comparing the virtual contents of two chains (``vdimg compare``).

Both chains are walked by what their images say they hold: a range that reads as
zeros in both is skipped without reading; a range that is zero on one side only
needs the other side read and checked for zeros; the rest is read on both sides,
exactly the run where neither side's status changes, and compared.  Past the end
of the smaller disk its content counts as zeros.
"""

from __future__ import annotations

import numpy as np

from ..blockmap import is_zero
from ..container import Disk
from ..io import IO_CHUNK, buffer
from ..progress import Progress, report
from ..types import Status

#: Bytes of status asked for at once; data is read and compared IO_CHUNK at a time.
CHUNK = 16 << 20


def _as_words(data: memoryview) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    return raw.view(np.uint64) if len(raw) % 8 == 0 else raw


def _holder(disk: Disk, pos: int, length: int) -> tuple[int | None, int]:
    """``(image holding data at pos, or None where the disk reads as zeros; how far
    that answer holds)``."""
    if pos >= disk.size:
        return None, length
    depth, status, run = disk.resolve(pos, min(length, disk.size - pos), len(disk) - 1)
    return (depth if status is Status.DATA else None), run


def _read(disk: Disk, depth: int, pos: int, view: memoryview) -> None:
    """Read what :func:`_holder` found at image ``depth`` (through the cache, if the
    disk has one, as :meth:`Disk.read_into` would)."""
    if disk.cache is None:
        disk.image(depth).read_into(pos, view)
    else:
        disk.read_into(pos, view)


def _first_nonzero(data: memoryview) -> int:
    return int(np.flatnonzero(np.frombuffer(data, dtype=np.uint8))[0])


def first_difference(a: Disk, b: Disk, progress: Progress | None = None) -> int | None:
    """The first offset where ``a`` and ``b`` differ, or None when they are equal."""
    end = max(a.size, b.size)
    buf_a, buf_b = buffer(IO_CHUNK), buffer(IO_CHUNK)
    with a.lock, b.lock:
        pos = 0
        while pos < end:
            report(progress, pos, end, "comparing")
            depth_a, run_a = _holder(a, pos, min(CHUNK, end - pos))
            depth_b, run_b = _holder(b, pos, min(CHUNK, end - pos))
            n = min(run_a, run_b)
            if depth_a is not None or depth_b is not None:
                diff = _compare_run(a, depth_a, buf_a, b, depth_b, buf_b, pos, pos + n)
                if diff is not None:
                    return diff
            pos += n
    report(progress, end, end, "comparing")
    return None


def _compare_run(a: Disk, depth_a: int | None, buf_a: memoryview, b: Disk,
                 depth_b: int | None, buf_b: memoryview, start: int, stop: int) -> int | None:
    """The first difference in ``[start, stop)``, where neither side's holder changes
    and at least one side holds data."""
    for pos in range(start, stop, IO_CHUNK):
        n = min(IO_CHUNK, stop - pos)
        if depth_a is None or depth_b is None:
            disk, depth, view = (b, depth_b, buf_b[:n]) if depth_a is None else (a, depth_a,
                                                                                 buf_a[:n])
            _read(disk, depth, pos, view)
            if not is_zero(view):
                return pos + _first_nonzero(view)
        else:
            view_a, view_b = buf_a[:n], buf_b[:n]
            _read(a, depth_a, pos, view_a)
            _read(b, depth_b, pos, view_b)
            if not np.array_equal(_as_words(view_a), _as_words(view_b)):
                diff = np.frombuffer(view_a, np.uint8) != np.frombuffer(view_b, np.uint8)
                return pos + int(np.flatnonzero(diff)[0])
    return None
