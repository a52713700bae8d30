"""The VHD backend: opening, reading, writing and creating VHD images.

See the package docstring for the format, the size policy and what other tools
read back from the images we write.
"""

from __future__ import annotations

import logging
import os
import uuid as uuidlib

import numpy as np

from ...blockmap import MAX_TABLE_BYTES, fill_zero, is_zero, zeros
from ...errors import (
    Corrupted,
    InvalidHeader,
    InvalidParameter,
    InvalidSize,
    InvalidState,
    InvalidType,
    NotSupported,
    ShrinkNotSupported,
)
from ...findings import Finding
from ...io import StorageProvider
from ...progress import Progress, report
from ...sizes import align_up
from ...types import (
    NIL_UUID,
    Capability,
    ConfigKey,
    ConfigKeyFlags,
    ConfigValueType,
    DiskType,
    Geometry,
    ImageFlags,
    OpenFlags,
    Status,
)
from ..base import (
    BackendInfo,
    CreateRequest,
    ParentLink,
    SingleFileImage,
    config_int,
    validate_config,
)
from . import locators as loc
from . import space
from .create import (
    CREATOR_APP,
    CREATOR_VERSION,
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MAX_SIZE,
    locator_area,
    parent_name,
    write_image,
)
from .dynamic import BlockTable
from .footer import (
    BAT_FREE,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    DISK_TYPE_NAMES,
    FOOTER_SIZE,
    HEADER,
    HEADER_CHECKSUM_AT,
    HEADER_COOKIE,
    HEADER_SIZE,
    NO_DATA_OFFSET,
    SECTOR,
    FoundFooter,
    checksum,
    empty_locator,
    find_footers,
    format_time,
    four_cc,
    from_vhd_time,
    pack_footer,
    pack_header,
    pack_locators,
    to_vhd_time,
    unpack_locators,
    uuid_from_raw,
    uuid_to_raw,
)
from .geometry import chs_bytes, resized_sizing, sized_by_chs, virtual_size

log = logging.getLogger(__name__)

#: Largest disk a block table may describe before we call its entry count absurd.
MAX_TABLE_SPAN = 2 << 40
#: Highest file offset a BAT entry (a 32-bit sector number) can point at.
MAX_BLOCK_OFFSET = 0xFFFFFFFE * SECTOR


def _ours(message: str, path: str) -> InvalidHeader:
    return InvalidHeader(message, path, status="VERR_VD_VHD_INVALID_HEADER")


