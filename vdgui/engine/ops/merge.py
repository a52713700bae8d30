"""``VDMerge``: fold a range of a chain into one image and drop the others.

Forward (``from < to``): the parents ``from`` .. ``to-1`` are merged into their
descendant ``to``, which then sits on ``from-1`` (or becomes a base).  Backward
(``from > to``): the descendants ``to+1`` .. ``from`` are merged into ``to``, and the
child of ``from`` (if any) is re-linked to ``to``.  Merged-away images are deleted.

Safety by construction: the target only ever receives, unit by unit, the content
it already shows through the chain, so at every moment before the final re-link
the chain reads exactly as before.  An error or a cancel leaves it intact and the
merge can simply be run again.  Work is done per allocation unit of the target
(assembled whole from the merged images first), which avoids VirtualBox's mixed
block-size bug where part of a merged block was lost.
"""

from __future__ import annotations

import uuid as uuidlib

from ..container import Disk
from ..errors import InvalidParameter, NotSupported
from ..io import IO_CHUNK, buffer
from ..progress import Progress, report
from ..sizes import align_down, align_up
from ..types import OpenFlags
from .preflight import ensure_space, held_bytes

#: Bytes of the disk merged per step (rounded to whole units of the target).
CHUNK = IO_CHUNK


def merge(disk: Disk, from_: int, to: int, progress: Progress | None = None) -> None:
    """``VDMerge(disk, from, to)``: merge images ``from`` .. ``to`` into ``to``."""
    with disk.lock:
        f, t = disk._index(from_), disk._index(to)
        if f == t:
            raise InvalidParameter("an image cannot be merged into itself",
                                   disk.image(f).path)
        target = disk.image(t)
        lo, hi = min(f, t), max(f, t)
        largest = max(disk.image(i).size for i in range(lo, hi + 1))
        if largest > target.size:
            raise NotSupported(f"the images merged are larger ({largest} bytes) than the "
                               f"target ({target.size} bytes); resize the target first",
                               target.path)
        merged_top, merged_bottom = (t - 1, f) if f < t else (f, t + 1)
        ensure_space(disk.io, target.path, held_bytes(disk, merged_top, merged_bottom),
                     "the merge")
        # The re-link at the end must be possible: refuse now, before any data moves.
        if f < t:
            target.check_parent(disk.parent_link(f - 1) if f > 0 else None)
        elif f < len(disk) - 1:
            disk.image(f + 1).check_parent(disk.parent_link(t))
        top = len(disk) - 1
        was_read_only = {i: disk.image(i).read_only for i in range(len(disk))}
        child = f + 1 if f > t and f < top else None
        try:
            # Everything that will be written is made writable before any data moves.
            for index in filter(lambda i: i is not None, (child, t)):
                _writable(disk, index)
            below = f - 1 if f < t else t - 1
            source_top = t if f < t else f
            _move_data(disk, t, source_top, merged_top, merged_bottom, below, progress)
        except BaseException:
            _restore(disk, was_read_only)
            raise
        _renew_modification_uuid(disk, t)
        if f < t:
            disk.image(t).set_parent(disk.parent_link(f - 1) if f > 0 else None)
            disk.remove_images(f, t - 1, delete=True)
        else:
            if child is not None:
                disk.image(child).set_parent(disk.parent_link(t))
            disk.remove_images(t + 1, f, delete=True)
        # Every image but the top is read-only again; the top keeps its old state.
        for index in range(len(disk) - 1):
            image = disk.image(index)
            if not image.read_only:
                disk.set_open_flags(index, disk.open_flags(index) | OpenFlags.READONLY)
        report(progress, 1, 1, "done")


def _writable(disk: Disk, index: int) -> None:
    if disk.image(index).read_only:
        flags = disk.open_flags(index) & ~(OpenFlags.READONLY | OpenFlags.SKIP_CONSISTENCY_CHECKS)
        disk.set_open_flags(index, flags)


def _restore(disk: Disk, was_read_only: dict[int, bool]) -> None:
    for index, read_only in was_read_only.items():
        if read_only and not disk.image(index).read_only:
            disk.set_open_flags(index, disk.open_flags(index) | OpenFlags.READONLY)


def _renew_modification_uuid(disk: Disk, index: int) -> None:
    try:
        disk.image(index).modification_uuid = uuidlib.uuid4()
    except NotSupported:
        pass


def _move_data(disk: Disk, target_index: int, source_top: int, merged_top: int,
               merged_bottom: int, below: int, progress: Progress | None) -> None:
    """Copy into the target every unit where a merged image holds something.

    For each such unit the whole unit is read as image ``source_top`` shows it (the
    content that must survive) and written into the target with images ``below``
    .. 0 beneath it, so that units equal to what remains below are not stored.
    """
    target = disk.image(target_index)
    size = target.size
    unit = max(target.allocation_unit, 512)
    step = max(CHUNK // unit, 1) * unit
    buf = buffer(step)
    pos = 0
    while pos < size:
        report(progress, pos, size, "merging")
        chunk_end = min(pos + step, size)
        for start, stop in _units_held(disk, pos, chunk_end, merged_top, merged_bottom, unit):
            view = buf[:stop - start]
            disk.read_chain(start, view, source_top)
            disk.write_image(target_index, start, view, below)
        pos = chunk_end


def _units_held(disk: Disk, start: int, end: int, top: int, bottom: int,
                unit: int) -> list[tuple[int, int]]:
    """Unit-aligned runs within ``[start, end)`` (``start`` unit-aligned) where some
    image ``top`` .. ``bottom`` holds something."""
    runs: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        depth, _status, run = disk.resolve(pos, end - pos, top, bottom)
        if depth >= 0:
            first = align_down(pos, unit)
            last = min(align_up(pos + run, unit), end)
            if runs and runs[-1][1] >= first:
                runs[-1] = (runs[-1][0], max(runs[-1][1], last))
            else:
                runs.append((first, last))
        pos += run
    return runs
