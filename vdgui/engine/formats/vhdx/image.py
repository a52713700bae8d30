"""VHDX: Microsoft's Hyper-V virtual hard disk format, version 2 (MS-VHDX).

Fixed, dynamic and differencing images are read and written.  Metadata updates
(BAT entries, metadata items) go through the log, so that a crash never leaves
the image inconsistent; a log a crash (ours or Hyper-V's) left behind is replayed
when the image is opened read/write, and applied in memory on a read-only open.
Headers are updated alternately, the non-current slot getting sequence + 1.

How the VD API's identity fields map onto VHDX:

* UUID: the page 83 data item (the virtual disk id).
* Modification UUID: the header's data write GUID, which MS-VHDX changes before the
  first change of user-visible data -- exactly the VD modification UUID's meaning.
* Parent modification UUID: the parent locator's ``parent_linkage``.  MS-VHDX links
  a differencing image to its parent's *data write GUID* (Hyper-V refuses the
  chain when they differ), not to the parent's identity, so a VHDX stores no
  parent UUID: the getter raises NotSupported and chains are found by path.
  A new differencing image stores the parent's modification UUID there (its data
  write GUID when the parent is a VHDX), else the parent's UUID.
* Parent file name: ``relative_path``, else ``absolute_win32_path``, else
  ``volume_path``.  No comment and no geometry are stored (VirtualBox derives it).

Payload block states: NOT_PRESENT is FREE (the parent's data in a differencing
image, zeros in a base); UNDEFINED, ZERO and UNMAPPED read as zeros and hide a
parent (MS-VHDX leaves their content undefined and allows zeros); FULLY_PRESENT
is data; PARTIALLY_PRESENT is resolved sector by sector from the sector bitmap.
New blocks stay NOT_PRESENT until written (Hyper-V's choice; qemu-img marks them
ZERO); written blocks are always allocated whole, so this backend never creates
partially present blocks, but it completes those Hyper-V left when writing them.

Operations: released blocks become NOT_PRESENT or ZERO; compaction moves the last
blocks (and a BAT that growth put after them) into free space, data first, then
the BAT entries or region tables through the log; growing writes new BAT entries
first and changes the disk size in one log entry with, when the BAT region is too
small, both region tables naming a new BAT written after the last block.  The
check and repair live in :mod:`.check`, the compaction plan in :mod:`.space`.
"""

from __future__ import annotations

import copy
import os
import struct
import uuid as uuidlib

import numpy as np

from .... import __version__
from ... import blockmap
from ...blockmap import BlockMap, is_zero, run_length, runs_of, zero_units
from ...errors import (Corrupted, InvalidParameter, InvalidSize, InvalidType, NotSupported,
                       ShrinkNotSupported)
from ...io import Storage, StorageProvider
from ...progress import Progress, report
from ...sizes import align_up
from ...types import (NIL_UUID, Capability, ConfigKey, ConfigKeyFlags, ConfigValueType,
                      DiskType, ImageFlags, OpenFlags, Status)
from ..base import (BackendInfo, CreateRequest, ParentLink, SingleFileImage, config_int,
                    relative_parent_path, validate_config)
from . import bat as batmod
from . import metadata as meta
from . import space
from .headers import (BAT_GUID, HEADER_AREA, HEADER_OFFSETS, LOG_VERSION, METADATA_GUID,
                      REGION_OFFSETS, VERSION, Header, MiB, Region, check_identifier,
                      pack_identifier, pack_region_table, read_creator, read_headers,
                      read_region_table, regions_in_use)
from .log import LogWriter, PatchedStorage, find_replay

#: The creator string of the file type identifier (diagnostics only).
CREATOR = f"vdgui {__version__}"
DEFAULT_LOG_SIZE = 1 * MiB
MAX_LOG_SIZE = 64 * MiB
#: Data copied by :meth:`VhdxImage.pack` before the BAT entries that follow it change.
PACK_BATCH = 64 * MiB

#: Block-map state of a partially present block (see :meth:`VhdxImage.block_status`).
_PARTIAL = 4

#: VHDX payload state -> block-map state, for base images and differencing images.
#: UNDEFINED, ZERO, UNMAPPED (and the reserved 4, 0.95's UNMAPPED 5) read as zeros.
_BASE_STATES = np.array([blockmap.FREE, blockmap.ZERO, blockmap.ZERO, blockmap.ZERO,
                         blockmap.ZERO, blockmap.ZERO, blockmap.DATA, blockmap.DATA],
                        dtype=np.uint8)
_DIFF_STATES = _BASE_STATES.copy()
_DIFF_STATES[batmod.PARTIALLY_PRESENT] = _PARTIAL


def default_block_size(size: int) -> int:
    """The block size qemu-img picks for a disk of ``size`` bytes (keeps the BAT small)."""
    if size > 32 << 40:
        return 64 * MiB
    if size > 100 << 30:
        return 32 * MiB
    if size > 1 << 30:
        return 16 * MiB
    return 8 * MiB


