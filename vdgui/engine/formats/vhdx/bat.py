"""The VHDX block allocation table (BAT) and sector bitmaps.

The BAT is an array of 64-bit entries: bits 0-2 a state, bits 20-63 a file offset
in MiB.  Payload entries and sector-bitmap entries are interleaved: after every
``chunk ratio`` payload entries comes the entry of the sector bitmap block that
covers them (MS-VHDX section 2.5).  A chunk is 2^23 logical sectors, so the chunk
ratio is ``2^23 * logical sector size / block size``.  Sector bitmap blocks (1 MiB,
one bit per logical sector, set = "this sector is in this file") only matter for
PARTIALLY_PRESENT blocks of differencing images.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ...blockmap import FlatTable
from ...errors import Corrupted
from ...io import Storage
from ...sizes import align_up
from .headers import MAX_FILE_OFFSET, MiB

# Payload block states.
NOT_PRESENT = 0
UNDEFINED = 1
ZERO = 2
UNMAPPED = 3
FULLY_PRESENT = 6
PARTIALLY_PRESENT = 7
STATE_NAMES = {NOT_PRESENT: "not present", UNDEFINED: "undefined", ZERO: "zero",
               UNMAPPED: "unmapped", 4: "reserved (4)", 5: "unmapped (VHDX 0.95)",
               FULLY_PRESENT: "fully present", PARTIALLY_PRESENT: "partially present"}

# Sector bitmap block states.
SB_NOT_PRESENT = 0
SB_PRESENT = 6

STATE_MASK = 0x7
OFFSET_SHIFT = 20
CHUNK_SECTORS = 1 << 23
SECTOR_BITMAP_SIZE = 1 * MiB
LOG_SECTOR = 4096

_BITMAP_CACHE = 64


def entry(state: int, offset: int = 0) -> int:
    """A BAT entry; ``offset`` must be 1 MiB aligned."""
    return (offset >> OFFSET_SHIFT) << OFFSET_SHIFT | state


def layout(virtual_size: int, block_size: int, logical_sector_size: int,
           has_parent: bool) -> tuple[int, int, int]:
    """``(chunk ratio, payload blocks, BAT entries)`` of a disk."""
    chunk_ratio = CHUNK_SECTORS * logical_sector_size // block_size
    blocks = -(-virtual_size // block_size)
    if has_parent:
        entries = -(-blocks // chunk_ratio) * (chunk_ratio + 1)
    else:
        entries = blocks + (blocks - 1) // chunk_ratio
    return chunk_ratio, blocks, entries


class Bat:
    """The BAT of an opened image, in memory; changes are collected as file patches."""

    def __init__(self, storage: Storage, offset: int, length: int, virtual_size: int,
                 block_size: int, logical_sector_size: int, has_parent: bool,
                 path: str) -> None:
        self.storage = storage
        self.offset = offset
        self.block_size = block_size
        self.logical_sector_size = logical_sector_size
        self.has_parent = has_parent
        self.path = path
        self.chunk_ratio, self.blocks, self.count = layout(
            virtual_size, block_size, logical_sector_size, has_parent)
        if self.count * 8 > length:
            raise Corrupted(f"the VHDX BAT region ({length} bytes) is too small for the "
                            f"{self.count} entries the disk needs", path)
        # Whole 4 KiB sectors: the unit the log writes back.
        table_bytes = align_up(self.count * 8, LOG_SECTOR)
        if offset + table_bytes > storage.size():  # refuse before allocating for it
            raise Corrupted(f"the file is truncated: the VHDX BAT ({table_bytes} bytes at "
                            f"offset {offset}) lies beyond its end", path)
        self.table = FlatTable(storage, offset, table_bytes // 8, "<u8", "VHDX BAT")
        self.entries = self.table.entries
        self._dirty: set[int] = set()
        self._bitmaps: OrderedDict[int, np.ndarray] = OrderedDict()

    # -- indexing -----------------------------------------------------------------------

    def payload_index(self, blocks: np.ndarray | int) -> np.ndarray | int:
        return blocks + blocks // self.chunk_ratio

    def bitmap_index(self, chunk: int) -> int:
        return chunk * (self.chunk_ratio + 1) + self.chunk_ratio

    def payload(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """States (uint8) and file offsets (int64) of payload blocks first..first+count-1."""
        blocks = np.arange(first, first + count, dtype=np.int64)
        raw = self.entries[self.payload_index(blocks)]
        states = (raw & STATE_MASK).astype(np.uint8)
        offsets = ((raw >> OFFSET_SHIFT) << OFFSET_SHIFT).astype(np.int64)
        return states, offsets

    def set_payload(self, block: int, state: int, offset: int = 0) -> None:
        index = int(self.payload_index(block))
        self.entries[index] = entry(state, offset)
        self._dirty.add(index * 8 // LOG_SECTOR)
        self._bitmaps.pop(block, None)

    def set_payloads(self, first: int, count: int, state: int) -> bool:
        """Put payload blocks first..first+count-1 in an unallocated ``state``.

        Returns False when none of them changes.
        """
        index = self.payload_index(np.arange(first, first + count, dtype=np.int64))
        value = np.uint64(entry(state))
        changed = index[self.entries[index] != value]
        if not changed.size:
            return False
        self.entries[changed] = value
        self._dirty.update(np.unique(changed * 8 // LOG_SECTOR).tolist())
        for block in list(self._bitmaps):
            if first <= block < first + count:
                del self._bitmaps[block]
        return True

    def set_entry(self, index: int, value: int) -> None:
        """Set any entry (payload or sector bitmap) to a raw value."""
        self.entries[index] = value
        self._dirty.add(index * 8 // LOG_SECTOR)
        self._bitmaps.clear()

    def move(self, index: int, offset: int) -> None:
        """Point an allocated entry at ``offset``, keeping its state."""
        self.set_entry(index, entry(int(self.entries[index]) & STATE_MASK, offset))

    def patches(self) -> list[tuple[int, bytes]]:
        """The changed BAT sectors as ``(file offset, 4 KiB)`` pairs; forgets them."""
        raw = self.entries.view(np.uint8)
        out = [(self.offset + s * LOG_SECTOR, raw[s * LOG_SECTOR:(s + 1) * LOG_SECTOR].tobytes())
               for s in sorted(self._dirty)]
        self._dirty.clear()
        return out

    # -- sector bitmaps -------------------------------------------------------------------

    def sector_bits(self, block: int) -> np.ndarray:
        """Presence of each logical sector of a PARTIALLY_PRESENT block (bool array)."""
        bits = self._bitmaps.pop(block, None)
        if bits is None:
            chunk, within = divmod(block, self.chunk_ratio)
            raw_entry = int(self.entries[self.bitmap_index(chunk)])
            if raw_entry & STATE_MASK != SB_PRESENT:
                raise Corrupted(f"block {block} is partially present but its sector bitmap "
                                f"block is missing", self.path)
            sectors = self.block_size // self.logical_sector_size
            where = (raw_entry >> OFFSET_SHIFT << OFFSET_SHIFT) + within * sectors // 8
            if where > MAX_FILE_OFFSET:
                raise Corrupted(f"the sector bitmap of block {block} lies beyond any "
                                f"possible end of the file", self.path)
            raw = self.storage.read_exact(where, sectors // 8, "a VHDX sector bitmap")
            bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8),
                                 bitorder="little").astype(bool)
            if len(self._bitmaps) >= _BITMAP_CACHE:
                self._bitmaps.popitem(last=False)
        self._bitmaps[block] = bits
        return bits

    # -- consistency ----------------------------------------------------------------------

    def allocations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(BAT indices, starts, ends)`` of every allocated payload and bitmap block."""
        return allocations(self.entries[:self.count], self.chunk_ratio, self.block_size)

    def damage(self, reserved: list[tuple[int, int, str]]) -> str | None:
        """Why writing could destroy data: blocks overlapping each other or metadata."""
        _, starts, ends = self.allocations()
        if starts.size and (int(starts.min()) < 0 or int(ends.max()) > MAX_FILE_OFFSET):
            return "a block lies beyond any possible end of the file"
        for start, end, name in reserved:
            hit = np.flatnonzero((starts < end) & (ends > start))
            if hit.size:
                return (f"a block at file offset {int(starts[hit[0]])} overlaps the {name}")
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
        clash = np.flatnonzero(starts[1:] < ends[:-1])
        if clash.size:
            return f"two blocks share file offset {int(starts[clash[0] + 1])}"
        return None

    def state_counts(self) -> dict[int, int]:
        states, _ = self.payload(0, self.blocks)
        values, counts = np.unique(states, return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))


