"""The block allocation table and data blocks of dynamic and differencing VHDs.

The BAT holds one big-endian 32-bit entry per block: the sector number of the
block's sector bitmap, or 0xFFFFFFFF when the block has no storage.  An allocated
block is its bitmap (one bit per sector, most significant bit first, padded to
whole sectors) followed by the block's data.

What an allocated block holds:

* in a **differencing** image a set bit means "this sector is in this image" and a
  clear bit "read it from the parent", so block status is refined to single
  sectors from the bitmap;
* in a **dynamic** (base) image every sector of an allocated block is data, as
  qemu reads it (qemu never looks at bitmaps and sets them all when it allocates;
  VirtualBox reads clear bits as zeros, which is the same for every image written
  by a tool that zero-fills new blocks).

New blocks get an all-ones bitmap: the container fills whole blocks (from the
parent where the write does not cover them), exactly as qemu and VirtualBox do.
A write into the clear sectors of an allocated differencing block writes only those
sectors and then sets their bits, so sectors already present are never touched.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ...blockmap import DATA, FREE, BlockMap, FlatTable
from ...io import Storage
from ...sizes import align_up
from ...types import Status
from .footer import BAT_FREE, SECTOR

#: Bitmap bytes kept in memory (differencing images read a block's bitmap per query).
BITMAP_CACHE_BYTES = 8 << 20

#: Allocated blocks a single status query looks at before returning a shorter run.
STATUS_LOOKAHEAD = 64


class BlockTable:
    """BAT, bitmaps and block I/O of one dynamic or differencing image."""

    def __init__(self, storage: Storage, table_offset: int, entries: int, block_size: int,
                 size: int, differencing: bool) -> None:
        self.storage = storage
        self.block_size = block_size
        self.size = size
        self.differencing = differencing
        self.sectors_per_block = block_size // SECTOR
        self.bitmap_bytes = -(-self.sectors_per_block // 8)
        self.bitmap_size = align_up(self.bitmap_bytes, SECTOR)
        self.table = FlatTable(storage, table_offset, entries, ">u4",
                               "VHD block allocation table")
        self.map = BlockMap(storage, block_size, size, self._lookup)
        self._bitmaps: OrderedDict[int, np.ndarray] = OrderedDict()
        # Each cached bitmap costs its bytes plus ~128 bytes of array overhead.
        self._bitmap_capacity = max(16, BITMAP_CACHE_BYTES // (self.bitmap_bytes + 128))

    @property
    def entries(self) -> np.ndarray:
        return self.table.entries

    @property
    def span(self) -> int:
        """File bytes one allocated block occupies (bitmap and data)."""
        return self.bitmap_size + self.block_size

    def _lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        entries = self.table.entries[first:first + count]
        states = np.where(entries == BAT_FREE, FREE, DATA).astype(np.uint8)
        offsets = entries.astype(np.int64) * SECTOR + self.bitmap_size
        return states, offsets

    # -- consistency -----------------------------------------------------------------

    def allocated(self) -> np.ndarray:
        """File offsets of the allocated blocks (their bitmaps), in BAT order."""
        entries = self.table.entries
        return entries[entries != BAT_FREE].astype(np.int64) * SECTOR

    def damage(self, reserved: list[tuple[int, int]], footer_offset: int) -> str | None:
        """What is wrong with the BAT, or None: a block overlapping one of the
        ``reserved`` ``(offset, length)`` ranges (footer copy, header, BAT) or the
        footer, or two blocks overlapping each other."""
        entries = self.table.entries
        used = np.flatnonzero(entries != BAT_FREE)
        if not used.size:
            return None
        starts = entries[used].astype(np.int64) * SECTOR
        ends = starts + self.span
        past = ends > footer_offset
        clash = np.zeros(len(used), dtype=bool)
        for offset, length in reserved:
            clash |= (starts < offset + length) & (ends > offset)
        for bad, where in ((past, "beyond the footer (the file is truncated?)"),
                           (clash, "inside the image's own metadata")):
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                return f"block {int(used[i])} lies at file offset {int(starts[i]):#x}, {where}"
        ordered = np.sort(starts)
        if ordered.size > 1 and (np.diff(ordered) < self.span).any():
            return "two blocks of the block allocation table overlap in the file"
        return None

    # -- reading -----------------------------------------------------------------------

    def bits(self, block: int) -> np.ndarray:
        """The sector bitmap of an allocated block, one bool per sector."""
        packed = self._bitmaps.get(block)
        if packed is None:
            offset = int(self.table.entries[block]) * SECTOR
            raw = self.storage.read_exact(offset, self.bitmap_bytes,
                                          f"the sector bitmap of block {block}")
            packed = np.frombuffer(raw, dtype=np.uint8).copy()
            if len(self._bitmaps) >= self._bitmap_capacity:
                self._bitmaps.popitem(last=False)
            self._bitmaps[block] = packed
        else:
            self._bitmaps.move_to_end(block)
        return np.unpackbits(packed)[:self.sectors_per_block].astype(bool)

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        if not self.differencing:
            return self.map.block_status(offset, length)
        end = min(offset + length, self.size)
        bs = self.block_size
        pos = offset
        status: Status | None = None
        looked = 0
        while pos < end:
            block = pos // bs
            if self.table.entries[block] == BAT_FREE:
                if status is Status.DATA:
                    break
                status = Status.FREE
                pos += self.map.block_status(pos, end - pos)[1]
                continue
            bits = self.bits(block)
            sector = (pos - block * bs) // SECTOR
            present = bool(bits[sector])
            here = Status.DATA if present else Status.FREE
            if status is not None and here is not status:
                break
            status = here
            changes = np.flatnonzero(bits[sector:] != present)
            stop = block * bs + (sector + (int(changes[0]) if changes.size
                                           else len(bits) - sector)) * SECTOR
            pos = min(stop, end)
            looked += 1
            if changes.size or looked >= STATUS_LOOKAHEAD:
                break
        return status or Status.FREE, pos - offset

    def read_into(self, offset: int, buf: memoryview) -> None:
        self.map.read_into(offset, buf)

    def write(self, offset: int, data: memoryview) -> None:
        """Write into allocated blocks; in a base image, mark the sectors present.

        Our blocks and qemu's have full bitmaps, but a block written by another tool
        may not; VirtualBox reads such sectors as zeros, so their bits are set
        (after the data) for it to see the write too.
        """
        self.map.write(offset, data)
        if self.differencing:
            return  # in-place writes only ever reach sectors already present there
        bs, end = self.block_size, offset + len(data)
        for block in range(offset // bs, (end - 1) // bs + 1):
            bits = self.bits(block)
            lo = (max(offset, block * bs) - block * bs) // SECTOR
            hi = -(-(min(end, (block + 1) * bs) - block * bs) // SECTOR)
            if not bits[lo:hi].all():
                bits[lo:hi] = True
                self._store_bits(block, bits)

    # -- allocating ----------------------------------------------------------------------

    def full_bitmap(self) -> bytes:
        """The bitmap of a block whose sectors are all present (qemu's all-ones form)."""
        return b"\xff" * self.bitmap_size

    def fill_free_sectors(self, block: int, chunk: memoryview) -> None:
        """Write the clear sectors of an allocated block from ``chunk``, then set them.

        Data goes first, the bitmap last: a crash in between leaves the sectors
        reading from the parent, as before the write.
        """
        bits = self.bits(block)
        clear = ~bits
        if not clear.any():
            return
        base = int(self.table.entries[block]) * SECTOR
        edges = np.flatnonzero(np.diff(np.concatenate(([0], clear.view(np.int8), [0]))))
        for start, stop in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            self.storage.write_at(base + self.bitmap_size + start * SECTOR,
                                  chunk[start * SECTOR:stop * SECTOR])
        self._store_bits(block, np.ones(self.sectors_per_block, dtype=bool))

    def _store_bits(self, block: int, bits: np.ndarray) -> None:
        """Write a block's bitmap (its cached copy was read by :meth:`bits`)."""
        packed = np.packbits(bits)
        spare = self.sectors_per_block % 8
        if spare:  # keep the padding bits of the last byte as they were
            packed[-1] |= self._bitmaps[block][-1] & (0xFF >> spare)
        self.storage.write_at(int(self.table.entries[block]) * SECTOR, packed.tobytes())
        self._bitmaps[block] = packed

    def fill_all_clear(self) -> None:
        """Zero-fill every absent sector of every allocated block and mark it present."""
        zero = memoryview(bytes(self.block_size))
        for block in np.flatnonzero(self.table.entries != BAT_FREE).tolist():
            self.fill_free_sectors(block, zero)

    def link(self, first: int, count: int, file_offset: int) -> None:
        """Point blocks ``first..first+count-1`` at consecutive slots from ``file_offset``."""
        step = self.span // SECTOR
        start = file_offset // SECTOR
        self.table.entries[first:first + count] = np.arange(
            start, start + count * step, step, dtype=np.uint32)
        self._forget(first, count)
        self.table.persist(first, count)

    def release(self, first: int, count: int) -> None:
        """Free blocks ``first..first+count-1``: their storage becomes unused space."""
        self.table.entries[first:first + count] = BAT_FREE
        self._forget(first, count)
        self.table.persist(first, count)

    def _forget(self, first: int, count: int) -> None:
        """Drop cached bitmaps of blocks ``first..first+count-1`` (by whichever is
        shorter: the range or the cache)."""
        if count <= len(self._bitmaps):
            for block in range(first, first + count):
                self._bitmaps.pop(block, None)
        else:
            for block in [b for b in self._bitmaps if first <= b < first + count]:
                del self._bitmaps[block]

    def mark_all_present(self) -> None:
        """Set every bit of every allocated block's bitmap (the data stays as it is).

        A base image reads its allocated blocks whole whatever their bitmaps say; a
        base that gains a parent must keep reading them so.
        """
        for block in np.flatnonzero(self.table.entries != BAT_FREE).tolist():
            if not self.bits(block).all():
                self.storage.write_at(int(self.table.entries[block]) * SECTOR,
                                      self.full_bitmap())
                self._forget(block, 1)

    def set_size(self, size: int, count: int) -> None:
        """A new disk size and table length (new entries free), once stored."""
        entries = self.table.entries
        if count > len(entries):
            entries = np.concatenate(
                [entries, np.full(count - len(entries), BAT_FREE, dtype=entries.dtype)])
        # astype: concatenate returns native-endian entries, the BAT is big-endian
        self.table.entries = entries[:count].astype(self.table.dtype)
        self._forget(count, max(len(entries) - count, 0))
        self.size = self.map.size = size
