"""RAW: plain disk images, ISO/UDF optical images and floppy images.

Byte *n* of the file is byte *n* of the disk.  There is no header, so the format
is recognised by content (ISO 9660 / UDF volume descriptors) or by extension;
files that are neither are never claimed by a probe (a raw hard disk must be named
explicitly or carry a ``.raw``/``.img`` extension), because claiming everything
would hide real corruption of other formats.

Holes in sparse files are reported as allocated zeros (found with SEEK_DATA /
SEEK_HOLE), so copies and maps skip them without reading.
"""

from __future__ import annotations

from typing import Mapping

import os

from ..blockmap import fill_zero, is_zero
from ..errors import (InvalidHeader, InvalidParameter, InvalidType, NotSupported,
                      ShrinkNotSupported)
from ..findings import WARNING, Finding
from ..io import StorageProvider
from ..progress import Progress, report
from ..types import (SECTOR, Capability, ConfigKey, ConfigKeyFlags, ConfigValueType,
                     DiskType, ImageFlags, OpenFlags, Status)
from .base import BackendInfo, CreateRequest, SingleFileImage, validate_config

OPTICAL_EXTENSIONS = ("iso", "cdr")
FLOPPY_EXTENSIONS = ("img", "ima", "dsk", "flp", "vfd")
HDD_EXTENSIONS = ("raw", "img", "bin")

OPTICAL_SECTOR = 2048
#: Volume descriptors start at sector 16 of an optical disc.
DESCRIPTORS_OFFSET = 16 * OPTICAL_SECTOR
MAX_DESCRIPTORS = 33
#: The largest floppy image VirtualBox accepts (255 cylinders, 2 heads, 255 sectors).
FLOPPY_MAX = 255 * 2 * 255 * SECTOR


def _error(status: str, message: str, path: str) -> InvalidHeader:
    return InvalidHeader(message, path, status=status)


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower()


def looks_optical(read_at, size: int) -> bool:
    """True when ISO 9660 or UDF volume descriptors are found at sector 16."""
    if size % OPTICAL_SECTOR or size <= DESCRIPTORS_OFFSET:
        return False
    seen_primary = udf_begin = False
    for i in range(MAX_DESCRIPTORS):
        offset = DESCRIPTORS_OFFSET + i * OPTICAL_SECTOR
        if offset + 7 > size:
            return False
        desc = read_at(offset, 7)
        ident = desc[1:6]
        if ident == b"CD001":
            if desc[0] == 1 and desc[6] == 1:
                seen_primary = True
            elif desc[0] == 255:
                return seen_primary
        elif ident == b"BEA01":
            udf_begin = True
        elif ident in (b"NSR02", b"NSR03"):
            return udf_begin
        elif ident in (b"BOOT2", b"TEA01"):
            continue
        else:
            return False
    return False


def detect(read_at, size: int, path: str, wanted: DiskType) -> DiskType:
    """The device type a raw file is for, or InvalidHeader when it is not claimed."""
    ext = _extension(path)
    if wanted in (DiskType.INVALID, DiskType.DVD) and looks_optical(read_at, size):
        return DiskType.DVD
    if wanted in (DiskType.INVALID, DiskType.DVD) and ext in OPTICAL_EXTENSIONS:
        if size % OPTICAL_SECTOR:
            raise _error("VERR_VD_RAW_SIZE_MODULO_2048",
                         "an optical disc image must be a multiple of 2048 bytes", path)
        if size <= DESCRIPTORS_OFFSET:
            raise _error("VERR_VD_RAW_SIZE_OPTICAL_TOO_SMALL",
                         "the file is too small for an optical disc image", path)
        return DiskType.DVD
    if wanted in (DiskType.INVALID, DiskType.FLOPPY) and ext in FLOPPY_EXTENSIONS \
            and 0 < size <= FLOPPY_MAX and size % SECTOR == 0:
        return DiskType.FLOPPY
    if wanted in (DiskType.INVALID, DiskType.HDD) and ext in HDD_EXTENSIONS:
        if size % SECTOR:
            raise _error("VERR_VD_RAW_SIZE_MODULO_512",
                         "a raw disk image must be a multiple of 512 bytes", path)
        return DiskType.HDD
    raise _error("VERR_VD_RAW_INVALID_HEADER",
                 "not recognised as a raw image (no ISO/UDF descriptors and no raw, "
                 "iso or floppy extension)", path)