def bitmap_entries(count: int, chunk_ratio: int) -> np.ndarray:
    """Which of ``count`` BAT entries are sector bitmap entries (bool array)."""
    return np.arange(count, dtype=np.int64) % (chunk_ratio + 1) == chunk_ratio


def allocations(entries: np.ndarray, chunk_ratio: int,
                block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indices, starts, ends)`` of the allocated blocks a table of entries names."""
    is_bitmap = bitmap_entries(len(entries), chunk_ratio)
    states = entries & STATE_MASK
    used = np.flatnonzero(np.where(is_bitmap, states == SB_PRESENT,
                                   (states == FULLY_PRESENT) | (states == PARTIALLY_PRESENT)))
    # Clipped, so that hostile offsets stay absurd rather than wrap around in int64.
    starts = np.minimum((entries[used] >> OFFSET_SHIFT) << OFFSET_SHIFT,
                        np.uint64(MAX_FILE_OFFSET << 1)).astype(np.int64)
    sizes = np.where(is_bitmap[used], SECTOR_BITMAP_SIZE, block_size)
    return used, starts, starts + sizes


def new_table(count: int, chunk_ratio: int, block_size: int, first_payload: int | None,
              blocks: int) -> bytes:
    """BAT bytes of a new image: all payload blocks not present, or (fixed images)
    fully present one after the other from ``first_payload``."""
    table = np.zeros(count, dtype="<u8")
    if first_payload is not None:
        index = np.arange(blocks, dtype=np.int64)
        offsets = (first_payload + index * block_size).astype(np.uint64)
        table[index + index // chunk_ratio] = offsets | np.uint64(FULLY_PRESENT)
    return table.tobytes()
