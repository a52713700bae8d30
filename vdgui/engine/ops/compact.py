"""``VDCompact``: release the blocks an image does not need, then shrink its file.

A block is released when it holds exactly what the images below would show there
(it becomes free and falls through to them), or when it is all zeros (it becomes a
zero block, which still hides what lies below; in a base, a free block reads as
zeros anyway).  VirtualBox's VHD compaction freed all-zero blocks of differencing
images and so exposed the parent's data; here a zero block of a differencing
image is freed only where the chain below also reads zeros.  Every release is
written at once, so cancelling or crashing loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..container import Disk
from ..errors import ReadOnly
from ..formats.base import Image
from ..blockmap import changed_units, zero_units
from ..progress import Progress, part, report
from ..sizes import align_down, align_up
from ..types import LAST_IMAGE, OpenFlags, Status

CHUNK = 16 << 20


@dataclass
class CompactPlan:
    """What a compaction would release, found without changing anything."""

    same_as_below: int = 0   # bytes that only repeat what the images below show
    zero: int = 0            # bytes of all-zero blocks
    kept_zero: int = 0       # all-zero bytes that must stay (no zero marker here)
    allocated: int = 0       # bytes of allocated blocks examined

    @property
    def reclaimable(self) -> int:
        return self.same_as_below + self.zero


def check_compactable(image: Image) -> None:
    """Refuse (NotSupported) an image that cannot be compacted, before anything runs."""
    image.check_compactable()


def compact(disk: Disk, n: int = LAST_IMAGE, progress: Progress | None = None,
            dry_run: bool = False) -> CompactPlan:
    """Compact image ``n`` (``VDCompact``); with ``dry_run`` only report what it would free.

    An image below the top (opened read-only in the chain) is made writable for the
    duration: compaction never changes what it or its children show.
    """
    with disk.lock:
        index = disk._index(n)
        image = disk.image(index)
        plan = CompactPlan()
        if dry_run:
            _release(disk, index, image, plan, progress, dry_run=True)
            return plan
        check_compactable(image)
        if image.read_only and index == len(disk) - 1:
            raise ReadOnly("the image is opened read-only", image.path)
        flags = disk.open_flags(index)
        if image.read_only:
            disk.set_open_flags(index, flags & ~OpenFlags.READONLY)
        try:
            _release(disk, index, image, plan, part(progress, 0, 0.8), dry_run=False)
            image.pack(part(progress, 0.8, 1))
        finally:
            if flags & OpenFlags.READONLY:
                disk.set_open_flags(index, flags)
        report(progress, 1, 1, "done")
        return plan


def _release(disk: Disk, index: int, image: Image, plan: CompactPlan,
             progress: Progress | None, dry_run: bool) -> None:
    unit = image.allocation_unit
    size = image.size
    step = max(CHUNK // unit, 1) * unit
    buf = bytearray(step)
    below = bytearray(step)
    pos = 0
    while pos < size:
        report(progress, pos, size, "scanning")
        status, run = image.block_status(pos, min(step, size - pos))
        if status is not Status.DATA:
            pos += run
            continue
        start = align_down(pos, unit)
        stop = min(align_up(pos + run, unit), start + step)
        length = stop - start
        filled = min(stop, size) - start
        data = memoryview(buf)[:length]
        image.read_into(start, data[:filled])
        data[filled:] = bytes(length - filled)
        under = memoryview(below)[:length]
        if index > 0:
            disk.read_chain(start, under[:filled], index - 1)
        else:
            under[:filled] = bytes(filled)
        under[filled:] = bytes(length - filled)
        same = ~changed_units(data, under, unit)
        zero = zero_units(data, unit)
        for i in range(length // unit):
            offset = start + i * unit
            if same[i]:
                plan.same_as_below += unit
                if not dry_run:
                    image.unmap(offset, unit, zero=False)
            elif zero[i]:
                if image.can_mark_zero:
                    plan.zero += unit
                    if not dry_run:
                        image.unmap(offset, unit, zero=True)
                else:
                    plan.kept_zero += unit
        plan.allocated += length
        pos = stop