class RawImage(SingleFileImage):
    """An opened raw image."""

    info = BackendInfo(
        name="RAW",
        description="Raw disk image (hard disk, ISO/UDF optical disc, floppy)",
        capabilities=Capability.CREATE_FIXED | Capability.FILE | Capability.ASYNC
        | Capability.VFS,
        extensions=(("raw", DiskType.HDD), ("iso", DiskType.DVD), ("cdr", DiskType.DVD),
                    ("img", DiskType.FLOPPY), ("ima", DiskType.FLOPPY),
                    ("dsk", DiskType.FLOPPY), ("flp", DiskType.FLOPPY),
                    ("vfd", DiskType.FLOPPY)),
        variants=("fixed",),
        config_keys=(ConfigKey("preallocation", "off", ConfigValueType.STRING,
                               ConfigKeyFlags.CREATE_ONLY),),
        image_flags_mask=ImageFlags.FIXED,
        stores=frozenset(),
    )

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            return detect(storage.read_at, storage.size(), path, disk_type)

    @classmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags,
             disk_type: DiskType = DiskType.HDD,
             config: Mapping[str, str] | None = None) -> RawImage:
        if disk_type == DiskType.INVALID:
            with io.open(path) as storage:
                try:
                    disk_type = detect(storage.read_at, storage.size(), path, disk_type)
                except InvalidHeader:
                    disk_type = DiskType.HDD
        if disk_type == DiskType.DVD:
            flags |= OpenFlags.READONLY  # optical media are read-only in use
        image = cls(io, path, flags, disk_type)
        image._size = image.storage.size()
        return image

    @property
    def size(self) -> int:
        return self._size

    @property
    def image_flags(self) -> ImageFlags:
        return ImageFlags.FIXED

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        end = min(offset + length, self._size)
        for start, stop in self.storage.data_ranges(offset, end - offset):
            if start > offset:
                return Status.ALLOCATED_ZERO, start - offset
            return Status.DATA, stop - offset
        return Status.ALLOCATED_ZERO, end - offset

    def read_into(self, offset: int, buf: memoryview) -> None:
        got = self.storage.readinto_at(offset, buf)
        if got < len(buf):  # the file shrank under us: past its end reads as zeros
            fill_zero(buf, got, len(buf))

    def write(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        self.storage.write_at(offset, data)

    def write_blocks(self, offset: int, data: memoryview) -> None:
        self.write(offset, data)

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list[Finding]:
        """A raw image has no metadata to damage; only its length can be wrong."""
        findings = []
        with io.open(path, writable=repair) as storage:
            size = storage.size()
            if size % SECTOR:
                whole = -(-size // SECTOR) * SECTOR
                findings.append(Finding(WARNING, f"the file is {size} bytes long, not a whole "
                                                 f"number of 512-byte sectors", size,
                                        f"extend it with zeros to {whole} bytes"))
                if repair:
                    storage.set_size(whole)
        return findings

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Grow by extending the file (sparsely); shrink when the cut part is zeros."""
        self.check_writable()
        if self.disk_type == DiskType.DVD:
            raise NotSupported("optical disc images cannot be resized", self.path)
        if size < self._size:
            for start, stop in self.storage.data_ranges(size, self._size - size):
                for pos in range(start, stop, 1 << 20):
                    chunk = self.storage.read_at(pos, min(1 << 20, stop - pos))
                    if not is_zero(chunk):
                        offset = pos + next(i for i, b in enumerate(chunk) if b)
                        raise ShrinkNotSupported(f"data is stored beyond the new end (at "
                                                 f"offset {offset}); shrinking would lose it",
                                                 self.path)
        self.storage.set_size(size)
        self._size = size

    def describe(self) -> list[tuple[str, str]]:
        return [("device type", self.disk_type.label), ("size", str(self._size)),
                ("sector size", str(self.sector_size))]

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> RawImage:
        path = request.path
        validate_config(cls.info, request.config, path)
        mode = {k.lower(): v for k, v in request.config.items()}.get("preallocation", "off")
        if mode not in ("off", "falloc"):
            raise InvalidParameter(f"preallocation={mode!r}: use off or falloc", path)
        if request.parent is not None:
            raise InvalidType("raw images cannot be differencing images", path)
        storage = io.open(path, create=True)
        try:
            if mode == "falloc":
                step = 256 << 20
                for pos in range(0, request.size, step):
                    report(request.progress, pos, request.size, "allocating")
                    storage.allocate(pos, min(step, request.size - pos))
            storage.set_size(request.size)
        finally:
            storage.close()
        return cls.open(io, path, request.open_flags & ~OpenFlags.READONLY, request.disk_type)

    def set_open_flags(self, flags: OpenFlags) -> None:
        if self.disk_type == DiskType.DVD and not flags & OpenFlags.READONLY:
            raise NotSupported("optical disc images are read-only", self.path)
        super().set_open_flags(flags)
