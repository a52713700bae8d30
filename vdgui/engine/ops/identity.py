"""Changing an image's UUID without orphaning its children.

VirtualBox's "UUID already exists" trap is escaped by giving a copied image a new
UUID; every child that points at the old UUID must follow, or the chain breaks.
All children are checked before anything changes; then the children are
re-pointed and the image's UUID changed, each write a transaction.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from typing import Sequence

from ..container import Disk
from ..errors import InvalidParameter, NotSupported, UuidMismatch
from ..io import StorageProvider
from ..types import NIL_UUID, OpenFlags


def change_uuid(path: str | os.PathLike[str], new_uuid: uuidlib.UUID | None = None,
                children: Sequence[str | os.PathLike[str]] = (),
                io: StorageProvider | None = None) -> uuidlib.UUID:
    """Give the image at ``path`` a new UUID (random when None) and re-point
    ``children``; returns the new UUID."""
    new_uuid = new_uuid or uuidlib.uuid4()
    if new_uuid == NIL_UUID:
        raise InvalidParameter("an image's UUID cannot be empty", os.fspath(path))
    disks: list[Disk] = []
    try:
        image = _open_alone(path, io, disks)
        old_uuid = image[0].uuid
        relinked = []
        for child in children:
            if os.path.realpath(child) == os.path.realpath(path):
                raise InvalidParameter("an image is not its own child", os.fspath(child))
            disk = _open_alone(child, io, disks)
            try:
                parent = disk[0].parent_uuid
            except NotSupported:
                continue  # linked by other means (VHDX: the data write GUID); unaffected
            if parent != old_uuid:
                what = parent if parent != NIL_UUID else "none"
                raise UuidMismatch(f"not a child of {os.fspath(path)}: its parent UUID is "
                                   f"{what}, but that image's UUID is {old_uuid}; nothing "
                                   f"was changed", os.fspath(child))
            relinked.append(disk)
        for disk in relinked:
            with disk.image(0).transaction():
                disk.set_parent_uuid(0, new_uuid)
        with image.image(0).transaction():
            image.set_uuid(0, new_uuid)
        return new_uuid
    finally:
        for disk in disks:
            disk.close_all()


def _open_alone(path: str | os.PathLike[str], io: StorageProvider | None,
                disks: list[Disk]) -> Disk:
    disk = Disk(io=io)
    disks.append(disk)
    disk.open(path, flags=OpenFlags.INFO)
    return disk
