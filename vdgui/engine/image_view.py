"""One image of a :class:`~vdgui.engine.container.Disk`, seen through the VD calls.

``disk[n]`` is an :class:`ImageView`: the ``VDGet*``/``VDSet*`` calls for image
``n`` as properties.  Setters go through the container, which validates them and
refuses changes to read-only images with the reason.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import TYPE_CHECKING

from .formats.base import BackendInfo, Image
from .types import DiskType, Geometry, ImageFlags, OpenFlags

if TYPE_CHECKING:
    from .container import Disk


class ImageView:
    """Image ``n`` of a :class:`Disk`: the ``VDGet*``/``VDSet*`` calls as properties."""

    def __init__(self, disk: Disk, index: int) -> None:
        self._disk = disk
        self.index = index

    @property
    def _image(self) -> Image:
        return self._disk._slot(self.index).image

    @property
    def filename(self) -> str:
        """``VDGetFilename``: the name given at open or create."""
        return self._image.path

    path = filename

    @property
    def backend(self) -> str:
        return self._disk._slot(self.index).backend

    @property
    def backend_info(self) -> BackendInfo:
        """``VDBackendInfoSingle``."""
        return self._image.info

    @property
    def disk_type(self) -> DiskType:
        return self._image.disk_type

    @property
    def size(self) -> int:
        """``VDGetSize``."""
        return self._image.size

    @property
    def file_size(self) -> int:
        """``VDGetFileSize``."""
        return self._image.file_size

    @property
    def allocated_size(self) -> int:
        return self._image.allocated_size

    @property
    def version(self) -> int:
        """``VDGetVersion``."""
        return self._image.version

    @property
    def image_flags(self) -> ImageFlags:
        """``VDGetImageFlags``: the sanitised flags (DIFF for every image with a parent)."""
        return self._disk._slot(self.index).flags

    @property
    def variant(self) -> list[str]:
        return self._image.variant

    @property
    def open_flags(self) -> OpenFlags:
        return self._disk.open_flags(self.index)

    @open_flags.setter
    def open_flags(self, flags: OpenFlags) -> None:
        self._disk.set_open_flags(self.index, flags)

    @property
    def read_only(self) -> bool:
        return self._image.read_only

    @property
    def read_only_reason(self) -> str:
        """Why a read/write open fell back to read-only ("" when it did not)."""
        return self._disk._slot(self.index).read_only_reason

    @property
    def encrypted(self) -> bool:
        return self._image.encrypted

    @property
    def uuid(self) -> uuidlib.UUID:
        return self._image.uuid

    @uuid.setter
    def uuid(self, value: uuidlib.UUID | None) -> None:
        self._disk.set_uuid(self.index, value)

    @property
    def modification_uuid(self) -> uuidlib.UUID:
        return self._image.modification_uuid

    @modification_uuid.setter
    def modification_uuid(self, value: uuidlib.UUID | None) -> None:
        self._disk.set_modification_uuid(self.index, value)

    @property
    def parent_uuid(self) -> uuidlib.UUID:
        return self._image.parent_uuid

    @parent_uuid.setter
    def parent_uuid(self, value: uuidlib.UUID | None) -> None:
        self._disk.set_parent_uuid(self.index, value)

    @property
    def parent_modification_uuid(self) -> uuidlib.UUID:
        return self._image.parent_modification_uuid

    @parent_modification_uuid.setter
    def parent_modification_uuid(self, value: uuidlib.UUID | None) -> None:
        self._disk.set_parent_modification_uuid(self.index, value)

    @property
    def comment(self) -> str:
        return self._image.comment

    @comment.setter
    def comment(self, value: str | None) -> None:
        self._disk.set_comment(self.index, value)

    @property
    def pchs(self) -> Geometry:
        return self._disk.pchs(self.index)

    @pchs.setter
    def pchs(self, value: Geometry) -> None:
        self._disk.set_pchs(self.index, value)

    @property
    def lchs(self) -> Geometry:
        return self._disk.lchs(self.index)

    @lchs.setter
    def lchs(self, value: Geometry) -> None:
        self._disk.set_lchs(self.index, value)

    @property
    def parent_filename(self) -> str | None:
        return self._image.parent_filename

    def describe(self) -> list[tuple[str, str]]:
        return self._image.describe()