class VhdxImage(SingleFileImage):
    """An opened VHDX image."""

    #: Set for the repair, which opens a damaged image read/write to fix it.
    _tolerate_damage = False

    info = BackendInfo(
        name="VHDX",
        description="Hyper-V Virtual Hard Disk v2",
        capabilities=(Capability.UUID | Capability.CREATE_FIXED | Capability.CREATE_DYNAMIC
                      | Capability.DIFF | Capability.FILE | Capability.VFS
                      | Capability.DISCARD),
        extensions=(("vhdx", DiskType.HDD),),
        variants=("standard", "fixed"),
        config_keys=(
            ConfigKey("block_size", None, ConfigValueType.INTEGER,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("log_size", str(DEFAULT_LOG_SIZE), ConfigValueType.INTEGER,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("logical_sector_size", "512", ConfigValueType.INTEGER,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
        ),
        stores=frozenset({"uuid", "modification_uuid", "parent_modification_uuid",
                          "parent_path"}),
        max_size=meta.MAX_DISK_SIZE,
    )

    def __init__(self, io: StorageProvider, path: str, flags: OpenFlags,
                 disk_type: DiskType = DiskType.HDD) -> None:
        super().__init__(io, path, flags, disk_type)
        self.storage: PatchedStorage = PatchedStorage(self.storage)
        self._session = False  # headers renewed for this read/write session
        self._data_guid_renewed = False
        self._log: LogWriter | None = None
        self._log_state = "empty"

    # -- probing and opening -------------------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            check_identifier(storage.read_at(0, 8), path)
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("VHDX images are hard disks", path)
        return DiskType.HDD

    @classmethod
    def open_for_repair(cls, io: StorageProvider, path: str) -> VhdxImage:
        """Open read/write even when the BAT is damaged, for the repair to fix it."""
        return _Repairable.open(io, path, OpenFlags.NORMAL)

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list:
        """``VDRepair`` for VHDX (see :mod:`.check`)."""
        from .check import check
        return check(io, path, repair, progress)

    def _load(self) -> None:
        storage, path = self.storage, self.path
        check_identifier(storage.read_at(0, 8), path)
        self._creator = read_creator(storage)
        self.header, _ = read_headers(storage, path)
        if self.header.log_pending:
            replay = find_replay(storage, self.header, path)
            storage.set_replay(replay)
            self._log_state = (
                f"{replay.entries} pending entries (head sequence {replay.head_sequence}) "
                f"applied in memory; the file is unchanged until opened read/write"
                if replay else "marked in use but holds no valid entries")
            if storage.writable:
                self._replay_into_file()
        h = self.header
        regions, self._region_states = read_region_table(
            storage, path, (h.log_offset, h.log_length))
        self._bat_region: Region = regions[BAT_GUID]
        self._metadata_region: Region = regions[METADATA_GUID]
        self.meta = meta.read_metadata(storage, self._metadata_region.offset,
                                       self._metadata_region.length, path)
        m = self.meta
        self.bat = batmod.Bat(storage, self._bat_region.offset, self._bat_region.length,
                              m.virtual_size, m.block_size, m.logical_sector_size,
                              m.has_parent, path)
        self._states = _DIFF_STATES if m.has_parent else _BASE_STATES
        self._refresh_layout()
        if self._damage and storage.writable and not self._tolerate_damage:
            raise self._damaged_error()
        self.map = BlockMap(storage, m.block_size, m.virtual_size, self._io_lookup)

    def _structures(self) -> list[tuple[int, int, str]]:
        """``(start, end, name)`` of the headers, the log, the BAT and the metadata."""
        out = [(0, HEADER_AREA, "headers")]
        for region, name in ((self._bat_region, "BAT"),
                             (self._metadata_region, "metadata region")):
            out.append((region.offset, region.offset + region.length, name))
        h = self.header
        if h.log_length:
            out.append((h.log_offset, h.log_offset + h.log_length, "log"))
        return out

    def _refresh_layout(self) -> None:
        """Find BAT damage, and the 1 MiB aligned end where new blocks go."""
        structures = self._structures()
        self._damage = self.bat.damage(structures)
        _, _, ends = self.bat.allocations()
        self._end = align_up(max([self.storage.size(), *(end for _, end, _ in structures),
                                  int(ends.max()) if ends.size else 0]), MiB)

    def _damaged_error(self) -> Corrupted:
        return Corrupted(f"the VHDX block allocation table is damaged ({self._damage}); the "
                         f"image can be read but not written", self.path)

    def _replay_into_file(self) -> None:
        """Write the pending log (if it holds anything) into the file, mark it empty."""
        self.storage.apply_replay()
        self._start_session(log_guid=NIL_UUID)
        self._log_state = "replayed into the file at open"

    # -- headers and the write session ---------------------------------------------------

    def _write_header(self, **changes: object) -> None:
        """Write the non-current header slot with sequence + 1, and flush."""
        new = self.header.successor(**changes)
        self.storage.write_at(HEADER_OFFSETS[new.slot], new.pack())
        self.storage.flush()
        self.header = new

    def _start_session(self, **changes: object) -> None:
        """First change after opening for writing: a new file write GUID in both slots."""
        self._write_header(file_write_guid=uuidlib.uuid4(), **changes)
        self._write_header()
        self._session = True

    def _begin_write(self, data: bool) -> None:
        """Header updates MS-VHDX wants before the first write (of user data)."""
        self.check_writable()
        renew = data and not self._data_guid_renewed
        changes = {"data_write_guid": uuidlib.uuid4()} if renew else {}
        if not self._session:
            self._start_session(**changes)
        elif changes:
            self._write_header(**changes)
        self._data_guid_renewed |= renew

    def _commit(self, patches: list[tuple[int, bytes]], atomic: bool = False) -> None:
        """Make metadata patches durable through the log (a fresh log GUID per log use).

        ``atomic``: in one log entry, so that a crash applies all of them or none.
        """
        if not patches:
            return
        if not self.header.log_length:
            raise NotSupported("the VHDX image has no log, so its metadata cannot be "
                               "updated safely", self.path)
        if self._log is None:
            self._write_header(log_guid=uuidlib.uuid4())
            self._log = LogWriter(self.storage, self.header)
        self._log.commit(patches, atomic)

    def _retire_log(self) -> None:
        """Mark the log empty, so that nothing in it is replayed after a crash."""
        if self.header.log_pending:
            self._write_header(log_guid=NIL_UUID)
        self._log = None

    def _end_writing(self) -> None:
        """Leave the log empty (log GUID nil) at the end of a read/write session."""
        if self._session:
            self._retire_log()
        self._session = False
        self._data_guid_renewed = False
        self.storage.flush()

    # -- the block table ------------------------------------------------------------------

    def _io_lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Block states for reading and in-place writing: partial blocks are stored data."""
        states, offsets = self.bat.payload(first, count)
        return _BASE_STATES[states], offsets

    @property
    def size(self) -> int:
        return self.meta.virtual_size

    @property
    def sector_size(self) -> int:
        return self.meta.logical_sector_size

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        bs = self.meta.block_size
        end = min(offset + length, self.size)
        first = offset // bs
        count = min((end - 1) // bs - first + 1, blockmap.LOOKAHEAD)
        raw, _ = self.bat.payload(first, count)
        states = self._states[raw]
        if states[0] == _PARTIAL:
            return self._partial_status(first, offset, end)
        run = run_length(states)
        return blockmap.STATUS_OF_STATE[int(states[0])], min((first + run) * bs, end) - offset

    def _partial_status(self, block: int, offset: int, end: int) -> tuple[Status, int]:
        """Status of a partially present block, sector by sector from its bitmap."""
        bits = self.bat.sector_bits(block)
        ls = self.meta.logical_sector_size
        start = block * self.meta.block_size
        index = (offset - start) // ls
        run = run_length(bits, index)
        stop = min(start + (index + run) * ls, end)
        return (Status.DATA if bits[index] else Status.FREE), stop - offset

    def read_into(self, offset: int, buf: memoryview) -> None:
        self.map.read_into(offset, buf)

    def write(self, offset: int, data: memoryview) -> None:
        self._begin_write(data=True)
        self.map.write(offset, data)

    @property
    def allocation_unit(self) -> int:
        return self.meta.block_size

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Allocate payload blocks at the end of the file; zero units become ZERO blocks.

        The data is written and flushed before the log entry that maps it.
        """
        self._begin_write(data=True)
        bs = self.meta.block_size
        first, count = offset // bs, len(data) // bs
        states, offsets = self.bat.payload(first, count)
        diff = self.meta.has_parent
        stored = (states == batmod.FULLY_PRESENT) | (states == batmod.PARTIALLY_PRESENT)
        zero = ~stored & (np.zeros(count, dtype=bool) if self.open_flags & OpenFlags.HONOR_ZEROES
                          else zero_units(data, bs))
        for i in np.flatnonzero(stored).tolist():
            unit = data[i * bs:(i + 1) * bs]
            if states[i] == batmod.PARTIALLY_PRESENT and diff:
                self._fill_partial(first + i, int(offsets[i]), unit)
            else:  # stored already (not FREE or ZERO: a caller's mistake)
                self.storage.write_at(int(offsets[i]), unit)
        for start, n, fresh in runs_of(~stored & ~zero):
            if fresh:
                self.storage.write_at(self._end, data[start * bs:(start + n) * bs])
                for i in range(n):
                    self.bat.set_payload(first + start + i, batmod.FULLY_PRESENT,
                                         self._end + i * bs)
                self._end += n * bs
        if diff:  # a zero unit must hide the parent's data
            for i in np.flatnonzero(zero & (states == batmod.NOT_PRESENT)).tolist():
                self.bat.set_payload(first + i, batmod.ZERO)
        patches = self.bat.patches()
        if patches:
            self.storage.flush()
            self._commit(patches)

    def _fill_partial(self, block: int, file_offset: int, unit: memoryview) -> None:
        """Write the sectors a partially present block lacks; it becomes fully present.

        The unit the container passes holds the parent's data where this image has
        its own sectors, so only the absent sectors are taken from it.
        """
        bits = self.bat.sector_bits(block)
        ls = self.meta.logical_sector_size
        edges = np.flatnonzero(np.diff(np.concatenate(([True], bits, [True])).astype(np.int8)))
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            self.storage.write_at(file_offset + a * ls, unit[a * ls:b * ls])
        self.bat.set_payload(block, batmod.FULLY_PRESENT, file_offset)

    # -- releasing blocks, compaction, resizing -------------------------------------------

    @property
    def can_mark_zero(self) -> bool:
        return True

    def _refuse_fixed(self, what: str) -> None:
        if self.meta.leave_blocks_allocated:
            raise NotSupported(f"a fixed VHDX image keeps every block allocated, so it "
                               f"cannot {what} (convert it to a dynamic image first)",
                               self.path)

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        """Make the blocks NOT_PRESENT (the parent shows through; zeros in a base) or
        ZERO (zeros that hide the parent), in one log entry."""
        self.check_writable()
        self._refuse_fixed("release blocks")
        bs = self.meta.block_size
        first, end = offset // bs, -(-min(offset + length, self.size) // bs)
        if end <= first:
            return
        state = batmod.ZERO if zero else batmod.NOT_PRESENT
        if self.bat.set_payloads(first, end - first, state):
            self._begin_write(data=False)
            self._commit(self.bat.patches())

    def pack(self, progress: Progress | None = None) -> None:
        """Move the last blocks into free space and shorten the file (see :mod:`.space`).

        Each batch of blocks is copied and flushed before the log entry that points
        the BAT at the copies, so an interruption leaves every block readable.
        """
        self.check_writable()
        self._refuse_fixed("be compacted")
        self._pack(progress)

    def _pack(self, progress: Progress | None) -> None:
        region = self._bat_region
        plan = space.plan([(s, e) for s, e, name in self._structures() if name != "BAT"],
                          (region.offset, region.offset + region.length),
                          *self.bat.allocations())
        if not plan.moves and self.storage.size() <= plan.end:
            return
        self._begin_write(data=False)
        batch: list[space.Move] = []
        copied = 0
        for done, move in enumerate(plan.moves):
            report(progress, done, len(plan.moves), "moving blocks")
            if move.index == space.BAT:
                self._repoint(batch)  # the copy must hold every entry
                batch, copied = [], 0
                self._copy(move.source, move.target, move.size)
                self.storage.flush()
                self._point_at_bat(Region(BAT_GUID, move.target, region.length,
                                          region.required))
                continue
            self._copy(move.source, move.target, move.size)
            batch.append(move)
            copied += move.size
            if copied >= PACK_BATCH:
                self._repoint(batch)
                batch, copied = [], 0
        self._repoint(batch)
        # A log replayed after the cut would lengthen the file again: retire it first.
        self._retire_log()
        if self.storage.size() > plan.end:
            self.storage.set_size(plan.end)
            self.storage.flush()
        self._end = plan.end
        report(progress, len(plan.moves), len(plan.moves), "moving blocks")

    def _repoint(self, moves: list[space.Move]) -> None:
        """Point the BAT entries at the blocks' copies, once those are durable."""
        if moves:
            self.storage.flush()
            for move in moves:
                self.bat.move(move.index, move.target)
            self._commit(self.bat.patches())

    def _copy(self, source: int, target: int, size: int) -> None:
        self.storage.copy_to(source, size, self.storage, target)  # a last block may end early

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Grow (new blocks, the BAT moved to the end of the file if its region is
        too small) or shrink (only when nothing stored lies beyond the new end)."""
        self.check_writable()
        m = self.meta
        if size % m.logical_sector_size or not 0 < size <= meta.MAX_DISK_SIZE:
            raise InvalidSize(f"a VHDX image holds a whole number of {m.logical_sector_size}"
                              f"-byte sectors, at most 64 TiB (asked for {size} bytes)",
                              self.path)
        if size < m.virtual_size:
            self._shrink(size)
        elif size > m.virtual_size:
            self._grow(size, progress)

    def _shrink(self, size: int) -> None:
        bs = self.meta.block_size
        if self.meta.leave_blocks_allocated:
            raise ShrinkNotSupported("a fixed VHDX image cannot be shrunk (convert it to a "
                                     "dynamic one first)", self.path)
        keep = -(-size // bs)
        states, _ = self.bat.payload(keep, self.bat.blocks - keep)
        stored = np.flatnonzero((states == batmod.FULLY_PRESENT)
                                | (states == batmod.PARTIALLY_PRESENT))
        if stored.size:
            raise ShrinkNotSupported(f"data is stored beyond the new end (from offset "
                                     f"{(keep + int(stored[0])) * bs}); shrinking would "
                                     f"lose it", self.path)
        pos, end = size, min(keep * bs, self.size)
        while pos < end:
            status, run = self.block_status(pos, end - pos)
            if status is Status.DATA:
                tail = bytearray(run)
                self.map.read_into(pos, memoryview(tail))
                if not is_zero(tail):
                    raise ShrinkNotSupported(f"the last block holds data after offset "
                                             f"{size}; shrinking would lose it", self.path)
            pos += run
        self._begin_write(data=True)
        self._commit(self.meta.set_item(meta.VIRTUAL_DISK_SIZE, struct.pack("<Q", size),
                                        self.path), atomic=True)
        self._set_virtual_size(size)

    def _grow(self, size: int, progress: Progress | None) -> None:
        m = self.meta
        bs, old_blocks = m.block_size, self.bat.blocks
        _, blocks, count = batmod.layout(size, bs, m.logical_sector_size, m.has_parent)
        self._begin_write(data=True)
        # The last block's bytes past the old end come into the disk: they must be zeros.
        if m.virtual_size % bs:
            state, offset = (int(a[0]) for a in self.bat.payload(old_blocks - 1, 1))
            if state in (batmod.FULLY_PRESENT, batmod.PARTIALLY_PRESENT):
                within = m.virtual_size % bs
                self.storage.write_at(offset + within,
                                      bytes(min(bs, size - (old_blocks - 1) * bs) - within))
        fixed = (old_blocks, blocks - old_blocks) if m.leave_blocks_allocated else (0, 0)
        self._store_table(self._entries(count), self.meta.set_item(
            meta.VIRTUAL_DISK_SIZE, struct.pack("<Q", size), self.path), fixed, progress)
        self._set_virtual_size(size)

    def _set_virtual_size(self, size: int) -> None:
        self.meta.virtual_size = size
        self._reload_bat()
        self.map.size = size

    def _entries(self, count: int) -> np.ndarray:
        """The first ``count`` BAT entries as they stand, extended with zeros."""
        entries = np.zeros(count, dtype="<u8")
        keep = min(count, self.bat.count)
        entries[:keep] = self.bat.entries[:keep]
        return entries

    def _store_table(self, entries: np.ndarray, patches: list[tuple[int, bytes]],
                     fixed_blocks: tuple[int, int] = (0, 0),
                     progress: Progress | None = None) -> None:
        """Make ``entries`` the BAT, then apply ``patches`` (the metadata that gives
        it meaning: disk size, parent) in one log entry.

        Entries beyond the current count are invisible until the patches land, so
        they are written first.  When the BAT region is too small, a new one is
        written after the last block and both region tables point at it in the
        same log entry as the patches.  ``fixed_blocks`` ``(first, count)`` are
        payload blocks of a fixed image to allocate after everything else.
        """
        count = len(entries)
        region = self._bat_region
        end = self._end
        relocate = count * 8 > region.length
        if relocate:
            region = Region(BAT_GUID, end, align_up(count * 8, MiB), region.required)
            end += region.length
        first, n = fixed_blocks
        if n:
            bs = self.meta.block_size
            blocks = np.arange(first, first + n, dtype=np.int64)
            entries[blocks + blocks // self.bat.chunk_ratio] = \
                (end + (blocks - first) * bs).astype(np.uint64) | np.uint64(batmod.FULLY_PRESENT)
            self._reserve(self.storage, end, n * bs, progress)
            end += n * bs
        if relocate:
            self.storage.write_at(region.offset, entries.tobytes())
        if self.storage.size() < end:
            self.storage.set_size(end)
        self.storage.flush()
        if relocate:
            patches = self._region_patches(region) + patches
        else:
            self._commit(self._table_patches(region.offset, entries, self.bat.count))
        self._commit(patches, atomic=True)
        self._bat_region = region
        self._end = end

    def _region_patches(self, bat: Region) -> list[tuple[int, bytes]]:
        """Both region tables, naming ``bat`` as the BAT region."""
        table = pack_region_table([bat if r.guid == BAT_GUID else r
                                   for r in regions_in_use(self.storage, self.path)])
        return [(offset, table) for offset in REGION_OFFSETS]

    def _point_at_bat(self, bat: Region) -> None:
        """Make a (flushed) copy of the BAT the one both region tables name."""
        self._commit(self._region_patches(bat), atomic=True)
        self._bat_region = bat
        self._reload_bat()

    def _table_patches(self, offset: int, entries: np.ndarray,
                       old_count: int) -> list[tuple[int, bytes]]:
        """The 4 KiB sectors of a BAT at ``offset`` that differ from ``entries``
        (entries up to ``old_count`` that it lacks become zeros)."""
        sector = batmod.LOG_SECTOR
        length = align_up(max(len(entries), old_count) * 8, sector)
        current = np.frombuffer(self.storage.read_at(offset, length).ljust(length, b"\0"),
                                dtype=np.uint8)
        wanted = current.copy()
        wanted[:max(len(entries), old_count) * 8] = 0
        wanted[:len(entries) * 8] = entries.view(np.uint8)
        rows = np.flatnonzero((current != wanted).reshape(-1, sector).any(axis=1))
        return [(offset + int(r) * sector, wanted[r * sector:(r + 1) * sector].tobytes())
                for r in rows]

    def _reload_bat(self) -> None:
        m = self.meta
        self.bat = batmod.Bat(self.storage, self._bat_region.offset, self._bat_region.length,
                              m.virtual_size, m.block_size, m.logical_sector_size,
                              m.has_parent, self.path)

    def _rebuild_sector_bitmap(self, chunk: int) -> None:
        """A new sector bitmap block for ``chunk`` (the repair's guess): a sector of a
        partially present block is this image's own when it holds anything but zeros."""
        bat, m = self.bat, self.meta
        self._begin_write(data=False)
        ls = m.logical_sector_size
        sectors = m.block_size // ls
        bitmap = np.zeros(batmod.SECTOR_BITMAP_SIZE, dtype=np.uint8)
        first = chunk * bat.chunk_ratio
        states, offsets = bat.payload(first, min(bat.chunk_ratio, bat.blocks - first))
        step = min(16 * MiB, m.block_size)
        for within in np.flatnonzero(states == batmod.PARTIALLY_PRESENT).tolist():
            own = np.zeros(sectors, dtype=bool)
            for pos in range(0, m.block_size, step):
                raw = self.storage.read_at(int(offsets[within]) + pos, step).ljust(step, b"\0")
                rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, ls).any(axis=1)
                own[pos // ls:(pos + step) // ls] = rows[:sectors - pos // ls]
            at = within * sectors // 8
            bitmap[at:at + sectors // 8] = np.packbits(own, bitorder="little")
        where = self._end
        self.storage.write_at(where, bitmap.tobytes())
        self.storage.flush()  # the bitmap before the entry naming it
        self._end = where + batmod.SECTOR_BITMAP_SIZE
        bat.set_entry(bat.bitmap_index(chunk), batmod.entry(batmod.SB_PRESENT, where))
        self._commit(bat.patches())

    # -- metadata -------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def image_flags(self) -> ImageFlags:
        flags = ImageFlags.NONE
        if self.meta.has_parent:
            flags |= ImageFlags.DIFF
        elif self.meta.leave_blocks_allocated:
            flags |= ImageFlags.FIXED
        return flags

    @property
    def uuid(self) -> uuidlib.UUID:
        return self.meta.disk_id

    @uuid.setter
    def uuid(self, value: uuidlib.UUID) -> None:
        self._begin_write(data=False)
        self._commit(self.meta.set_item(meta.PAGE83_DATA, value.bytes_le, self.path))
        self.meta.disk_id = value

    @property
    def modification_uuid(self) -> uuidlib.UUID:
        return self.header.data_write_guid

    @modification_uuid.setter
    def modification_uuid(self, value: uuidlib.UUID) -> None:
        self.check_writable()
        if self._session:
            self._write_header(data_write_guid=value)
        else:
            self._start_session(data_write_guid=value)
        self._data_guid_renewed = True

    def _no_parent_uuid(self) -> NotSupported:
        return NotSupported("a VHDX image stores no parent UUID: a differencing VHDX is "
                            "linked to its parent's data write GUID, which is the parent "
                            "modification UUID", self.path)

    @property
    def parent_uuid(self) -> uuidlib.UUID:
        raise self._no_parent_uuid()

    @parent_uuid.setter
    def parent_uuid(self, value: uuidlib.UUID) -> None:
        raise self._no_parent_uuid()

    @property
    def parent_modification_uuid(self) -> uuidlib.UUID:
        locator = self.meta.locator
        return (locator.linkage() if locator else None) or NIL_UUID

    @parent_modification_uuid.setter
    def parent_modification_uuid(self, value: uuidlib.UUID) -> None:
        locator = self.meta.locator
        if locator is None:
            raise NotSupported("this VHDX image has no parent", self.path)
        self._begin_write(data=False)
        entries = dict(locator.entries)
        entries["parent_linkage"] = meta.linkage_text(value)
        new = meta.ParentLocator(locator.locator_type, entries)
        self._commit(self.meta.set_item(meta.PARENT_LOCATOR, new.pack(), self.path))
        self.meta.locator = new

    @property
    def parent_filename(self) -> str | None:
        locator = self.meta.locator
        return locator.path if locator else None

    def check_parent(self, link: ParentLink | None) -> None:
        self._parent_change(link)

    def _parent_change(self, link: ParentLink | None
                       ) -> tuple[meta.Metadata, list[tuple[int, bytes]]] | None:
        """The metadata after re-linking to ``link`` and the writes that store it
        (None: nothing to do); raises what re-linking would meet."""
        m = self.meta
        if link is None and not m.has_parent:
            return None
        if link is None and np.any(self.bat.payload(0, self.bat.blocks)[0]
                                   == batmod.PARTIALLY_PRESENT):
            raise NotSupported("a differencing VHDX with partially present blocks cannot "
                               "become a base image", self.path)
        draft = copy.deepcopy(m)
        draft.has_parent = link is not None
        draft.locator = self._new_locator(self.path, link) if link else None
        patches = (draft.set_item(meta.PARENT_LOCATOR, draft.locator.pack(), self.path)
                   if draft.locator else draft.remove_item(meta.PARENT_LOCATOR))
        patches += draft.set_item(meta.FILE_PARAMETERS, meta.pack_file_parameters(
            m.block_size, m.leave_blocks_allocated, draft.has_parent), self.path)
        return draft, patches

    def set_parent(self, link: ParentLink | None) -> None:
        """Point the image at a new parent (merge, rebase), or make it a base (None).

        The parent locator and the HasParent flag change together in one log entry,
        with the BAT's sector bitmap entries (a base has fewer; becoming a base
        drops them, becoming a differencing image may move the BAT to make room).
        """
        change = self._parent_change(link)
        if change is None:
            return
        draft, patches = change
        self._begin_write(data=False)
        m = self.meta
        count = batmod.layout(m.virtual_size, m.block_size, m.logical_sector_size,
                              draft.has_parent)[2]
        entries = self._entries(count)
        if not draft.has_parent:  # no partially present block is left to need them
            entries[batmod.bitmap_entries(count, self.bat.chunk_ratio)] = 0
        self._store_table(entries, patches)
        self.meta = draft
        self._reload_bat()
        self._states = _DIFF_STATES if draft.has_parent else _BASE_STATES

    def rename(self, new_path: str) -> None:
        super().rename(new_path)
        self.storage.inner.path = new_path

    # -- lifetime ---------------------------------------------------------------------------

    def set_open_flags(self, flags: OpenFlags) -> None:
        want_writable = not flags & OpenFlags.READONLY
        if want_writable and not self.storage.writable and self._damage:
            raise self._damaged_error()
        super().set_open_flags(flags)
        if want_writable and self.header.log_pending:
            self._replay_into_file()

    def describe(self) -> list[tuple[str, str]]:
        h, m = self.header, self.meta
        _, on_disk = read_headers(self.storage, self.path)
        slots = [f"sequence {s.sequence}" if s else "invalid" for s in on_disk]
        counts = self.bat.state_counts()
        out = [
            ("creator", repr(self._creator)),
            ("header 1", slots[0]),
            ("header 2", slots[1]),
            ("current header", f"{h.slot + 1} (sequence {h.sequence})"),
            ("version", str(h.version)),
            ("file write GUID", str(h.file_write_guid)),
            ("data write GUID", str(h.data_write_guid)),
            ("log GUID", str(h.log_guid)),
            ("log", f"offset {h.log_offset:#x}, length {h.log_length}, version "
                    f"{h.log_version}: {self._log_state}"),
            ("region table 1", self._region_states[0]),
            ("region table 2", self._region_states[1]),
            ("BAT region", f"offset {self._bat_region.offset:#x}, length "
                           f"{self._bat_region.length}"),
            ("metadata region", f"offset {self._metadata_region.offset:#x}, length "
                                f"{self._metadata_region.length}, {len(m.entries)} items"),
            ("virtual size", str(m.virtual_size)),
            ("block size", str(m.block_size)),
            ("logical sector size", str(m.logical_sector_size)),
            ("physical sector size", str(m.physical_sector_size)),
            ("leave blocks allocated", str(m.leave_blocks_allocated)),
            ("has parent", str(m.has_parent)),
            ("virtual disk id (page 83)", str(m.disk_id)),
            ("chunk ratio", str(self.bat.chunk_ratio)),
            ("payload blocks", str(self.bat.blocks)),
            ("BAT entries", str(self.bat.count)),
            ("payload block states", ", ".join(
                f"{batmod.STATE_NAMES.get(s, s)}: {n}" for s, n in sorted(counts.items()))),
        ]
        if m.locator is not None:
            out.append(("parent locator type", str(m.locator.locator_type)))
            out += [(f"parent locator {k}", v) for k, v in m.locator.entries.items()]
        if self._damage:
            out.append(("damage", self._damage))
        return out

    # -- creation -----------------------------------------------------------------------------

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> VhdxImage:
        path = request.path
        validate_config(cls.info, request.config, path)
        logical = config_int(request.config, "logical_sector_size", 512, path)
        if logical not in meta.SECTOR_SIZES:
            raise InvalidParameter(f"logical_sector_size {logical} must be 512 or 4096", path)
        size = align_up(request.size, logical)
        if not 0 < size <= meta.MAX_DISK_SIZE:
            raise InvalidSize(f"a VHDX image holds at most 64 TiB (asked for {request.size} "
                              f"bytes)", path)
        block_size = config_int(request.config, "block_size", 0, path) or \
            default_block_size(size)
        if block_size & (block_size - 1) or not \
                meta.MIN_BLOCK_SIZE <= block_size <= meta.MAX_BLOCK_SIZE:
            raise InvalidParameter(f"block_size {block_size} must be a power of two between "
                                   f"1 MiB and 256 MiB", path)
        log_size = config_int(request.config, "log_size", DEFAULT_LOG_SIZE, path)
        if log_size % MiB or not MiB <= log_size <= MAX_LOG_SIZE:
            raise InvalidParameter(f"log_size {log_size} must be a multiple of 1 MiB between "
                                   f"1 MiB and {MAX_LOG_SIZE >> 20} MiB", path)
        parent = request.parent
        fixed = bool(request.image_flags & ImageFlags.FIXED) and parent is None
        chunk_ratio, blocks, entries = batmod.layout(size, block_size, logical,
                                                     parent is not None)
        log_offset = HEADER_AREA
        bat_offset = log_offset + log_size
        bat_length = align_up(entries * 8, MiB)
        metadata_offset = bat_offset + bat_length
        payload = metadata_offset + MiB
        end = payload + (blocks * block_size if fixed else 0)

        locator = cls._new_locator(path, parent) if parent else None
        header = Header(slot=1, sequence=0, file_write_guid=uuidlib.uuid4(),
                        data_write_guid=uuidlib.uuid4(), log_guid=NIL_UUID,
                        log_version=LOG_VERSION, version=VERSION, log_length=log_size,
                        log_offset=log_offset)
        regions = [Region(BAT_GUID, bat_offset, bat_length, True),
                   Region(METADATA_GUID, metadata_offset, MiB, True)]
        table = pack_region_table(regions)

        storage = io.open(path, create=True)
        try:
            storage.write_at(0, pack_identifier(CREATOR))
            for _ in HEADER_OFFSETS:
                header = header.successor()
                storage.write_at(HEADER_OFFSETS[header.slot], header.pack())
            for offset in REGION_OFFSETS:
                storage.write_at(offset, table)
            storage.write_at(bat_offset, batmod.new_table(
                entries, chunk_ratio, block_size, payload if fixed else None, blocks))
            storage.write_at(metadata_offset, meta.pack_region(
                block_size, fixed, size, request.uuid, logical, logical, locator))
            if fixed:
                cls._reserve(storage, payload, end - payload, request.progress)
            if storage.size() < end:
                storage.set_size(end)
            storage.flush()
        finally:
            storage.close()
        return cls.open(io, path, request.open_flags & ~OpenFlags.READONLY)

    @staticmethod
    def _new_locator(path: str, parent: ParentLink) -> meta.ParentLocator:
        """The parent locator of a new differencing image."""
        known = [u for u in (parent.modification_uuid, parent.uuid) if u and u != NIL_UUID]
        linkage = known[0] if known else NIL_UUID
        entries = {"parent_linkage": meta.linkage_text(linkage)}
        stored = relative_parent_path(path, parent.path)
        if not os.path.isabs(stored):  # with "\\", as Hyper-V can follow it too
            entries["relative_path"] = stored.replace(os.sep, "\\")
        # As the host spells it: on Windows a Win32 path, elsewhere for people to read.
        entries["absolute_win32_path"] = os.path.abspath(parent.path)
        return meta.ParentLocator(meta.VHDX_LOCATOR_TYPE, entries)

    @staticmethod
    def _reserve(storage: Storage, start: int, length: int, progress: Progress | None) -> None:
        """Reserve the payload of a fixed image, reporting progress."""
        step = 64 << 20
        for pos in range(0, length, step):
            report(progress, pos, length, "allocating")
            storage.allocate(start + pos, min(step, length - pos))
        report(progress, length, length, "allocating")


class _Repairable(VhdxImage):
    """A VHDX image the repair opens read/write although its BAT is damaged."""

    _tolerate_damage = True
