"""``VDResize``: change the virtual size of the top image."""

from __future__ import annotations

from ..blockmap import zeros
from ..container import Disk
from ..errors import InvalidSize, NotSupported, ReadOnly, VDError
from ..formats.base import Image
from ..progress import Progress, part, report
from ..sizes import align_up
from ..types import SECTOR, Geometry, ImageFlags
from .preflight import ensure_space


def _recompute(geometry: Geometry | None, size: int, limit: int | None) -> Geometry | None:
    """Keep heads and sectors, derive the cylinders for the new size."""
    if geometry is None or not geometry.is_set or not geometry.heads or not geometry.sectors:
        return None
    cylinders = size // SECTOR // geometry.heads // geometry.sectors
    return Geometry(min(cylinders, limit) if limit else cylinders, geometry.heads,
                    geometry.sectors)


def resize(disk: Disk, size: int, pchs: Geometry | None = None, lchs: Geometry | None = None,
           progress: Progress | None = None) -> None:
    """``VDResize(disk, size, pchs, lchs)``: resize the top image to ``size`` bytes.

    Geometry given with cylinders 0 (or not given) is recomputed from the image's
    current heads and sectors; a geometry the image does not store stays unset.
    """
    with disk.lock:
        image = _top_to_resize(disk, size)
        if image.image_flags & ImageFlags.FIXED and size > image.size:
            ensure_space(disk.io, image.path, size - image.size, "growing the fixed image")
        old_size = image.size
        old_pchs = _current(lambda: image.pchs)
        old_lchs = _current(lambda: image.lchs)
        image.resize(size, part(progress, 0, 0.95))
        _hide_below(disk, old_size, size)
        disk.cache_update(min(old_size, size), abs(size - old_size))
        for current, given, limit, setter, getter in (
                (old_pchs, pchs, 16383, disk.set_pchs, lambda: image.pchs),
                (old_lchs, lchs, None, disk.set_lchs, lambda: image.lchs)):
            if given is None and _current(getter) != current:
                continue  # the format derived its own geometry for the new size (VHD)
            new = given if given is not None and given.cylinders else _recompute(
                given if given is not None and given.heads else current, size, limit)
            if new is not None and new != current:
                try:
                    setter(-1, new)
                except NotSupported:
                    pass
        disk._refresh_cache()
        report(progress, 1, 1, "done")


def check_resizable(disk: Disk, size: int) -> None:
    """Raise what :func:`resize` would refuse up front, changing nothing: a format
    that cannot resize, a read-only image, a bad size, or a shrink that would cut
    off what the top image stores (the format may still refuse more at run time)."""
    _top_to_resize(disk, size).check_resize(size)


def _top_to_resize(disk: Disk, size: int) -> Image:
    """The top image, when it is open for writing and ``size`` is a valid size."""
    if not len(disk):
        raise NotSupported("no image is opened")
    image = disk.image(-1)
    if image.read_only:
        raise ReadOnly("the image is opened read-only", image.path)
    if size <= 0 or size % SECTOR:
        raise InvalidSize(f"the new size {size} is not a positive multiple of 512 bytes",
                          image.path)
    return image


def _hide_below(disk: Disk, old_size: int, size: int) -> None:
    """A grown differencing image reads zeros in its new part, as qemu does, even
    where an image below is larger and holds data there."""
    top = len(disk) - 1
    below = max((disk.image(i).size for i in range(top)), default=0)
    end = min(size, below)
    if end <= old_size:
        return
    image = disk.image(top)
    if image.can_mark_zero:
        unit = image.allocation_unit
        first = align_up(old_size, unit)
        if old_size < first:
            disk.write_image(top, old_size, memoryview(zeros(min(first, end) - old_size)),
                             top - 1)
        if first < end:
            image.unmap(first, align_up(end, unit) - first, zero=True)
    else:
        for pos in range(old_size, end, 16 << 20):
            disk.write_image(top, pos, memoryview(zeros(min(16 << 20, end - pos))), top - 1)


def _current(getter) -> Geometry | None:
    try:
        return getter()
    except VDError:
        return None
