"""QCOW version 1: qemu's original copy-on-write format.

Big-endian.  A 48-byte header (magic ``QFI\\xfb``, version 1, backing file name
offset and length, mtime, size, cluster_bits, l2_bits, crypt method, L1 offset),
the backing file name, then the L1 table at the next 8-byte boundary.  L1 entries
are file offsets of L2 tables of ``1 << l2_bits`` u64 entries; an L2 entry is the
file offset of a data cluster, 0 for "not allocated" (read the backing file, or
zeros), or a compressed-cluster descriptor (bit 63 set, the compressed length in
the bits above ``63 - cluster_bits``, the byte offset below).  There are no
refcounts, no zero clusters and no snapshots.

Images are read and written; compressed clusters are read, and a write into one
moves the whole cluster, uncompressed, to a new place.  Encrypted images are
refused.  New clusters are appended at the end of the file, data first, then a new
L2 table, then the L2 entry, then the L1 entry.

Clusters are released by clearing their entries (there is no zero marker); a pack
moves clusters, compressed clusters, tables and the L1 table from the end of the
file into the holes and cuts the file short.  The L1 table's size follows the disk
size: it grows in place while nothing follows it, else it moves to the end of the
file (written first, then the header points at it).  qemu-img has no check for
this format; :meth:`QcowImage.check` checks what it can (entries outside the file
or into metadata, clusters used twice, leaks, a file cut short).

New images have 4 KiB clusters and one-cluster L2 tables (512 entries), as qemu
and VirtualBox create base images (option ``cluster_size``: 512 bytes to 64 KiB;
L2 tables are one cluster but at least 4 KiB).  qemu itself makes differencing
images with 512-byte clusters; this backend keeps 4 KiB unless told otherwise.
The backing file format is not recorded: readers probe it.
"""

from __future__ import annotations

import os
import zlib
from typing import Iterator

import numpy as np

from ..blockmap import DATA, FREE, BlockMap, is_zero, unit_runs
from ..errors import (Corrupted, InvalidHeader, InvalidParameter, InvalidSize, InvalidType,
                      NotSupported, ShrinkNotSupported, VDError)
from ..findings import ERROR, WARNING, Finding
from ..io import Storage, StorageProvider
from ..layout import Layout
from ..progress import Progress
from ..sizes import align_up
from ..types import (SECTOR, Capability, ConfigKey, ConfigKeyFlags, ConfigValueType, DiskType,
                     ImageFlags, OpenFlags, Status)
from ._twolevel import (KIND_L1, CompressedSpec, Region, TableLayout, TwoLevelTable,
                        leak_findings, run_check, survey_tables, table_fixes)
from .base import (BackendInfo, CreateRequest, ParentLink, SingleFileImage, config_int,
                   relative_parent_path, validate_config)

MAGIC = 0x514649FB  # "QFI\xfb"
VERSION = 1
COMPRESSED = 1 << 63

MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 16
MIN_L2_BITS, MAX_L2_BITS = 6, 13  # L2 tables of 512 bytes .. 64 KiB (qemu's limits)
DEFAULT_CLUSTER = 4096
MIN_TABLE_BYTES = 4096
MAX_BACKING_NAME = 1023
#: Largest L1 table accepted (bounds memory for hostile headers).
MAX_L1_BYTES = 1 << 30

HEADER = Layout("QCOW header", ">", [
    ("magic", "I"), ("version", "I"), ("backing_file_offset", "Q"),
    ("backing_file_size", "I"), ("mtime", "I"), ("size", "Q"),
    ("cluster_bits", "B"), ("l2_bits", "B"), ("padding", "H"),
    ("crypt_method", "I"), ("l1_table_offset", "Q")])


