"""The storage protocol every backend reads and writes through."""

from __future__ import annotations

import abc
from typing import Iterator


class Storage(abc.ABC):
    """One open file of an image: positional I/O, size, flush, sparse hints."""

    path: str
    writable: bool

    @abc.abstractmethod
    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; fewer only at the end of the file."""

    def read_exact(self, offset: int, length: int, what: str = "data") -> bytes:
        """Exactly ``length`` bytes, or :class:`Corrupted` naming what was cut short."""
        from ..errors import Corrupted
        data = self.read_at(offset, length)
        if len(data) != length:
            raise Corrupted(f"the file is truncated: {what} at offset {offset} "
                            f"({length} bytes) lies beyond its end", self.path)
        return data

    @abc.abstractmethod
    def readinto_at(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; returns the bytes read (short at end of file)."""

    @abc.abstractmethod
    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset``, extending the file if needed."""

    @abc.abstractmethod
    def size(self) -> int:
        """Current length of the file in bytes."""

    @abc.abstractmethod
    def set_size(self, size: int) -> None:
        """Truncate or extend (sparsely) to ``size`` bytes."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make everything written so far durable."""

    def allocated_size(self) -> int:
        """Bytes the file really occupies on the host (sparse files use less)."""
        return self.size()

    def punch_hole(self, offset: int, length: int) -> None:
        """Hint: the range will read as zeros and need not occupy space."""
        self.write_at(offset, bytes(length))

    def allocate(self, offset: int, length: int) -> None:
        """Hint: reserve real space for the range (extending the file if needed)."""
        end = offset + length
        if self.size() < end:
            self.set_size(end)

    def data_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """``(start, end)`` ranges within ``[offset, offset+length)`` that may hold data.

        Everything outside them reads as zeros (holes).  The default knows of no holes.
        """
        end = min(offset + length, self.size())
        if end > offset:
            yield offset, end

    @abc.abstractmethod
    def reopen(self, writable: bool, shareable: bool = False) -> None:
        """Switch between read-only and read/write in place (locks follow).

        On failure the storage stays open as it was.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file and its locks."""

    def __enter__(self) -> "Storage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StorageProvider(abc.ABC):
    """Opens, creates, moves and deletes the files images live in."""

    @abc.abstractmethod
    def open(self, path: str, *, writable: bool = False, create: bool = False,
             shareable: bool = False) -> Storage:
        """Open ``path``.

        ``create`` makes a new file and fails if one exists.  Writable opens take an
        exclusive write lock (shared with other writers only when ``shareable``), so
        that a second writer gets :class:`~vdgui.engine.errors.ImageInUse`.
        """

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove ``path``."""

    @abc.abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` (refusing to overwrite)."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """True when ``path`` names an existing file."""

    @abc.abstractmethod
    def list_dir(self, path: str) -> list[str]:
        """Full paths of the files in folder ``path`` (empty when unreadable)."""

    @abc.abstractmethod
    def file_sizes(self, path: str) -> tuple[int, int]:
        """``(length, bytes occupied on the host)`` of ``path``; (0, 0) if missing."""

    def free_space(self, path: str) -> int | None:
        """Free bytes on the file system holding ``path``; None when unknown."""
        return None
