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

import numpy as np

from ..blockmap import changed_units, fill_zero, runs_of, zero_units
from ..container import Disk
from ..errors import ReadOnly
from ..formats.base import Image
from ..io import IO_CHUNK, buffer
from ..progress import Progress, part, report
from ..sizes import align_down, align_up
from ..types import LAST_IMAGE, OpenFlags, Status

#: Bytes scanned per step (rounded to whole units).
CHUNK = IO_CHUNK

# What happens to a scanned unit.
_KEEP, _FREE, _ZERO = 0, 1, 2


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
    buf = buffer(step)
    below = buffer(step) if index > 0 else None
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
        data = buf[:length]
        image.read_into(start, data[:filled])
        fill_zero(data, filled, length)
        zero = zero_units(data, unit)
        if below is None:
            same = zero  # below a base everything reads as zeros
        else:
            under = below[:length]
            disk.read_chain(start, under[:filled], index - 1)
            fill_zero(under, filled, length)
            same = ~changed_units(data, under, unit)
        zeroed = zero & ~same
        plan.same_as_below += int(np.count_nonzero(same)) * unit
        if image.can_mark_zero:
            plan.zero += int(np.count_nonzero(zeroed)) * unit
        else:
            plan.kept_zero += int(np.count_nonzero(zeroed)) * unit
            zeroed[:] = False
        if not dry_run:
            # One release per run of units, in disk order (units to keep are 0).
            action = np.where(same, _FREE, np.where(zeroed, _ZERO, _KEEP))
            for first, count, what in runs_of(action):
                if what != _KEEP:
                    image.unmap(start + first * unit, count * unit, zero=what == _ZERO)
        plan.allocated += length
        pos = stop
