"""``VDDiscardRanges``: ranges the guest no longer uses, released so they read as zeros.

Whole allocation units are released at once (free in a base, a zero block in a
differencing image so the parent's data stays hidden).  Each range is discarded in
one transaction, so a crash leaves it either untouched or fully discarded.  A partially discarded unit
is zeroed on the spot rather than remembered in memory (VirtualBox kept such
partial discards only in memory, so a crash brought old data back), and released
once all of it reads as zeros.  The file is shrunk at the end.
"""

from __future__ import annotations

from typing import Iterable

from ..blockmap import is_zero, zeros
from ..container import Disk
from ..errors import InvalidParameter, NotOpened, NotSupported
from ..formats.base import Image
from ..progress import Progress, part, report
from ..sizes import align_down, align_up
from ..types import OpenFlags, Status


def discard(disk: Disk, ranges: Iterable[tuple[int, int]],
            progress: Progress | None = None) -> None:
    """Discard ``(offset, length)`` ranges of the top image (opened with DISCARD)."""
    ranges = list(ranges)
    with disk.lock:
        if not len(disk):
            raise NotOpened("no image is opened")
        if not ranges:
            raise InvalidParameter("no ranges to discard")
        image = disk.image(-1)
        if not disk.open_flags(-1) & OpenFlags.DISCARD:
            raise NotSupported("the image was not opened with discard enabled", image.path)
        disk._mark_modified()  # visible content changes: a new modification UUID
        top = len(disk) - 1
        steps = part(progress, 0, 0.5)
        for done, (offset, length) in enumerate(ranges):
            report(steps, done, len(ranges), "discarding")
            disk._check_range(offset, length, "a discard")
            with image.transaction():  # each range is discarded whole or not at all
                _discard_range(disk, top, image, offset, length)
            disk.cache_update(offset, length)
        image.pack(part(progress, 0.5, 1))
        report(progress, 1, 1, "done")


def _discard_range(disk: Disk, top: int, image: Image, offset: int, length: int) -> None:
    unit = image.allocation_unit
    end = offset + length
    whole_start, whole_end = align_up(offset, unit), align_down(end, unit)
    if end == image.size:
        whole_end = align_up(end, unit)  # the last, partial unit counts as whole
    if whole_start >= whole_end:
        _zero_partial(disk, top, image, offset, end, unit)
        return
    _zero_partial(disk, top, image, offset, whole_start, unit)
    _release(disk, top, image, whole_start, whole_end)
    _zero_partial(disk, top, image, whole_end, min(end, image.size), unit)


def _release(disk: Disk, top: int, image: Image, start: int, end: int) -> None:
    if top == 0:
        image.unmap(start, end - start, zero=False)
    elif image.can_mark_zero:
        image.unmap(start, end - start, zero=True)
    else:
        disk.write_image(top, start, memoryview(zeros(min(end, image.size) - start)), top - 1)


def _zero_partial(disk: Disk, top: int, image: Image, start: int, end: int,
                  unit: int) -> None:
    if start >= end:
        return
    status, _ = image.block_status(start, end - start)
    if status is Status.FREE and top == 0 or status.reads_zero:
        return  # already reads as zeros
    disk.write_image(top, start, memoryview(zeros(end - start)), top - 1)
    unit_start = align_down(start, unit)
    unit_end = min(unit_start + unit, image.size)
    content = bytearray(unit_end - unit_start)
    disk.read_chain(unit_start, memoryview(content), top)
    if is_zero(content) and image.block_status(unit_start, unit)[0] is Status.DATA:
        _release(disk, top, image, unit_start, unit_start + unit)
