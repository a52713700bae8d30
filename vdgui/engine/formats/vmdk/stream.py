"""Creating streamOptimized extents: compressed, written once, front to back.

The layout is VMware's (and VirtualBox's): header (with the grain directory offset
"at end"), embedded descriptor, then compressed grain records in ascending order;
after the grains of each grain table's range, a GT marker and the table; at the
end a GD marker and the grain directory, a footer marker and the footer (the
header again, with the real GD offset), and an end-of-stream marker.  Reading such
files is :class:`~.sparse.SparseExtent`'s job (it finds the footer).

As in VirtualBox, the writer keeps the most recent grain in a buffer, so that
several writes can fill one grain; writing a grain before it, once a later one
was started, is ``VERR_VD_VMDK_INVALID_WRITE``, and rewriting a grain already
compressed is ``VERR_VD_VMDK_INVALID_STATE``.  All-zero grains are left out
(they read as zeros) unless the image is opened with HONOR_ZEROES.
"""

from __future__ import annotations

import numpy as np

from ...blockmap import DATA, FlatTable, is_zero, zeros
from ...errors import InvalidState
from ...io import Storage
from ...sizes import align_up
from ...types import SECTOR
from .extents import INVALID_STATE
from .sparse import (COMPRESSION_DEFLATE, DEFAULT_GRAIN_SECTORS, DEFAULT_GTES_PER_GT,
                     FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, GD_AT_END, MARKER_EOS,
                     MARKER_FOOTER, MARKER_GD, MARKER_GT, SparseExtent, SparseHeader,
                     compress_grain, marker_bytes)

STREAM_FLAGS = FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS
INVALID_WRITE = "VERR_VD_VMDK_INVALID_WRITE"


def stream_header(capacity: int, desc_sectors: int) -> SparseHeader:
    """The header of a new stream: version 3, deflate, markers, GD at the end."""
    grain = DEFAULT_GRAIN_SECTORS
    return SparseHeader(version=3, flags=STREAM_FLAGS, capacity=capacity, grain=grain,
                        desc_offset=1, desc_size=desc_sectors,
                        gtes_per_gt=DEFAULT_GTES_PER_GT, rgd_offset=0, gd_offset=GD_AT_END,
                        overhead=align_up(1 + desc_sectors, grain),
                        compression=COMPRESSION_DEFLATE)


