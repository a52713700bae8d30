"""``VDCopy`` / ``VDCopyEx``: copy an image's content (as seen through its chain).

The source is read through ``block_status``: ranges that no consulted image holds
are never read, and ranges that read as zero are not written into a new base, so
the destination stays sparse wherever its format allows.  Writes go through the
destination's normal write path, so a destination differencing image only
receives blocks that differ from its own parents.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from typing import Mapping

from ..blockmap import runs_of, zero_units, zeros
from ..container import Disk
from ..errors import ImageNotFound, InvalidParameter, NotSupported, ReadOnly, VDError
from ..formats.base import Image
from ..io import IO_CHUNK, buffer
from ..progress import Progress, report
from ..sizes import align_up
from .preflight import ensure_space, held_bytes
from ..types import (IMAGE_CONTENT_UNKNOWN, NIL_UUID, Capability, Geometry, ImageFlags,
                     OpenFlags, Status, fix_up_lchs, fix_up_pchs)

#: Bytes copied per step (rounded to whole allocation units of the destination).
CHUNK = IO_CHUNK


def _get(getter, default=None):
    try:
        return getter()
    except VDError:
        return default


def copy(src: Disk, n: int, dst: Disk, path: str | os.PathLike[str] | None,
         backend: str | None = None, *, move_by_rename: bool = False, size: int = 0,
         from_same: int = IMAGE_CONTENT_UNKNOWN, to_same: int = IMAGE_CONTENT_UNKNOWN,
         image_flags: ImageFlags = ImageFlags.NONE, uuid: uuidlib.UUID | None = None,
         open_flags: OpenFlags = OpenFlags.NORMAL, config: Mapping[str, str] | None = None,
         progress: Progress | None = None, compress: bool = False) -> None:
    """``VDCopyEx``: copy image ``n`` of ``src`` (with its chain) into ``dst``.

    With ``path``, a new image is created in ``dst``: a base when ``dst`` is empty
    (``size`` 0 keeps the source size), otherwise a differencing image on top of
    it.  Without ``path`` the content is copied into ``dst``'s top image.  Within
    one container only a move by rename is possible.  ``from_same``/``to_same``
    name images known to be identical in both chains (cloning a chain image by
    image), so only the images above them are copied.  ``compress`` stores the data
    compressed, in a new base of a format that can (QCOW2's compressed clusters).
    """
    with src.lock:
        n = src._index(n)
        if src is dst:
            _move(src, n, path, backend, move_by_rename)
            return
        with dst.lock:
            _copy(src, n, dst, path, backend, size, from_same, to_same, image_flags, uuid,
                  open_flags, config, progress, compress)


def _move(disk: Disk, n: int, path: str | os.PathLike[str] | None, backend: str | None,
          move_by_rename: bool) -> None:
    image = disk.image(n)
    if not move_by_rename or path is None:
        raise InvalidParameter("within one container an image can only be moved by "
                               "renaming it", image.path)
    if backend and backend.lower() != image.info.name.lower():
        raise InvalidParameter("moving by rename cannot change the format", image.path)
    if not image.info.has(Capability.FILE):
        raise NotSupported("the image is not a file and cannot be renamed", image.path)
    image.rename(os.fspath(path))


def _copy(src: Disk, n: int, dst: Disk, path: str | os.PathLike[str] | None,
          backend: str | None, size: int, from_same: int, to_same: int,
          image_flags: ImageFlags, uuid: uuidlib.UUID | None, open_flags: OpenFlags,
          config: Mapping[str, str] | None, progress: Progress | None,
          compress: bool = False) -> None:
    source = src.image(n)
    src_size = source.size
    if src_size == 0:
        raise VDError("the source image has a size of 0", source.path,
                      status="VERR_VD_VALUE_NOT_FOUND")
    if (from_same == IMAGE_CONTENT_UNKNOWN) != (to_same == IMAGE_CONTENT_UNKNOWN) or (
            from_same != IMAGE_CONTENT_UNKNOWN
            and (from_same >= len(src) or to_same >= len(dst))):
        raise InvalidParameter("from_same and to_same must both name existing images or "
                               "both be unknown")
    created = False
    if compress:
        _check_compressible(dst, path, backend or src._slot(n).backend)
    if path is not None:
        new_size = size or src_size
        backend = backend or src._slot(n).backend
        needed = (min(new_size, src_size) if image_flags & ImageFlags.FIXED
                  else held_bytes(src, n, length=new_size))
        ensure_space(dst.io, os.fspath(path), needed, "the copy")
        if not len(dst):
            comment = _get(lambda: source.comment)
            # Geometry is carried only where the source stores one; otherwise the new
            # image's format derives its own (VHD's follows from the size).
            pchs = _get(lambda: source.pchs, Geometry())
            pchs = fix_up_pchs(pchs, new_size) if pchs.is_set else Geometry()
            lchs = fix_up_lchs(_get(lambda: source.lchs, Geometry()), new_size)
            dst.create_base(path, new_size, backend, image_flags,
                            comment[:1023] if comment else None, pchs, lchs,
                            uuid or uuidlib.uuid4(), OpenFlags.NORMAL, config)
            block_wise = True
        else:
            dst.create_diff(path, backend, image_flags, None, uuid or uuidlib.uuid4(),
                            None, OpenFlags.NORMAL, config)
            new_size = dst.size
            block_wise = to_same != IMAGE_CONTENT_UNKNOWN
        created = True
        length = min(new_size, src_size)
    else:
        if not len(dst):
            raise ImageNotFound("the destination container holds no image to copy into")
        if dst.is_read_only:
            raise ReadOnly("the destination image is opened read-only", dst.image(-1).path)
        length = min(size or src_size, src_size, dst.size)
        block_wise = to_same != IMAGE_CONTENT_UNKNOWN
        _carry_geometry(src, n, dst)
    try:
        bottom = 0 if from_same == IMAGE_CONTENT_UNKNOWN else from_same + 1
        new_base = created and len(dst) == 1
        if compress:
            _copy_compressed(src, n, dst.image(-1), length, progress)
        else:
            _copy_content(src, n, dst, length, block_wise, bottom, new_base, progress)
        mod = _get(lambda: source.modification_uuid)
        if mod is not None and mod != NIL_UUID:
            try:
                dst.image(-1).modification_uuid = mod
            except NotSupported:
                pass
        if created and OpenFlags(open_flags) != dst.image(-1).open_flags:
            dst.set_open_flags(-1, open_flags)
    except BaseException:
        if created:
            dst.close(delete=True)
        raise
    report(progress, length, length, "done")


def _check_compressible(dst: Disk, path: str | os.PathLike[str] | None, backend: str) -> None:
    from ..registry import backend_class
    cls = backend_class(backend)
    if cls.write_compressed is Image.write_compressed:
        raise InvalidParameter(f"the {cls.info.name} format cannot store compressed data",
                               os.fspath(path) if path else None)
    if path is None or len(dst):
        raise InvalidParameter("only a new standalone image can be written compressed",
                               os.fspath(path) if path else None)


def _copy_compressed(src: Disk, n: int, target: Image, length: int,
                     progress: Progress | None) -> None:
    """Copy whole allocation units, compressing those that hold anything."""
    unit = target.allocation_unit
    step = max(CHUNK // unit, 1) * unit
    buf = buffer(step)
    pos = 0
    while pos < length:
        report(progress, pos, length, "compressing")
        stop = min(pos + step, length)
        if _holds_anything(src, n, pos, stop):
            view = buf[:align_up(stop - pos, unit)]
            src.read_chain(pos, view[:stop - pos], n)
            view[stop - pos:] = zeros(len(view) - (stop - pos))
            for first, count, zero in runs_of(zero_units(view, unit)):
                if not zero:  # all-zero units stay unallocated in the new image
                    target.write_compressed(pos + first * unit,
                                            view[first * unit:(first + count) * unit])
        pos = stop


def _holds_anything(src: Disk, n: int, start: int, stop: int) -> bool:
    pos = start
    while pos < stop:
        depth, status, run = src.resolve(pos, stop - pos, n)
        if depth >= 0 and status is Status.DATA:
            return True
        pos += run
    return False


def _carry_geometry(src: Disk, n: int, dst: Disk) -> None:
    """Copy-into-existing writes the source's geometry (fixed up) into the target."""
    size = dst.size
    pchs = _get(lambda: src.image(n).pchs)
    lchs = _get(lambda: src.image(n).lchs)
    for setter, geometry, fix in ((dst.set_pchs, pchs, fix_up_pchs),
                                  (dst.set_lchs, lchs, fix_up_lchs)):
        if geometry is not None and geometry.is_set:
            try:
                setter(-1, fix(geometry, size))
            except NotSupported:
                pass


def _copy_content(src: Disk, n: int, dst: Disk, length: int, block_wise: bool, bottom: int,
                  new_base: bool, progress: Progress | None) -> None:
    """The copy loop: a few MiB of whole destination units at a time, skipping what
    needs no write."""
    unit = dst.image(-1).allocation_unit
    step = max(CHUNK // unit, 1) * unit
    buf = buffer(step)
    pos = 0
    while pos < length:
        report(progress, pos, length, "copying")
        want = min(step - pos % step, length - pos)
        if block_wise:
            depth, status, run = src.resolve(pos, want, n, bottom)
            if depth >= 0 and status is Status.DATA:
                view = buf[:run]
                src.image(depth).read_into(pos, view)
                dst.write(pos, view, track_modification=False)
            elif depth >= 0 and not new_base:
                # Explicit zeros must still hide what the destination's parents hold.
                dst.write(pos, zeros(run), track_modification=False)
            # Nothing held (or zeros into a new base, which reads zeros anyway): skip.
            pos += run
        else:
            view = buf[:want]
            src.read_chain(pos, view, n)
            dst.write(pos, view, track_modification=False)
            pos += want


def convert(src: Disk, path: str | os.PathLike[str], backend: str, *,
            image_flags: ImageFlags = ImageFlags.NONE, size: int = 0,
            config: Mapping[str, str] | None = None, uuid: uuidlib.UUID | None = None,
            progress: Progress | None = None, compress: bool = False) -> None:
    """A new standalone image at ``path`` with the content of ``src``'s top.

    ``vdimg convert``: ``VDCopyEx`` into an empty container, then closed.
    """
    with Disk(src.disk_type, src.io) as dst:
        copy(src, len(src) - 1, dst, path, backend, size=size, image_flags=image_flags,
             uuid=uuid, config=config, progress=progress, compress=compress)
