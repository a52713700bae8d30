"""VMDK extents behind one small interface.

A VMDK disk is a sequence of extents, each mapping a stretch of the virtual disk
to storage.  :class:`Extent` is what the image asks of each of them, with offsets
relative to the extent's start: ``block_status``, ``read_into``, ``write`` (in
place), ``write_blocks`` (allocation of whole grains).  This module has the simple
kinds — FLAT/VMFS (a stretch of a plain file or device), ZERO (no storage) — and
stand-ins for extents that may not be used (NOACCESS, refused paths); sparse
extents live in :mod:`.sparse` and :mod:`.stream`.
"""

from __future__ import annotations

import abc

from ...blockmap import fill_zero, is_zero
from ...errors import InvalidState, ReadOnly, VDError
from ...io import Storage
from ...types import SECTOR, Status

INVALID_STATE = "VERR_VD_VMDK_INVALID_STATE"


class Extent(abc.ABC):
    """One extent of a VMDK disk; offsets are relative to its first byte."""

    #: Descriptor extent type (SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE).
    kind: str = ""

    def __init__(self, sectors: int, access: str, path: str | None) -> None:
        self.sectors = sectors
        self.access = access
        #: The host file (None for ZERO extents).
        self.path = path

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def allocation_unit(self) -> int:
        """Grain size for sparse extents; one sector for everything written in place."""
        return SECTOR

    @property
    def writable(self) -> bool:
        """True when writes may reach this extent (RW access, storage open for writing)."""
        return self.access == "RW"

    def check_writable(self) -> None:
        if self.access != "RW":
            raise InvalidState(f"the {self.kind} extent is marked {self.access} in the "
                               f"descriptor and cannot be written", self.path,
                               status=INVALID_STATE)

    @abc.abstractmethod
    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        """Status at ``offset`` and how many bytes (at most ``length``) it lasts."""

    @abc.abstractmethod
    def read_into(self, offset: int, buf: memoryview) -> None:
        """Read ``len(buf)`` bytes; parts that hold nothing read as zeros."""

    @abc.abstractmethod
    def write(self, offset: int, data: memoryview) -> None:
        """Write into storage that exists (DATA / ALLOCATED_ZERO ranges)."""

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Allocate and write whole allocation units (FREE / ZERO ranges)."""
        self.write(offset, data)

    def close(self) -> None:
        """Finish what the extent still holds in memory; storage is the image's job."""

    def describe(self) -> list[tuple[str, str]]:
        return []


class FlatExtent(Extent):
    """FLAT and VMFS extents: ``sectors`` sectors of a file from sector ``offset`` on.

    Holes in the file (sparse host files) are reported as allocated zeros, like the
    RAW backend does.  Only the part inside the file is probed: host devices report
    a size of 0, and past the end of a short file reads give zeros anyway.
    """

    def __init__(self, storage: Storage, sectors: int, offset_sectors: int, access: str,
                 path: str, kind: str = "FLAT", device: bool = False) -> None:
        super().__init__(sectors, access, path)
        self.storage = storage
        self.start = offset_sectors * SECTOR
        self.kind = kind
        self.device = device

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        length = min(length, self.size - offset)
        pos = self.start + offset
        end_of_file = self.storage.size()
        if self.device or pos >= end_of_file:
            return Status.DATA, length
        length = min(length, end_of_file - pos)
        for start, stop in self.storage.data_ranges(pos, length):
            if start > pos:
                return Status.ALLOCATED_ZERO, start - pos
            return Status.DATA, stop - pos
        return Status.ALLOCATED_ZERO, length

    def read_into(self, offset: int, buf: memoryview) -> None:
        got = self.storage.readinto_at(self.start + offset, buf)
        if got < len(buf):  # past the end of a short file: zeros
            fill_zero(buf, got, len(buf))

    def write(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        if not self.storage.writable:
            raise ReadOnly("the extent file is opened read-only", self.path)
        self.storage.write_at(self.start + offset, data)

    def describe(self) -> list[tuple[str, str]]:
        return [("file offset", str(self.start))]


class ZeroExtent(Extent):
    """A ZERO extent: reads zeros, has no storage."""

    kind = "ZERO"

    def __init__(self, sectors: int, access: str) -> None:
        super().__init__(sectors, access, None)

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        return Status.ZERO, min(length, self.size - offset)

    def read_into(self, offset: int, buf: memoryview) -> None:
        fill_zero(buf, 0, len(buf))

    def write(self, offset: int, data: memoryview) -> None:
        if is_zero(data):
            return  # the extent reads zeros already
        raise InvalidState("this part of the disk is a ZERO extent (no storage behind it); "
                           "it cannot hold data", None, status=INVALID_STATE)


class UnusableExtent(Extent):
    """An extent that is listed but may not be used: NOACCESS, or a refused path.

    The image opens (so that its metadata can be inspected); any I/O on the
    extent raises ``error``.
    """

    def __init__(self, sectors: int, access: str, kind: str, path: str | None,
                 error: VDError) -> None:
        super().__init__(sectors, access, path)
        self.kind = kind
        self.error = error

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        return Status.DATA, min(length, self.size - offset)

    def read_into(self, offset: int, buf: memoryview) -> None:
        raise self.error

    def write(self, offset: int, data: memoryview) -> None:
        raise self.error

    def describe(self) -> list[tuple[str, str]]:
        return [("unusable", self.error.message)]