class StreamWriter(SparseExtent):
    """A streamOptimized extent being created."""

    def __init__(self, storage: Storage, sectors: int, path: str, header: SparseHeader,
                 honor_zeroes: bool = False) -> None:
        super().__init__(storage, sectors, "RW", path, header, honor_zeroes)
        self.gd = FlatTable.new(storage, 0, self._gd_entries(), "<u4", 0,
                                "VMDK grain directory")
        #: Grain tables not yet written, by index.
        self._tables: dict[int, np.ndarray] = {}
        self._buffer: bytearray | None = None
        self._buffered = -1  # index of the grain in the buffer
        self._last = -1  # highest grain index started
        self.finished = False

    @classmethod
    def create(cls, storage: Storage, sectors: int, path: str, descriptor: bytes,
               desc_sectors: int, honor_zeroes: bool = False) -> StreamWriter:
        header = stream_header(sectors, desc_sectors)
        storage.write_at(0, header.pack())
        storage.write_at(SECTOR, descriptor + zeros(desc_sectors * SECTOR - len(descriptor)))
        storage.set_size(header.overhead * SECTOR)
        writer = cls(storage, sectors, path, header, honor_zeroes)
        writer.append = header.overhead * SECTOR
        return writer

    # -- the map, including the grain being assembled -----------------------------------

    def _gt_entries(self, index: int) -> np.ndarray | None:
        table = self._tables.get(index)
        return table if table is not None else super()._gt_entries(index)

    def _lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        states, offsets = super()._lookup(first, count)
        if first <= self._buffered < first + count:
            states[self._buffered - first] = DATA
            offsets[self._buffered - first] = -1
        return states, offsets

    def _grain_content(self, index: int, file_offset: int) -> bytes:
        if index == self._buffered:
            return bytes(self._buffer)
        return super()._grain_content(index, file_offset)

    # -- writing ------------------------------------------------------------------------

    def write(self, offset: int, data: memoryview) -> None:
        """Writes into the grain being assembled; earlier grains are final."""
        self.check_writable()
        gb = self.grain_bytes
        first, last = offset // gb, (offset + len(data) - 1) // gb
        if first != self._buffered or last != self._buffered:
            raise InvalidState("this part of the streamOptimized image is already written and "
                               "compressed; a stream is written once, front to back",
                               self.path, status=INVALID_STATE)
        at = offset - first * gb
        self._buffer[at:at + len(data)] = data

    def write_blocks(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        gb = self.grain_bytes
        first = offset // gb
        if first <= self._last:
            raise InvalidState(f"streamOptimized images are written front to back: grain "
                               f"{first} comes before grain {self._last}, already written",
                               self.path, status=INVALID_WRITE)
        count = -(-len(data) // gb)
        for i in range(count):
            self._flush_buffer()
            self._buffer = bytearray(data[i * gb:(i + 1) * gb])
            self._buffer.extend(zeros(gb - len(self._buffer)))
            self._buffered = self._last = first + i

    def _flush_buffer(self) -> None:
        """Compress the buffered grain to the end of the stream (zeros are skipped)."""
        if self._buffer is None:
            return
        index, data = self._buffered, bytes(self._buffer)
        self._buffer, self._buffered = None, -1
        table_index, low = divmod(index, self.gtes)
        self._write_tables(below=table_index)
        if is_zero(data) and not self.honor_zeroes:
            return
        record = compress_grain(index * self.grain_sectors, data)
        pos = self._reserve(len(record))
        self.storage.write_at(pos, record)
        table = self._tables.setdefault(table_index, np.zeros(self.gtes, dtype="<u4"))
        table[low] = pos // SECTOR

    def _write_tables(self, below: int) -> None:
        """Write the pending grain tables with index < ``below`` (GT marker, table)."""
        for index in sorted(i for i in self._tables if i < below):
            table = self._tables.pop(index)
            size = self.gt_sectors * SECTOR
            pos = self._reserve(SECTOR + size)
            raw = table.tobytes()
            self.storage.write_at(pos, marker_bytes(self.gt_sectors, MARKER_GT) + raw
                                  + zeros(size - len(raw)))
            self.gd.entries[index] = (pos + SECTOR) // SECTOR

    def finish(self) -> None:
        """Write the remaining tables, the grain directory, the footer and the end marker."""
        if self.finished:
            return
        self._flush_buffer()
        self._write_tables(below=len(self.gd.entries))
        gd_raw = self.gd.entries.astype("<u4").tobytes()
        gd_sectors = -(-len(gd_raw) // SECTOR)
        pos = self._reserve(SECTOR + gd_sectors * SECTOR)
        gd_sector = pos // SECTOR + 1
        footer = SparseHeader(**{**self.header.__dict__, "gd_offset": gd_sector})
        tail = (marker_bytes(gd_sectors, MARKER_GD) + gd_raw
                + zeros(gd_sectors * SECTOR - len(gd_raw))
                + marker_bytes(1, MARKER_FOOTER) + footer.pack() + marker_bytes(0, MARKER_EOS))
        self.storage.write_at(pos, tail)
        self.append = pos + len(tail)
        self.storage.set_size(self.append)
        self.header = footer
        self.finished = True
        self.read_only_reason = ("the streamOptimized image is complete; streams are "
                                 "written once")

    def close(self) -> None:
        if not self.finished and self.storage.writable:
            self.finish()

    def describe(self) -> list[tuple[str, str]]:
        state = "complete" if self.finished else f"being written (next grain after {self._last})"
        return super().describe() + [("stream", state)]
