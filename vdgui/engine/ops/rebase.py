"""Re-parenting: make another image (and its chain) the parent of an image.

``vdimg rebase``.  The safe mode first stores in the image every unit where the old
parents and the new ones differ and the image itself holds nothing, so the image's
content is the same before and after; only then is the link rewritten (one
transaction).  A crash at any point leaves the image reading as before through
its old parent, or as before through its new one.  The unsafe mode only rewrites
the link: for a parent that was copied or moved, whose content is known to be the
same.
"""

from __future__ import annotations

import os
from typing import Sequence

from ..blockmap import changed_units, runs_of
from ..chain import open_chain
from ..container import Disk
from ..errors import InvalidParameter
from ..io import IO_CHUNK, StorageProvider, buffer
from ..progress import Progress, report
from ..sizes import align_down, align_up
from ..types import OpenFlags, Status

#: Bytes compared per step (rounded to whole allocation units).
CHUNK = IO_CHUNK


def rebase(path: str | os.PathLike[str], new_parent: str | os.PathLike[str], *,
           unsafe: bool = False, search_paths: Sequence[str] = (),
           io: StorageProvider | None = None, progress: Progress | None = None) -> None:
    """Make ``new_parent``'s chain the parent of the image at ``path``."""
    path, new_parent = os.fspath(path), os.fspath(new_parent)
    if os.path.realpath(path) == os.path.realpath(new_parent):
        raise InvalidParameter("an image cannot be its own parent", path)
    with open_chain(new_parent, OpenFlags.READONLY, search_paths, io=io) as new, \
            _open_old(path, unsafe, search_paths, io) as old:
        image = old.image(-1)
        if any(os.path.realpath(new.image(i).path) == os.path.realpath(path)
               for i in range(len(new))):
            raise InvalidParameter("the new parent's chain contains the image itself: "
                                   "that would make a loop", path)
        if not unsafe:
            _store_differences(old, new, progress)
        with image.transaction():
            image.set_parent(new.parent_link(-1))
        report(progress, 1, 1, "done")


def _open_old(path: str, unsafe: bool, search_paths: Sequence[str],
              io: StorageProvider | None) -> Disk:
    if not unsafe:
        return open_chain(path, OpenFlags.NORMAL, search_paths, io=io)
    # An unsafe rebase must work when the old parent is gone: open the image alone.
    disk = Disk(io=io)
    disk.open(path, flags=OpenFlags.INFO)
    return disk


def _store_differences(old: Disk, new: Disk, progress: Progress | None) -> None:
    top = len(old) - 1
    image = old.image(top)
    unit = image.allocation_unit
    size = image.size
    step = max(CHUNK // unit, 1) * unit
    mine, theirs = buffer(step), buffer(step)
    pos = 0
    while pos < size:
        report(progress, pos, size, "comparing parents")
        status, run = image.block_status(pos, min(step, size - pos))
        if status is not Status.FREE:
            pos += run
            continue
        start = align_down(pos, unit)
        stop = min(align_up(pos + run, unit), start + step)
        filled = min(stop, size) - start
        view_old, view_new = mine[:stop - start], theirs[:stop - start]
        view_old[filled:] = view_new[filled:] = bytes(stop - start - filled)
        old.read_chain(start, view_old[:filled], top)
        _read_clipped(new, start, view_new[:filled])
        for first, count, differs in runs_of(changed_units(view_old, view_new, unit)):
            if differs:
                image.write_blocks(start + first * unit,
                                   view_old[first * unit:(first + count) * unit])
        pos = stop


def _read_clipped(disk: Disk, offset: int, buf: memoryview) -> None:
    """Read ``disk`` where it exists; past its end, zeros."""
    inside = max(0, min(len(buf), disk.size - offset))
    if inside:
        disk.read_chain(offset, buf[:inside], len(disk) - 1)
    buf[inside:] = bytes(len(buf) - inside)
