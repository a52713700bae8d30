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
from ..progress import Progress, report

CHUNK = 16 << 20


def _as_words(data: memoryview) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    return raw.view(np.uint64) if len(raw) % 8 == 0 else raw


def _zero_run(disk: Disk, pos: int, length: int) -> tuple[bool, int]:
    """``(reads as zeros?, how far that answer holds)`` from ``pos``."""
    if pos >= disk.size:
        return True, length
    depth, status, run = disk.block_status(pos, min(length, disk.size - pos))
    return depth is None or status.reads_zero, run


def _first_nonzero(data: memoryview) -> int:
    return int(np.flatnonzero(np.frombuffer(data, dtype=np.uint8))[0])


def first_difference(a: Disk, b: Disk, progress: Progress | None = None) -> int | None:
    """The first offset where ``a`` and ``b`` differ, or None when they are equal."""
    end = max(a.size, b.size)
    buf_a, buf_b = memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK))
    pos = 0
    while pos < end:
        report(progress, pos, end, "comparing")
        zero_a, run_a = _zero_run(a, pos, min(CHUNK, end - pos))
        zero_b, run_b = _zero_run(b, pos, min(CHUNK, end - pos))
        n = min(run_a, run_b)
        if zero_a and zero_b:
            pos += n
            continue
        if zero_a or zero_b:
            disk, buf = (b, buf_b) if zero_a else (a, buf_a)
            view = buf[:n]
            disk.read_into(pos, view)
            if not is_zero(view):
                return pos + _first_nonzero(view)
        else:
            view_a, view_b = buf_a[:n], buf_b[:n]
            a.read_into(pos, view_a)
            b.read_into(pos, view_b)
            words_a, words_b = _as_words(view_a), _as_words(view_b)
            if not np.array_equal(words_a, words_b):
                diff = np.frombuffer(view_a, np.uint8) != np.frombuffer(view_b, np.uint8)
                return pos + int(np.flatnonzero(diff)[0])
        pos += n
    report(progress, end, end, "comparing")
    return None