def _decode(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Compressed clusters are DATA too (they hold data); their offsets are marked -1
    # so that BlockMap never reads them raw and the plain-offset checks skip them.
    states = np.where(raw == 0, FREE, DATA).astype(np.uint8)
    offsets = np.where((raw & np.uint64(COMPRESSED)) != 0, -1, raw.astype(np.int64))
    return states, offsets


class QcowImage(SingleFileImage):
    """An opened QCOW (version 1) image."""

    info = BackendInfo(
        name="QCOW",
        description="QEMU copy-on-write, version 1",
        capabilities=(Capability.CREATE_DYNAMIC | Capability.DIFF | Capability.FILE
                      | Capability.ASYNC | Capability.VFS | Capability.DISCARD),
        extensions=(("qcow", DiskType.HDD),),
        variants=("standard",),
        config_keys=(ConfigKey("cluster_size", str(DEFAULT_CLUSTER), ConfigValueType.INTEGER,
                               ConfigKeyFlags.CREATE_ONLY),),
        image_flags_mask=ImageFlags.DIFF,
        stores=frozenset({"parent_path"}),
    )

    # -- probing and opening ---------------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            cls._parse_header(storage.read_at(0, HEADER.size), storage.size(), path)
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("QCOW images are hard disks", path)
        return DiskType.HDD

    @staticmethod
    def _parse_header(raw: bytes, file_size: int, path: str) -> dict:
        if len(raw) < 8 or int.from_bytes(raw[:4], "big") != MAGIC:
            raise InvalidHeader("not a QCOW image (no QFI magic)", path)
        if int.from_bytes(raw[4:8], "big") != VERSION:
            # Versions 2 and 3 belong to the QCOW2 backend.
            raise InvalidHeader("not a QCOW version 1 image", path)
        h = HEADER.unpack(raw, 0, path)
        cb, l2b = h["cluster_bits"], h["l2_bits"]
        if not MIN_CLUSTER_BITS <= cb <= MAX_CLUSTER_BITS:
            raise Corrupted(f"the QCOW cluster size 2^{cb} is not between 512 bytes and "
                            f"64 KiB", path)
        if not MIN_L2_BITS <= l2b <= MAX_L2_BITS:
            raise Corrupted(f"the QCOW L2 table size of 2^{l2b} entries is not between 64 "
                            f"and 8192 entries", path)
        if h["crypt_method"]:
            raise NotSupported(f"the image is encrypted (QCOW crypt method "
                               f"{h['crypt_method']}); encrypted QCOW images are not "
                               f"supported", path)
        if h["size"] < SECTOR:
            raise Corrupted(f"the QCOW disk size {h['size']} is smaller than a sector", path)
        l1_bytes = 8 * -(-h["size"] // (1 << (cb + l2b)))
        if l1_bytes > MAX_L1_BYTES:
            raise NotSupported(f"the QCOW L1 table would have {l1_bytes} bytes, more than "
                               f"this program keeps in memory", path)
        if h["l1_table_offset"] < HEADER.size or h["l1_table_offset"] + l1_bytes > file_size:
            raise Corrupted(f"the QCOW L1 table ({l1_bytes} bytes at "
                            f"{h['l1_table_offset']:#x}) overlaps the header or lies beyond "
                            f"the end of the file", path)
        if h["backing_file_offset"]:
            start, length = h["backing_file_offset"], h["backing_file_size"]
            if length == 0 or length > MAX_BACKING_NAME or start < HEADER.size \
                    or start + length > file_size:
                raise Corrupted(f"the QCOW backing file name ({length} bytes at {start:#x}) "
                                f"is empty, too long or outside the file", path)
        return h

    def _load(self) -> None:
        storage, path = self.storage, self.path
        h = self._h = self._parse_header(storage.read_at(0, HEADER.size), storage.size(), path)
        self._bits = h["cluster_bits"]
        self._cluster = 1 << self._bits
        self._backing: str | None = None
        if h["backing_file_offset"]:
            self._backing = os.fsdecode(storage.read_exact(
                h["backing_file_offset"], h["backing_file_size"], "QCOW backing file name"))
        self._map_tables()

    @staticmethod
    def _layout(h: dict) -> TableLayout:
        """Where the header ``h`` puts the tables, and what their entries may hold."""
        cb = h["cluster_bits"]
        cs, entries = 1 << cb, 1 << h["l2_bits"]
        regions = [Region(0, HEADER.size, "header")]
        if h["backing_file_offset"]:
            start = h["backing_file_offset"]
            regions.append(Region(start, start + h["backing_file_size"], "backing file name"))
        l1 = h["l1_table_offset"]
        count = -(-h["size"] // (entries * cs))
        # An L1 table right after the header leaves the bytes before it to the backing
        # name (set_parent may need them): clusters start after that room.
        room = min(l1, align_up(HEADER.size + MAX_BACKING_NAME, 8))
        return TableLayout(
            cluster_size=cs, l2_entries=entries, dtype=">u8", l1_offset=l1, l1_count=count,
            l1_capacity=count, l1_span=8 * count, regions=tuple(regions),
            table_align=SECTOR, data_align=SECTOR, decode=_decode,
            origin=align_up(max(room, *(r.end for r in regions)), cs), l1_align=SECTOR,
            # qemu pads the L1 table to whole sectors; clusters end where they end.
            min_end=l1 + align_up(8 * count, SECTOR), trunc=1, compressed=CompressedSpec(cb))

    def _map_tables(self) -> None:
        """Load the L1 table and set up the block map (after opening or relocating)."""
        # qemu counts whole sectors only.
        self._size = self._h["size"] // SECTOR * SECTOR
        self.tables = TwoLevelTable(self.storage, self._layout(self._h))
        self.map = BlockMap(self.storage, self._cluster, self._size, self.tables.lookup)

    def _write_header(self) -> None:
        self.check_writable()
        self.storage.write_at(0, HEADER.pack(self._h))

    # -- compressed clusters ---------------------------------------------------------

    def _spans(self, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
        """``(start, stop, entry)`` pieces of a range: entry 0 for plain stretches (handled
        by the block map), else the descriptor of the compressed cluster holding it."""
        cs, pos = self._cluster, offset
        while pos < end:
            first = pos >> self._bits
            count = ((end - 1) >> self._bits) - first + 1
            raw = self.tables.entries(first, count)
            compressed = np.flatnonzero(raw & np.uint64(COMPRESSED))
            if not compressed.size:
                yield pos, end, 0
                return
            k = int(compressed[0])
            cluster_start = (first + k) * cs
            if cluster_start > pos:
                yield pos, cluster_start, 0
                pos = cluster_start
            stop = min(end, cluster_start + cs)
            yield pos, stop, int(raw[k])
            pos = stop

    def _decompress(self, entry: int, guest: int) -> bytes:
        """The cluster a compressed descriptor stands for (raw deflate, qemu's layout)."""
        cs, shift = self._cluster, 63 - self._bits
        length = (entry >> shift) & (cs - 1)
        start = entry & ((1 << shift) - 1)
        where = f"the compressed cluster of guest offset {guest} ({length} bytes at {start:#x})"
        why = "is empty" if length == 0 else self.tables.unusable(start, length)
        if why:
            raise Corrupted(f"{where} {why}", self.path)
        stream = self.storage.read_exact(start, length, "compressed cluster")
        try:
            data = zlib.decompressobj(-15).decompress(stream, cs)
        except zlib.error as exc:
            raise Corrupted(f"{where} cannot be decompressed: {exc}", self.path) from None
        if len(data) != cs:
            raise Corrupted(f"{where} decompresses to {len(data)} bytes instead of {cs}",
                            self.path)
        return data

    # -- content ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        return self.map.block_status(offset, length)

    def read_into(self, offset: int, buf: memoryview) -> None:
        for start, stop, entry in self._spans(offset, offset + len(buf)):
            view = buf[start - offset:stop - offset]
            if entry:
                cluster_start = start - start % self._cluster
                data = self._decompress(entry, cluster_start)
                view[:] = data[start - cluster_start:stop - cluster_start]
            else:
                self.map.read_into(start, view)

    def write(self, offset: int, data: memoryview) -> None:
        """In-place write; a compressed cluster is rewritten uncompressed elsewhere."""
        self.check_writable()
        for start, stop, entry in self._spans(offset, offset + len(data)):
            piece = data[start - offset:stop - offset]
            if not entry:
                self.map.write(start, piece)
                continue
            cluster_start = start - start % self._cluster
            cluster = bytearray(self._decompress(entry, cluster_start))
            cluster[start - cluster_start:stop - cluster_start] = piece
            at = self.tables.append(memoryview(cluster), self._cluster)
            self.tables.set_entries(cluster_start >> self._bits,
                                    np.array([at], dtype=np.uint64))

    @property
    def allocation_unit(self) -> int:
        return self._cluster

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Append the clusters; all-zero runs extend the file without writing."""
        self.check_writable()
        cs = self._cluster
        first = offset // cs
        for start, count, zero in unit_runs(data, cs, True):
            piece = None if zero else data[start * cs:(start + count) * cs]
            at = self.tables.append(piece, count * cs)
            self.tables.set_entries(first + start,
                                    at + np.arange(count, dtype=np.uint64) * np.uint64(cs))

    # -- metadata --------------------------------------------------------------------

    @property
    def image_flags(self) -> ImageFlags:
        return ImageFlags.DIFF if self._backing is not None else ImageFlags.NONE

    @property
    def parent_filename(self) -> str | None:
        return self._backing

    def _backing_name(self, link: ParentLink | None) -> bytes:
        """The name to store for ``link``, or NotSupported when it cannot fit."""
        name = os.fsencode(relative_parent_path(self.path, link.path)) if link else b""
        if not name:
            return name
        # The name goes right after the header, up to the first table or cluster.
        ext = self.tables.survey().ext
        after = ext.start[ext.start >= HEADER.size]
        room = (int(after.min()) if after.size else self.tables.file_size) - HEADER.size
        if len(name) > min(room, MAX_BACKING_NAME):
            raise NotSupported(f"the new backing file name ({len(name)} bytes) does not fit "
                               f"in the {min(room, MAX_BACKING_NAME)} bytes this QCOW version "
                               f"1 image has for it", self.path)
        return name

    def check_parent(self, link: ParentLink | None) -> None:
        self._backing_name(link)

    def set_parent(self, link: ParentLink | None) -> None:
        """Record a new backing file (merge, rebase), or none.

        The name lives between the header and the first table or cluster (qemu
        cannot change it at all): a new name must fit in the room there.
        """
        self.check_writable()
        h = self._h
        name = self._backing_name(link)
        h["backing_file_offset"] = HEADER.size if name else 0
        h["backing_file_size"] = len(name)
        with self.transaction():  # name and header change together or not at all
            self.storage.write_at(0, HEADER.pack(h) + name)
        self._backing = os.fsdecode(name) if name else None
        self._map_tables()

    # -- releasing clusters, compaction, resizing --------------------------------------

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        self.check_writable()
        if zero:
            raise NotSupported("QCOW version 1 has no zero clusters", self.path)
        cs = self._cluster
        first, end = offset // cs, -(-min(offset + length, self._size) // cs)
        if end > first:
            self.tables.release(first, end - first)

    def pack(self, progress: Progress | None = None) -> None:
        """Move clusters and tables from the end into the holes, then cut the file."""
        self.check_writable()
        self.tables.pack(self._move_l1, progress)
        self._map_tables()

    def _move_l1(self, offset: int) -> None:
        self._h["l1_table_offset"] = offset
        self._write_header()

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Grow (the L1 table grows in place, or moves to the end of the file), or
        shrink when nothing is stored past the new end."""
        self.check_writable()
        entries = self.tables.l2_entries
        count = -(-size // (entries * self._cluster))
        if size <= 0 or size % SECTOR or 8 * count > MAX_L1_BYTES:
            raise InvalidSize(f"a QCOW image with {self._cluster}-byte clusters cannot hold "
                              f"{size} bytes", self.path)
        if size < self._size:
            self._shrink(size, count, progress)
        elif size > self._size:
            self._grow(size, count, progress)

    def _grow(self, size: int, count: int, progress: Progress | None) -> None:
        h, old = self._h, len(self.tables.l1)
        l1 = h["l1_table_offset"]
        relocate = False
        if count > old:
            survey = self.tables.survey()
            survey.require_clean(self.path)
            ext = survey.ext
            after = [int(s) for s in ext.start[(ext.kind != KIND_L1) & (ext.start >= l1)]]
            after += [r.start for r in self.tables.layout.regions if r.start >= l1]
            relocate = l1 + 8 * count > min(after, default=1 << 63)
            if relocate:
                # Written whole at the end first; the header switches to it at once.
                at = align_up(self.storage.size(), self._cluster)
                table = self.tables.l1.tobytes() + bytes(8 * (count - old))
                self.storage.write_at(at, table.ljust(align_up(len(table), SECTOR), b"\0"))
                l1 = at
            else:
                # The room after the table is unused: zero it for the new entries (and,
                # at the end of the file, pad the table to whole sectors as qemu does).
                end = l1 + (8 * count if after else align_up(8 * count, SECTOR))
                self.storage.write_at(l1 + 8 * old, bytes(end - l1 - 8 * old))
            self.storage.flush()
        with self.transaction():
            h["size"], h["l1_table_offset"] = size, l1
            self._write_header()
        self._map_tables()
        if relocate:
            self.pack(progress)  # the old table's place is free space now

    def _shrink(self, size: int, count: int, progress: Progress | None) -> None:
        cs = self._cluster
        keep, old = -(-size // cs), -(-self._size // cs)
        for first in range(keep, old, 1 << 20):
            stored = np.flatnonzero(self.tables.entries(first, min(1 << 20, old - first)))
            if stored.size:
                raise ShrinkNotSupported(f"data is stored beyond the new end (from offset "
                                         f"{(first + int(stored[0])) * cs}); shrinking "
                                         f"would lose it", self.path)
        tail = bytearray(min(keep * cs, self._size) - size)
        self.read_into(size, memoryview(tail))
        if not is_zero(tail):
            raise ShrinkNotSupported(f"the last cluster holds data after offset {size}; "
                                     f"shrinking would lose it", self.path)
        l1 = self.tables.l1
        dropped = bool(l1.entries[count:].any())
        with self.transaction():
            if count < len(l1):
                # Entries past the table's new end would come back if the disk grew.
                self.storage.write_at(l1.offset + 8 * count, bytes(8 * (len(l1) - count)))
            self._h["size"] = size
            self._write_header()
        self._map_tables()
        if dropped:
            self.pack(progress)  # the tables past the end are free space now

    # -- check and repair --------------------------------------------------------------

    @classmethod
    def _inspect(cls, storage: Storage, plan, progress: Progress | None = None) -> None:
        """Findings and fixes for the QCOW image in ``storage``."""
        try:
            # The file's length is checked with the tables, where a cut can be mended.
            h = cls._parse_header(storage.read_at(0, HEADER.size), 1 << 63, storage.path)
        except VDError as exc:
            plan.add(ERROR, f"{exc.message}; the header cannot be rebuilt", 0)
            return
        layout = cls._layout(h)
        survey = survey_tables(storage, layout, progress)
        # No zero marker: an untrustworthy entry of a differencing image gets a zero
        # cluster, so that the backing file's older data stays hidden.
        table_fixes(survey, plan, "cluster" if h["backing_file_offset"] else "free")
        leak_findings(plan, survey.ext, layout.origin, layout.cluster_size, survey.file_size,
                      layout.min_end, layout.trunc)
        extra = h["size"] % SECTOR
        if extra:
            h["size"] -= extra
            header = HEADER.pack(h)
            plan.add(WARNING, f"the disk size is not a multiple of 512 bytes (qemu ignores "
                              f"the last {extra} bytes)", HEADER.offset_of("size"),
                     f"round it down to {h['size']}")
            plan.during.append(lambda target: target.write_at(0, header))

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list[Finding]:
        """``VDRepair`` for QCOW: entries pointing outside the file or into metadata,
        clusters used twice, a file cut short and leaked clusters.  A repair clears
        unusable entries (a zero cluster instead in a differencing image), gives
        each sharer of a cluster its own copy, extends a cut file, then packs."""
        return run_check(cls, io, path, repair, progress)

    def describe(self) -> list[tuple[str, str]]:
        h = self._h
        return [
            ("version", str(h["version"])),
            ("disk size", str(h["size"])),
            ("cluster size", f"{self._cluster} (cluster_bits {h['cluster_bits']})"),
            ("L2 table entries", f"{1 << h['l2_bits']} (l2_bits {h['l2_bits']})"),
            ("L1 table offset", f"{h['l1_table_offset']:#x}"),
            ("L1 entries", str(len(self.tables.l1))),
            ("L2 tables", str(int(np.count_nonzero(self.tables.l1.entries)))),
            ("crypt method", str(h["crypt_method"])),
            ("mtime", str(h["mtime"])),
            ("backing file", repr(self._backing) if self._backing is not None else "none"),
        ]

    # -- creation --------------------------------------------------------------------

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> QcowImage:
        path, size = request.path, request.size
        validate_config(cls.info, request.config, path)
        if request.image_flags & ImageFlags.FIXED:
            raise InvalidType("QCOW images are always dynamically allocated", path)
        cs = config_int(request.config, "cluster_size", DEFAULT_CLUSTER, path)
        if cs & (cs - 1) or not 1 << MIN_CLUSTER_BITS <= cs <= 1 << MAX_CLUSTER_BITS:
            raise InvalidParameter(f"cluster_size {cs} must be a power of two between 512 "
                                   f"bytes and 64 KiB", path)
        cb = cs.bit_length() - 1
        l2_bits = max(cs, MIN_TABLE_BYTES).bit_length() - 1 - 3
        l1_count = -(-size // (1 << (cb + l2_bits)))
        if size % SECTOR or 8 * l1_count > MAX_L1_BYTES:
            raise InvalidSize(f"a QCOW image with {cs}-byte clusters cannot hold {size} "
                              f"bytes (choose a larger cluster_size)", path)
        name = b""
        if request.parent is not None:
            name = os.fsencode(relative_parent_path(path, request.parent.path))
            if len(name) > MAX_BACKING_NAME:
                raise InvalidParameter(f"the backing file name is longer than "
                                       f"{MAX_BACKING_NAME} bytes", path)
        # A differencing image keeps room for a longer backing name after its own, so
        # a merge or rebase can re-link it later (the L1 table never moves); qemu
        # reads the name and the table wherever the header says they are.
        room = max(len(name), min(256, MAX_BACKING_NAME)) if name else 0
        l1_offset = align_up(HEADER.size + room, 8)
        header = HEADER.pack(dict(
            magic=MAGIC, version=VERSION, backing_file_offset=HEADER.size if name else 0,
            backing_file_size=len(name), mtime=0, size=size, cluster_bits=cb,
            l2_bits=l2_bits, padding=0, crypt_method=0, l1_table_offset=l1_offset))
        storage = io.open(path, create=True)
        try:
            storage.write_at(0, header + name)
            # qemu rounds the (zeroed) L1 table up to whole sectors.
            storage.set_size(l1_offset + align_up(8 * l1_count, SECTOR))
            storage.flush()
        finally:
            storage.close()
        return cls.open(io, path, request.open_flags & ~OpenFlags.READONLY)