class VhdImage(SingleFileImage):
    """An opened VHD image (fixed, dynamic or differencing)."""

    info = BackendInfo(
        name="VHD",
        description="Virtual Hard Disk (Virtual PC, Hyper-V; qemu's vpc)",
        capabilities=(Capability.UUID | Capability.DIFF | Capability.FILE
                      | Capability.CREATE_FIXED | Capability.CREATE_DYNAMIC | Capability.ASYNC
                      | Capability.VFS | Capability.DISCARD | Capability.PREFERRED),
        extensions=(("vhd", DiskType.HDD),),
        variants=("standard", "fixed"),
        config_keys=(ConfigKey("BlockSize", str(DEFAULT_BLOCK_SIZE), ConfigValueType.INTEGER,
                               ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),),
        stores=frozenset({"uuid", "parent_uuid", "pchs", "parent_path"}),
        max_size=MAX_SIZE,
    )

    # -- probing and opening ---------------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            tail, copy = find_footers(storage)
        if tail is None and copy is None:
            raise _ours("not a VHD image (no 'conectix' footer)", path)
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("VHD images are hard disks", path)
        return DiskType.HDD

    def _problem(self, message: str, repair: str) -> None:
        """A recoverable inconsistency: refuse to write, warn when only reading."""
        if not self.read_only:
            raise Corrupted(f"{message}; {repair}", self.path)
        log.warning("%s: %s (reading anyway)", self.path, message)
        self._damage = self._damage or message

    def _load(self) -> None:
        self._damage: str | None = None
        self.blocks: BlockTable | None = None
        self._header: dict | None = None
        self._locators: list[dict] = []
        self._locator_data: list[bytes] = []
        tail, copy = find_footers(self.storage)
        self._choose_footer(tail, copy)
        f = self._footer
        self._disk_type = f["disk_type"]
        if self._disk_type not in (DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING):
            raise NotSupported(f"VHD disk type {self._disk_type} "
                               f"({DISK_TYPE_NAMES.get(self._disk_type, 'unknown')}) "
                               f"is not supported", self.path)
        self._size = virtual_size(f["creator_app"], f["current_size"], self._geometry)
        if self._size == 0:
            raise Corrupted("the VHD footer gives a disk size of 0", self.path)
        if self._disk_type == DISK_FIXED:
            if self._size > self._footer_offset:
                raise Corrupted(f"the fixed VHD holds {self._footer_offset} bytes of data "
                                f"before its footer but its disk is {self._size} bytes "
                                f"(the file is truncated?)", self.path)
        else:
            self._load_dynamic()

    def _choose_footer(self, tail: FoundFooter | None, copy: FoundFooter | None) -> None:
        if tail is not None and tail.valid:
            chosen = tail
        elif copy is not None and copy.valid:
            what = "has a bad checksum" if tail is not None else "is missing"
            self._problem(f"the VHD footer at the end of the file {what}", "the copy of it "
                          "at the start of the file is intact and `vdimg repair` will fix it")
            chosen = copy
        elif tail is not None or copy is not None:
            chosen = tail or copy
            self._problem("the VHD footer has a bad checksum and no intact copy",
                          "`vdimg repair` can recompute it")
        else:
            raise _ours("not a VHD image (no 'conectix' footer at the end of the file "
                        "or at its start)", self.path)
        self._footer = dict(chosen.fields)
        self._footer_source = "end of file" if chosen is tail else "copy at offset 0"
        self._footer_offset = tail.offset if tail is not None else self.storage.size()
        self._copy_matches = copy is not None and tail is not None and copy.raw == tail.raw

    @property
    def _geometry(self) -> Geometry:
        f = self._footer
        return Geometry(f["cylinders"], f["heads"], f["sectors"])

    def _load_dynamic(self) -> None:
        path, file_size = self.path, self.storage.size()
        offset = self._footer["data_offset"]
        if offset < FOOTER_SIZE or offset + HEADER_SIZE > file_size:
            raise Corrupted(f"the VHD dynamic header offset {offset:#x} lies outside the "
                            f"file ({file_size} bytes)", path)
        raw = self.storage.read_exact(offset, HEADER_SIZE, "the VHD dynamic header")
        h = HEADER.unpack(raw)
        if h["cookie"] != HEADER_COOKIE:
            raise Corrupted(f"no 'cxsparse' dynamic header at offset {offset:#x}", path)
        if checksum(raw, HEADER_CHECKSUM_AT) != h["checksum"]:
            self._problem("the VHD dynamic header has a bad checksum",
                          "`vdimg repair` can recompute it")
        self._header = h
        bs = h["block_size"]
        if bs < SECTOR or bs & (bs - 1):
            raise Corrupted(f"the VHD block size {bs} is not a power of two of at least 512",
                            path)
        if bs > MAX_BLOCK_SIZE:
            raise NotSupported(f"VHD blocks of {bs} bytes are not supported (at most "
                               f"{MAX_BLOCK_SIZE >> 20} MiB)", path)
        entries, table = h["max_table_entries"], h["table_offset"]
        if entries * bs < self._size:
            raise Corrupted(f"the block allocation table has {entries} entries of {bs} "
                            f"bytes, too few for a disk of {self._size} bytes", path)
        if entries > max(-(-self._size // bs), MAX_TABLE_SPAN // bs):
            raise Corrupted(f"the block allocation table claims an absurd {entries} "
                            f"entries", path)
        if table < FOOTER_SIZE or table + 4 * entries > file_size:
            raise Corrupted(f"the block allocation table ({entries} entries at offset "
                            f"{table:#x}) lies beyond the end of the file", path)
        self.blocks = BlockTable(self.storage, table, entries, bs, self._size,
                                 self._disk_type == DISK_DIFFERENCING)
        self._read_locators()
        reserved = [(0, FOOTER_SIZE), (offset, HEADER_SIZE), (table, 4 * entries)]
        damage = self.blocks.damage(reserved, self._footer_offset)
        locator_end = max((e["data_offset"] + e["data_length"] for e in self._locators
                           if e["code"] != loc.NONE), default=0)
        if not damage and locator_end > self._footer_offset:
            damage = "a parent locator's data overlaps the footer"
        if damage:
            self._problem(f"the VHD image is damaged ({damage})",
                          "it can be read but not written until repaired (`vdimg repair`)")
        self._next_free = align_up(self._footer_offset, SECTOR)

    def _read_locators(self) -> None:
        self._locators = unpack_locators(self._header["locators"])
        self._locator_data = []
        file_size = self.storage.size()
        for i, entry in enumerate(self._locators):
            data = b""
            start, length = entry["data_offset"], entry["data_length"]
            if entry["code"] != loc.NONE:
                if length > loc.MAX_DATA or start + length > file_size:
                    log.warning("%s: parent locator %d (%s) points outside the file; "
                                "ignoring it", self.path, i, loc.code_name(entry["code"]))
                else:
                    data = self.storage.read_at(start, length)
            self._locator_data.append(data)

    def set_open_flags(self, flags: OpenFlags) -> None:
        if not flags & OpenFlags.READONLY and self._damage:
            raise Corrupted(f"{self._damage}; it cannot be opened for writing until "
                            f"repaired (`vdimg repair`)", self.path)
        super().set_open_flags(flags)

    # -- content ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        if self.blocks is not None:
            return self.blocks.block_status(offset, length)
        end = min(offset + length, self._size)
        for start, stop in self.storage.data_ranges(offset, end - offset):
            if start > offset:
                return Status.ALLOCATED_ZERO, start - offset
            return Status.DATA, stop - offset
        return Status.ALLOCATED_ZERO, end - offset

    def read_into(self, offset: int, buf: memoryview) -> None:
        if self.blocks is not None:
            self.blocks.read_into(offset, buf)
            return
        got = self.storage.readinto_at(offset, buf)
        if got < len(buf):
            fill_zero(buf, got, len(buf))

    def write(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        if self.blocks is not None:
            self.blocks.write(offset, data)
        else:
            self.storage.write_at(offset, data)

    @property
    def allocation_unit(self) -> int:
        return self.blocks.block_size if self.blocks is not None else SECTOR

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Store whole blocks: fill clear sectors of allocated ones, append the others.

        A base image skips all-zero blocks (they read as zeros unallocated) unless
        HONOR_ZEROES; a differencing image writes them, because VHD has no zero
        marker and only stored zeros hide the parent's data.
        """
        self.check_writable()
        if self.blocks is None:
            self.storage.write_at(offset, data)
            return
        table, bs = self.blocks, self.blocks.block_size
        skip_zero = (self._disk_type != DISK_DIFFERENCING
                     and not self.open_flags & OpenFlags.HONOR_ZEROES)
        first = offset // bs
        pending: list[int] = []  # consecutive new blocks, appended in one write
        for i in range(len(data) // bs):
            block, chunk = first + i, data[i * bs:(i + 1) * bs]
            if table.entries[block] != BAT_FREE:
                self._append_blocks(pending, data, first)
                table.fill_free_sectors(block, chunk)
            elif skip_zero and is_zero(chunk):
                self._append_blocks(pending, data, first)
            else:
                pending.append(block)
        self._append_blocks(pending, data, first)

    def _append_blocks(self, pending: list[int], data: memoryview, first: int) -> None:
        """Append the blocks in ``pending`` (consecutive) and link them into the BAT.

        Crash order: bitmaps, data and the moved footer go out in one write; the BAT
        entries follow.  Until they are written the new blocks are merely unused space
        before a valid footer.
        """
        if not pending:
            return
        table, bs = self.blocks, self.blocks.block_size
        parts: list[bytes | memoryview] = []
        for block in pending:
            i = block - first
            parts += [table.full_bitmap(), data[i * bs:(i + 1) * bs]]
        at = self._append(parts)
        table.link(pending[0], len(pending), at)
        pending.clear()

    def _append(self, parts: list[bytes | memoryview]) -> int:
        """Write ``parts`` where the footer is, and the footer after them; their offset."""
        at = self._next_free
        length = sum(len(p) for p in parts)
        if at + length > MAX_BLOCK_OFFSET:
            raise NotSupported("the VHD file would grow beyond 2 TiB, the most its block "
                               "allocation table can address", self.path)
        old_footer = self._footer_offset
        try:
            self.storage.write_at(at, b"".join([*parts, self._footer_bytes()]))
        except BaseException:
            self._restore_footer(old_footer)
            raise
        self._next_free = self._footer_offset = at + length
        return at

    def _restore_footer(self, offset: int) -> None:
        """After a failed append: cut the file back and put the footer where it was."""
        try:
            self.storage.set_size(offset + FOOTER_SIZE)
            self.storage.write_at(offset, self._footer_bytes())
        except Exception as exc:  # the original error matters more
            log.error("%s: could not restore the VHD footer: %s", self.path, exc)

    # -- check and repair ----------------------------------------------------------------

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list[Finding]:
        """``VDRepair`` for VHD (see :mod:`.check`)."""
        from .check import check
        return check(io, path, repair, progress)

    # -- releasing blocks, compaction, resizing -----------------------------------------

    def _dynamic(self, what: str) -> BlockTable:
        """The block table, after refusing what a fixed image or a saved state forbids."""
        if self.blocks is None:
            raise NotSupported(f"a fixed VHD image cannot be {what} (it has no blocks to "
                               f"release); convert it to a dynamic one first", self.path)
        self._refuse_saved_state(what)
        return self.blocks

    def _refuse_saved_state(self, what: str) -> None:
        # The specification forbids compaction and expansion of such a disk.
        if self._footer["saved_state"]:
            raise InvalidState(f"the VHD image cannot be {what}: its footer says a virtual "
                               f"machine was saved while using it (saved state)", self.path)

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        """Free the whole blocks in the range (VHD has no zero marker: ``zero`` is
        refused, and a compaction keeps all-zero blocks of differencing images)."""
        self.check_writable()
        table = self._dynamic("discarded or compacted")
        if zero:
            raise self._unsupported("zero blocks (a freed block of a differencing image "
                                    "would show its parent's data)")
        bs = table.block_size
        end = min(offset + length, self._size)
        first = -(-offset // bs)
        last = len(table.entries) if end == self._size else end // bs
        if first < last:
            table.release(first, last - first)

    def _locator_ranges(self) -> dict[int, tuple[int, int]]:
        """Header slot -> the range of each locator whose data lies in the file."""
        ranges = {}
        for slot, entry in enumerate(self._locators):
            start, stop = space.locator_range(entry)
            if entry["code"] != loc.NONE and entry["data_length"] and \
                    FOOTER_SIZE <= start and stop <= self._footer_offset:
                ranges[slot] = (start, stop)
        return ranges

    def _metadata_ranges(self) -> list[tuple[int, int]]:
        return space.metadata_ranges(self._footer["data_offset"], self._header["table_offset"],
                                     len(self.blocks.entries))

    def _copy(self, source: int, target: int, length: int) -> None:
        self.storage.copy_to(source, length, self.storage, target, "data being moved")

    def pack(self, progress: Progress | None = None) -> None:
        """Move the last blocks (and locator data) into the holes, then cut the file.

        Each batch is copied first and repointed in one transaction afterwards, so an
        interruption leaves every block readable where it was or where it went; the
        footer moves to the new end last, with the truncation, in one transaction.
        """
        self.check_writable()
        table = self._dynamic("compacted")
        index, starts = space.block_starts(table.entries)
        moves, end = space.plan_compaction(self._metadata_ranges(), self._locator_ranges(),
                                           index, starts, table.span)
        batch = max(1, (64 << 20) // table.span)
        for done in range(0, len(moves), batch):
            report(progress, done, len(moves), "moving blocks")
            part = moves[done:done + batch]
            for move in part:
                self._copy(move.source, move.target, move.length)
            self.storage.flush()
            with self.storage.transaction():
                for move in part:
                    if move.block >= 0:
                        table.link(move.block, 1, move.target)
                    else:
                        self._locators[move.slot].update(data_offset=move.target,
                                                         data_space=move.length)
                if any(move.slot >= 0 for move in part):
                    self._write_header()
        end = align_up(end, SECTOR)
        if (end, end + FOOTER_SIZE) != (self._footer_offset, self.storage.size()):
            with self.storage.transaction():
                self.storage.set_size(end + FOOTER_SIZE)
                self.storage.write_at(end, self._footer_bytes())
            self._footer_offset = self._next_free = end
        report(progress, len(moves), len(moves), "moving blocks")

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Grow keeping every byte, or shrink when nothing stored lies beyond the end.

        The footer (and its copy) gets the new current size and geometry, keeping
        every reader's size rule in agreement (see :mod:`.geometry`).
        """
        self.check_writable()
        self._refuse_saved_state("resized")
        if size <= 0 or size % SECTOR or size > MAX_SIZE:
            raise InvalidSize(f"a VHD image holds whole sectors up to 2040 GiB (asked for "
                              f"{size} bytes)", self.path)
        if size == self._size:
            return
        if self.blocks is None:
            self._resize_fixed(size, progress)
        elif size < self._size:
            self._shrink_dynamic(size)
        else:
            self._grow_dynamic(size, progress)
        self._size = size

    def _resized_footer(self, size: int) -> dict:
        footer = dict(self._footer)
        geometry, keep = resized_sizing(footer["creator_app"], size)
        footer.update(current_size=size, cylinders=geometry.cylinders, heads=geometry.heads,
                      sectors=geometry.sectors)
        if not keep:
            footer.update(creator_app=CREATOR_APP, creator_version=CREATOR_VERSION)
        return footer

    def _first_nonzero(self, start: int, end: int, progress: Progress | None) -> int | None:
        """The first offset in ``[start, end)`` where this image itself stores a
        non-zero byte (ranges it does not store are skipped), or None."""
        step = 16 << 20
        buf = bytearray(min(step, max(end - start, 0)))
        pos = start
        while pos < end:
            report(progress, pos - start, end - start, "looking for data beyond the end")
            status, run = self.block_status(pos, min(step, end - pos))
            if status is Status.DATA:
                view = memoryview(buf)[:run]
                self.read_into(pos, view)
                hits = np.flatnonzero(np.frombuffer(view, dtype=np.uint8))
                if hits.size:
                    return pos + int(hits[0])
            pos += run
        return None

    def _refuse_shrink(self, offset: int) -> None:
        raise ShrinkNotSupported(f"data is stored beyond the new end (at offset {offset}); "
                                 f"shrinking would lose it", self.path)

    def _resize_fixed(self, size: int, progress: Progress | None) -> None:
        """Move the footer: the data area becomes exactly ``size`` bytes.

        What becomes part of the disk (the old footer, bytes a geometry-sized disk did
        not show) is zeroed in the same transaction that moves the footer, so the
        file always ends with a valid footer.  Space is reserved afterwards; when
        that fails (or is cancelled) the footer moves back.
        """
        old = self._size
        if size < old:
            nonzero = self._first_nonzero(size, old, progress)
            if nonzero is not None:
                self._refuse_shrink(nonzero)
        footer, offset = self._footer, self._footer_offset
        self._move_fixed_footer(self._resized_footer(size), size, zero_from=old)
        try:
            step = 64 << 20
            for pos in range(old, size, step):
                report(progress, pos - old, size - old, "allocating")
                self.storage.allocate(pos, min(step, size - pos))
        except BaseException:
            self._move_fixed_footer(footer, offset, zero_from=offset)
            raise

    def _move_fixed_footer(self, footer: dict, offset: int, zero_from: int) -> None:
        """Put ``footer`` at ``offset`` and end the file there, zeroing what the file
        held from ``zero_from`` up to ``offset`` (one transaction)."""
        stale = min(self.storage.size(), offset)
        with self.storage.transaction():
            for pos in range(zero_from, stale, 1 << 20):
                self.storage.write_at(pos, zeros(min(1 << 20, stale - pos)))
            self.storage.set_size(offset + FOOTER_SIZE)
            self.storage.write_at(offset, pack_footer(footer))
        self._footer, self._footer_offset = footer, offset

    def _shrink_dynamic(self, size: int) -> None:
        table = self.blocks
        bs = table.block_size
        keep = -(-size // bs)
        beyond = np.flatnonzero(table.entries[keep:] != BAT_FREE)
        if beyond.size:
            self._refuse_shrink((keep + int(beyond[0])) * bs)
        nonzero = self._first_nonzero(size, min(keep * bs, self._size), None)
        if nonzero is not None:
            self._refuse_shrink(nonzero)
        footer = self._resized_footer(size)
        self._header["max_table_entries"] = keep
        with self.storage.transaction():
            self._write_header()
            self._footer = footer
            self._write_footer()
        table.set_size(size, keep)

    def _grow_dynamic(self, size: int, progress: Progress | None) -> None:
        table = self.blocks
        count = max(-(-size // table.block_size), len(table.entries))
        if 4 * count > MAX_TABLE_BYTES:
            raise NotSupported(f"a block allocation table of {count} entries is too large; "
                               f"the image has {table.block_size}-byte blocks", self.path)
        if count > len(table.entries):
            self._extend_table(count, progress)
        footer = self._resized_footer(size)
        self._header["max_table_entries"] = count
        with self.storage.transaction():
            self._write_header()
            self._footer = footer
            self._write_footer()
        table.set_size(size, count)

    def _extend_table(self, count: int, progress: Progress | None) -> None:
        """Make room after the BAT for ``count`` entries and fill them in as free.

        Blocks and locator data in the way are copied to the end of the file and
        repointed in one transaction; only then is the space they left overwritten.
        The header still gives the old entry count until the caller's transaction.
        """
        table, header = self.blocks, self._header
        start = header["table_offset"] + 4 * len(table.entries)
        stop = header["table_offset"] + align_up(4 * count, SECTOR)
        data_offset = self._footer["data_offset"]
        if data_offset < stop and data_offset + HEADER_SIZE > start:
            raise self._unsupported("a larger block allocation table here: the dynamic "
                                    "header follows it (convert the image instead)")
        if stop > MAX_BLOCK_OFFSET:
            raise NotSupported("the block allocation table would lie beyond 2 TiB", self.path)
        if stop > self._footer_offset:  # the table grows past the data: footer first
            self.storage.write_at(stop, self._footer_bytes())
            self._footer_offset = self._next_free = stop
        index, starts = space.block_starts(table.entries)
        items = [((int(s), int(s) + table.span), int(b), -1) for b, s in zip(index, starts)]
        items += [(r, -1, slot) for slot, r in self._locator_ranges().items()]
        movers = space.obstacles(items, start, stop)
        if movers:
            report(progress, 0, len(movers), "making room for the block allocation table")
            at = self._append([self.storage.read_exact(a, b - a, "data being moved")
                               for (a, b), _, _ in movers])
            self.storage.flush()
            with self.storage.transaction():
                for (a, b), block, slot in movers:
                    if block >= 0:
                        table.link(block, 1, at)
                    else:
                        self._locators[slot].update(data_offset=at, data_space=b - a)
                    at += b - a
                self._write_header()
        for pos in range(start, stop, 1 << 20):
            self.storage.write_at(pos, b"\xff" * min(1 << 20, stop - pos))
        self.storage.flush()

    # -- metadata on disk --------------------------------------------------------------

    def _footer_bytes(self) -> bytes:
        return pack_footer(self._footer)

    def _write_footer(self) -> None:
        """Write the footer and its copy together (qemu reads the copy, others the end)."""
        self.check_writable()
        raw = self._footer_bytes()
        with self.storage.transaction():
            if self.blocks is not None:
                self.storage.write_at(0, raw)
            self.storage.write_at(self._footer_offset, raw)

    def _write_header(self) -> None:
        self.check_writable()
        self._header["locators"] = pack_locators(self._locators)
        self.storage.write_at(self._footer["data_offset"], pack_header(self._header))

    def _need_header(self, what: str) -> dict:
        if self._header is None:
            raise self._unsupported(f"{what} (a fixed VHD has no dynamic header)")
        return self._header

    # -- metadata ----------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._footer["format_version"]

    @property
    def image_flags(self) -> ImageFlags:
        if self._disk_type == DISK_FIXED:
            return ImageFlags.FIXED
        if self._disk_type == DISK_DIFFERENCING:
            return ImageFlags.DIFF
        return ImageFlags.NONE

    @property
    def uuid(self) -> uuidlib.UUID:
        return uuid_from_raw(self._footer["uuid"])

    @uuid.setter
    def uuid(self, value: uuidlib.UUID) -> None:
        self.check_writable()
        self._footer["uuid"] = uuid_to_raw(value)
        self._write_footer()

    # VirtualBox's VHD backend has no modification UUIDs: the base class's
    # NotSupported answers stand, and the container skips them.

    @property
    def parent_uuid(self) -> uuidlib.UUID:
        if self._disk_type != DISK_DIFFERENCING:
            return NIL_UUID
        return uuid_from_raw(self._header["parent_uuid"])

    @parent_uuid.setter
    def parent_uuid(self, value: uuidlib.UUID) -> None:
        self.check_writable()
        if self._disk_type != DISK_DIFFERENCING:
            if value == NIL_UUID:
                return
            raise self._unsupported("a parent UUID unless it is a differencing image")
        self._header["parent_uuid"] = uuid_to_raw(value)
        self._write_header()

    @property
    def parent_timestamp(self) -> float | None:
        """When the parent was last modified as this diff records it (Unix seconds)."""
        if self._disk_type != DISK_DIFFERENCING:
            return None
        return from_vhd_time(self._header["parent_timestamp"])

    @parent_timestamp.setter
    def parent_timestamp(self, value: float | None) -> None:
        self.check_writable()
        self._need_header("a parent time stamp")["parent_timestamp"] = to_vhd_time(value)
        self._write_header()

    @property
    def parent_unicode_name(self) -> str:
        if self._header is None:
            return ""
        raw = self._header["parent_name"]
        return raw.decode("utf-16-be", errors="replace").split("\0", 1)[0]

    def parent_locators(self) -> list[tuple[str, str | None]]:
        """``(kind, path)`` of every parent locator in use, in header order."""
        return [(loc.code_name(e["code"]), loc.decode(e["code"], data))
                for e, data in zip(self._locators, self._locator_data) if e["code"] != loc.NONE]

    @property
    def parent_filename(self) -> str | None:
        """The best stored parent path: the first that exists beside the child, in the
        order relative (unless it leaves the child's folder), absolute, the others,
        and the bare parent name; failing all, the first stored."""
        if self._disk_type != DISK_DIFFERENCING:
            return None
        paths = {e["code"]: loc.decode(e["code"], data)
                 for e, data in zip(self._locators, self._locator_data)}
        order = [paths.get(code) for code in loc.KNOWN]
        relative = order[0]
        if relative and loc.is_climbing(relative):
            order.insert(1, order.pop(0))  # absolute first, as relative_parent_path prefers
        order.append(self.parent_unicode_name)
        stored = [p for p in order if p]
        folder = os.path.dirname(self.path)
        for candidate in stored:
            normalised = candidate.replace("\\", "/")
            if self.io.exists(os.path.normpath(os.path.join(folder, normalised))):
                return candidate
        return stored[0] if stored else None

    @parent_filename.setter
    def parent_filename(self, path: str) -> None:
        """Point every locator (and the parent name) at ``path`` (``VDSetParentFilename``).

        Each locator keeps its kind; a path that no longer fits its reserved space
        moves to new space at the end of the file.  Relative and absolute Windows
        locators are added when missing.
        """
        self.check_writable()
        header = self._need_header("a parent file name")
        header["parent_name"] = parent_name(path)
        codes = [e["code"] for e in self._locators]
        for code in (loc.W2KU, loc.W2RU):
            if code not in codes and loc.NONE in codes:
                slot = codes.index(loc.NONE)
                codes[slot] = code
                self._locators[slot] = dict(empty_locator(), code=code)
        for i, entry in enumerate(self._locators):
            if entry["code"] not in loc.KNOWN:
                continue
            data = loc.encode(entry["code"], path, self.path)
            room = loc.capacity(entry["data_space"], entry["data_length"])
            if len(data) <= room and self._area_is_free(entry["data_offset"], room):
                self.storage.write_at(entry["data_offset"], data.ljust(room, b"\0"))
            else:
                room = locator_area(data)
                entry["data_offset"] = self._append([data.ljust(room, b"\0")])
                entry["data_space"] = room
            entry["data_length"] = len(data)
            self._locator_data[i] = data
        self._write_header()

    def _area_is_free(self, offset: int, length: int) -> bool:
        """True when ``[offset, offset+length)`` overlaps no header, BAT or block (a
        foreign locator pointing into data must not be overwritten)."""
        end = offset + length
        table = self._header["table_offset"]
        used = [(0, FOOTER_SIZE), (self._footer["data_offset"], HEADER_SIZE),
                (table, align_up(4 * self._header["max_table_entries"], SECTOR))]
        if offset < FOOTER_SIZE or end > self._footer_offset or any(
                start < end and start + size > offset for start, size in used):
            return False
        starts = self.blocks.allocated()
        return not bool(((starts < end) & (starts + self.blocks.span > offset)).any())

    def check_parent(self, link: ParentLink | None) -> None:
        if link is not None and self.blocks is None:
            raise self._unsupported("a parent (a fixed VHD cannot be a differencing image)")

    def set_parent(self, link: ParentLink | None) -> None:
        """Re-link after a merge or rebase: a new parent (UUID, time stamp, locators),
        or none.

        Without a parent the image becomes a dynamic base.  Sectors its bitmaps
        still mark absent (the merge found only zeros for them) are zero-filled
        first, because a base reads allocated blocks whole; a base gaining a parent
        first marks every sector of its blocks present, for the same reason.  The
        header and footer changes then go in one transaction.
        """
        self.check_writable()
        self.check_parent(link)
        if link is None and self._disk_type != DISK_DIFFERENCING:
            return
        header = self._need_header("a parent")
        if link is None:
            self.blocks.fill_all_clear()
            with self.storage.transaction():
                self._set_disk_type(DISK_DYNAMIC)
                header.update(parent_uuid=bytes(16), parent_timestamp=0,
                              parent_name=parent_name(""))
                self._locators = [empty_locator() for _ in self._locators]
                self._locator_data = [b""] * len(self._locators)
                self._write_header()
            return
        if self._disk_type != DISK_DIFFERENCING:
            self.blocks.mark_all_present()
        with self.storage.transaction():
            header.update(parent_uuid=uuid_to_raw(link.uuid or NIL_UUID),
                          parent_timestamp=to_vhd_time(link.timestamp))
            self.parent_filename = link.path  # writes the header
            self._set_disk_type(DISK_DIFFERENCING)

    def _set_disk_type(self, disk_type: int) -> None:
        if disk_type != self._disk_type:
            self._footer["disk_type"] = self._disk_type = disk_type
            self.blocks.differencing = disk_type == DISK_DIFFERENCING
            self._write_footer()

    @property
    def pchs(self) -> Geometry:
        if not self._geometry.is_set:
            return super().pchs
        return self._geometry

    @pchs.setter
    def pchs(self, value: Geometry) -> None:
        self.check_writable()
        if sized_by_chs(self._footer["creator_app"], self._geometry):
            raise self._unsupported("a new geometry for this image: qemu and Virtual PC "
                                    "take its size from the geometry")
        if value.cylinders > 0xFFFF or value.heads > 0xFF or value.sectors > 0xFF:
            raise InvalidParameter(f"geometry {value} does not fit a VHD footer "
                                   f"(at most 65535/255/255)", self.path)
        self._footer.update(cylinders=value.cylinders, heads=value.heads,
                            sectors=value.sectors)
        self._write_footer()

    def describe(self) -> list[tuple[str, str]]:
        f = self._footer
        where = f"{self._footer_source}, offset {self._footer_offset:#x}"
        if self.blocks is not None:
            where += f", copy at offset 0 {'identical' if self._copy_matches else 'differs'}"
        rule = "geometry" if sized_by_chs(f["creator_app"], self._geometry) else "current size"
        rows = [
            ("footer", where),
            ("features", f"{f['features']:#x}"),
            ("format version", f"{f['format_version'] >> 16}.{f['format_version'] & 0xFFFF}"),
            ("data offset", "none" if f["data_offset"] == NO_DATA_OFFSET
             else f"{f['data_offset']:#x}"),
            ("time stamp", format_time(f["timestamp"])),
            ("creator application", four_cc(f["creator_app"])),
            ("creator version", f"{f['creator_version'] >> 16}.{f['creator_version'] & 0xFFFF}"),
            ("creator host OS", four_cc(f["creator_os"])),
            ("original size", str(f["original_size"])),
            ("current size", str(f["current_size"])),
            ("geometry", f"{self._geometry} ({chs_bytes(self._geometry)} bytes)"),
            ("virtual size", f"{self._size} (from the {rule})"),
            ("disk type", f"{self._disk_type} ({DISK_TYPE_NAMES.get(self._disk_type, '?')})"),
            ("checksum", f"{f['checksum']:#010x}"),
            ("unique id", str(self.uuid)),
            ("saved state", str(f["saved_state"])),
        ]
        if self._damage:
            rows.append(("damage", self._damage))
        h = self._header
        if h is None:
            return rows
        table = self.blocks
        rows += [
            ("dynamic header offset", f"{f['data_offset']:#x}"),
            ("header version", f"{h['header_version'] >> 16}.{h['header_version'] & 0xFFFF}"),
            ("header checksum", f"{h['checksum']:#010x}"),
            ("block allocation table offset", f"{h['table_offset']:#x}"),
            ("max table entries", str(h["max_table_entries"])),
            ("block size", str(table.block_size)),
            ("sector bitmap size", str(table.bitmap_size)),
            ("blocks allocated", str(len(table.allocated()))),
            ("parent unique id", str(uuid_from_raw(h["parent_uuid"]))),
            ("parent time stamp", format_time(h["parent_timestamp"])),
            ("parent unicode name", repr(self.parent_unicode_name)),
        ]
        for i, (entry, data) in enumerate(zip(self._locators, self._locator_data)):
            if entry["code"] != loc.NONE:
                rows.append((f"parent locator {i}",
                             (f"{loc.code_name(entry['code'])} at {entry['data_offset']:#x}, "
                              f"{entry['data_length']} of {entry['data_space']} (space): "
                              f"{loc.decode(entry['code'], data)!r}")))
        return rows

    # -- creation --------------------------------------------------------------------

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> VhdImage:
        validate_config(cls.info, request.config, request.path)
        block_size = config_int(request.config, "BlockSize", DEFAULT_BLOCK_SIZE,
                                request.path)
        storage = io.open(request.path, create=True)
        try:
            write_image(storage, request, block_size)
        finally:
            storage.close()
        return cls.open(io, request.path, request.open_flags & ~OpenFlags.READONLY)

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        try:
            self.flush()  # every structure is already written; make it durable
        finally:
            super().close()
