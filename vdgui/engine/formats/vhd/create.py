"""Writing new VHD files: fixed, dynamic and differencing.

Dynamic images are laid out byte for byte as ``qemu-img create -f vpc`` lays them
out (footer copy, dynamic header at 0x200, BAT at 0x600 padded to whole sectors,
footer); differencing images add the ``W2ku`` and ``W2ru`` parent locator areas after
the BAT, as VirtualBox does.  The size policy and creator application are explained
in the package docstring.
"""

from __future__ import annotations

import os

from ...errors import InvalidParameter, InvalidSize, NotSupported
from ...io import Storage
from ...progress import report
from ...sizes import align_up
from ...types import NIL_UUID, ImageFlags
from ..base import CreateRequest
from . import locators as loc
from .footer import (DISK_DIFFERENCING, DISK_DYNAMIC, DISK_FIXED, FOOTER_SIZE, HEADER_COOKIE,
                     HEADER_SIZE, HEADER_VERSION, NO_DATA_OFFSET, PARENT_NAME_SIZE, SECTOR,
                     empty_locator, new_footer, pack_footer, pack_header, pack_locators,
                     to_vhd_time, uuid_to_raw)
from .geometry import chs_geometry

DEFAULT_BLOCK_SIZE = 2 << 20
MAX_BLOCK_SIZE = 256 << 20
#: The specification's limit (and qemu's): 2040 GiB.
MAX_SIZE = 0xFF000000 * SECTOR

#: What our footers say created them: "qem2" is the creator for which every qemu
#: release reads the current size (see the package docstring).
CREATOR_APP = b"qem2"
CREATOR_VERSION = 0x00000001  # vdgui 0.1
CREATOR_OS = b"Wi2k"

#: Bytes reserved for each parent locator (at least), as VirtualBox reserves them.
LOCATOR_AREA = 1024


def check_block_size(block_size: int, path: str) -> None:
    if block_size < SECTOR or block_size & (block_size - 1) or block_size > MAX_BLOCK_SIZE:
        raise InvalidParameter(f"BlockSize {block_size} must be a power of two between "
                               f"512 bytes and {MAX_BLOCK_SIZE >> 20} MiB", path)


def parent_name(path: str) -> bytes:
    """The dynamic header's parent name field: the file name, UTF-16BE, NUL padded."""
    name = os.path.basename(path).encode("utf-16-be")[:PARENT_NAME_SIZE - 2]
    return name.ljust(PARENT_NAME_SIZE, b"\0")


def locator_area(data: bytes) -> int:
    """Bytes to reserve for locator data (whole sectors, room to grow)."""
    return align_up(max(len(data), LOCATOR_AREA), SECTOR)


def write_image(storage: Storage, request: CreateRequest, block_size: int) -> None:
    """Validate ``request`` and write the new image into the empty ``storage``."""
    path, size, parent = request.path, request.size, request.parent
    check_block_size(block_size, path)
    if size <= 0 or size % SECTOR or size > MAX_SIZE:
        raise InvalidSize(f"a VHD image holds whole sectors up to 2040 GiB "
                          f"(asked for {size} bytes)", path)
    fixed = bool(request.image_flags & ImageFlags.FIXED)
    if fixed and parent is not None:
        raise InvalidParameter("a differencing image cannot be fixed", path)
    geometry = chs_geometry(size)
    if parent is None and request.pchs.is_set and request.pchs != geometry:
        raise InvalidParameter(f"a VHD image's geometry follows from its size ({geometry} "
                               f"for {size} bytes); it cannot be chosen", path)
    if parent is None and request.lchs.is_set:
        raise InvalidParameter("VHD images store no logical geometry", path)
    if request.comment:
        raise NotSupported("VHD images store no comment", path)
    footer = pack_footer(new_footer(
        disk_type=DISK_FIXED if fixed else DISK_DIFFERENCING if parent else DISK_DYNAMIC,
        size=size, cylinders=geometry.cylinders, heads=geometry.heads,
        sectors=geometry.sectors, uuid=request.uuid, creator_app=CREATOR_APP,
        creator_version=CREATOR_VERSION, creator_os=CREATOR_OS,
        data_offset=NO_DATA_OFFSET if fixed else FOOTER_SIZE))
    if fixed:
        _preallocate(storage, size, request)
        storage.write_at(size, footer)
    else:
        _write_dynamic(storage, footer, block_size, request)
        report(request.progress, 1, 1, "creating")
    storage.flush()


def _write_dynamic(storage: Storage, footer: bytes, block_size: int,
                   request: CreateRequest) -> None:
    entries = -(-request.size // block_size)
    table_offset = FOOTER_SIZE + HEADER_SIZE
    pos = table_offset + align_up(4 * entries, SECTOR)
    areas = [(table_offset, b"\xff" * (pos - table_offset))]
    header = dict(
        cookie=HEADER_COOKIE, data_offset=NO_DATA_OFFSET, table_offset=table_offset,
        header_version=HEADER_VERSION, max_table_entries=entries, block_size=block_size,
        checksum=0, parent_uuid=bytes(16), parent_timestamp=0, reserved1=0,
        parent_name=bytes(PARENT_NAME_SIZE), locators=b"", reserved2=bytes(256))
    locators = [empty_locator() for _ in range(8)]
    parent = request.parent
    if parent is not None:
        header.update(parent_uuid=uuid_to_raw(parent.uuid or NIL_UUID),
                      parent_timestamp=to_vhd_time(parent.timestamp),
                      parent_name=parent_name(parent.path))
        for slot, code in enumerate((loc.W2KU, loc.W2RU)):
            data = loc.encode(code, parent.path, request.path)
            room = locator_area(data)
            locators[slot] = dict(code=code, data_space=room, data_length=len(data),
                                  reserved=0, data_offset=pos)
            areas.append((pos, data.ljust(room, b"\0")))
            pos += room
    header["locators"] = pack_locators(locators)
    storage.write_at(0, footer + pack_header(header))
    for offset, area in areas:
        storage.write_at(offset, area)
    storage.write_at(pos, footer)


def _preallocate(storage: Storage, length: int, request: CreateRequest) -> None:
    """Reserve the data area of a fixed image, reporting progress."""
    step = 64 << 20
    for pos in range(0, length, step):
        report(request.progress, pos, length, "allocating")
        storage.allocate(pos, min(step, length - pos))
    report(request.progress, length, length, "allocating")
