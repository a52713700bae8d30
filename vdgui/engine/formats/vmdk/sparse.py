"""Hosted sparse extents ("KDMV") and ESX vmfsSparse extents ("COWD").

A sparse extent file starts with a 512-byte header (little-endian), may embed the
descriptor, and maps grains (64 KiB by default) through a grain directory (GD)
pointing at grain tables (GTs, 512 entries each).  A GT entry is the sector of the
grain in the file; 0 means "not allocated here" and, when the header's
zeroed-grain flag is set, 1 means "a grain of zeros" (hides the parent).  A second
"redundant" GD with its own GTs mirrors the first; both are updated on every
allocation, after the grain's data is written (a crash leaves a leaked grain at
worst, never a table entry pointing at garbage).

Compressed extents (streamOptimized images) store each grain as a record: the
grain's sector number (8 bytes), the size of the deflate data (4 bytes), the data
(a zlib stream), padded to a sector.  A record with size 0 is a marker (end of
stream, grain table, grain directory, footer).  When the header's GD offset is
all ones, the real header is the footer near the end of the file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, fields, replace

import numpy as np

from ...blockmap import (DATA, FREE, LOOKAHEAD, ZERO, BlockMap, FlatTable, TableCache,
                         fill_zero, unit_runs, zeros)
from ...errors import Corrupted, InvalidState, NotSupported, ReadOnly
from ...io import Storage
from ...layout import Layout
from ...progress import Progress, report
from ...sizes import align_down, align_up
from ...types import SECTOR, Status
from .extents import INVALID_STATE, Extent
from .packing import Movable, plan_pack, read_tables

MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"

FLAG_NEWLINE_TEST = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_ZERO_GRAINS = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17

COMPRESSION_NONE = 0
COMPRESSION_DEFLATE = 1

GD_AT_END = 0xFFFFFFFFFFFFFFFF
NEWLINE_CHARS = b"\n \r\n"

#: zlib level for new compressed grains: level 3 deflates typical disk data about
#: twice as fast as the default 6 for a few percent more output.
COMPRESSION_LEVEL = 3

#: Changed grain tables held before writing them (well below the cache's 256).
PENDING_TABLES = 64
#: Grain tables read at a time when walking them all (8 MiB of 512-entry tables).
TABLE_BATCH = 4096

#: Grain table entry of a grain of zeros (with FLAG_ZERO_GRAINS).
GTE_ZERO = 1

MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3

DEFAULT_GRAIN_SECTORS = 128
DEFAULT_GTES_PER_GT = 512
DEFAULT_DESCRIPTOR_SECTORS = 20
COWD_GTES_PER_GT = 4096

#: Largest grain accepted (32 MiB): bigger ones are hostile, not useful.
MAX_GRAIN_SECTORS = 1 << 16
MAX_GTES_PER_GT = 4096
#: Largest grain directory kept in memory (64 MiB of entries).
MAX_GD_ENTRIES = 1 << 24
#: Largest embedded descriptor area VirtualBox accepts (10 MiB).
MAX_DESCRIPTOR_SECTORS = 20480
#: Grain table entries are 32-bit sector numbers: a sparse file ends at 2 TiB.
MAX_FILE_SECTORS = 1 << 32

_INVALID = "VERR_VD_VMDK_INVALID_HEADER"

HEADER = Layout("VMDK sparse extent header", "<", [
    ("magic", "4s"), ("version", "I"), ("flags", "I"), ("capacity", "Q"),
    ("grain", "Q"), ("desc_offset", "Q"), ("desc_size", "Q"), ("gtes_per_gt", "I"),
    ("rgd_offset", "Q"), ("gd_offset", "Q"), ("overhead", "Q"), ("unclean", "B"),
    ("newline", "4s"), ("compression", "H"), ("pad", "433s")])
assert HEADER.size == SECTOR

COWD_HEADER = Layout("VMDK COWD extent header", "<", [
    ("magic", "4s"), ("version", "I"), ("flags", "I"), ("capacity", "I"), ("grain", "I"),
    ("gd_offset", "I"), ("gd_entries", "I"), ("free_sector", "I")])

MARKER = Layout("VMDK stream marker", "<", [("value", "Q"), ("size", "I"), ("type", "I")])
GRAIN_RECORD = struct.Struct("<QI")


@dataclass
class SparseHeader:
    """The fields of a hosted sparse extent header (sector units)."""

    version: int = 1
    flags: int = FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT
    capacity: int = 0
    grain: int = DEFAULT_GRAIN_SECTORS
    desc_offset: int = 0
    desc_size: int = 0
    gtes_per_gt: int = DEFAULT_GTES_PER_GT
    rgd_offset: int = 0
    gd_offset: int = 0
    overhead: int = 0
    unclean: int = 0
    compression: int = COMPRESSION_NONE

    @classmethod
    def unpack(cls, raw: bytes, path: str | None) -> SparseHeader:
        h = HEADER.unpack(raw, 0, path)
        if h["magic"] != MAGIC:
            raise Corrupted("not a VMDK sparse extent (no KDMV signature)", path,
                            status=_INVALID)
        if h["flags"] & FLAG_NEWLINE_TEST and h["newline"] != NEWLINE_CHARS:
            raise Corrupted("the VMDK header's line-ending test bytes are damaged (the file "
                            "was probably transferred in text mode)", path, status=_INVALID)
        return cls(**{f.name: h[f.name] for f in fields(cls)})

    def pack(self) -> bytes:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(magic=MAGIC, newline=NEWLINE_CHARS, pad=bytes(433))
        return HEADER.pack(values)

    @property
    def compressed(self) -> bool:
        return self.compression == COMPRESSION_DEFLATE

    @property
    def zero_grains(self) -> bool:
        return bool(self.flags & FLAG_ZERO_GRAINS)

    @property
    def markers(self) -> bool:
        return bool(self.flags & FLAG_MARKERS)


def read_footer(storage: Storage, path: str) -> SparseHeader:
    """The footer of a stream whose header says "GD at end".

    The file ends with a footer marker, the footer (a copy of the header with the
    real GD offset) and an end-of-stream marker, one sector each.
    """
    end = align_down(storage.size(), SECTOR)
    if end < 4 * SECTOR:
        raise Corrupted("the streamOptimized VMDK is too short to hold its footer", path,
                        status=_INVALID)
    raw = storage.read_exact(end - 3 * SECTOR, 3 * SECTOR, "VMDK footer")
    marker = MARKER.unpack(raw, 0, path)
    eos = MARKER.unpack(raw, 2 * SECTOR, path)
    if (marker["size"] != 0 or marker["type"] != MARKER_FOOTER or eos["value"] != 0
            or eos["size"] != 0 or eos["type"] != MARKER_EOS or raw[SECTOR:SECTOR + 4] != MAGIC):
        raise Corrupted("the streamOptimized VMDK has its grain directory at the end, but no "
                        "valid footer there (the file is incomplete or damaged)", path,
                        status=_INVALID)
    footer = SparseHeader.unpack(raw[SECTOR:2 * SECTOR], path)
    if footer.gd_offset == GD_AT_END:
        raise Corrupted("the VMDK footer does not give the grain directory's offset", path,
                        status=_INVALID)
    return footer


def marker_bytes(value: int, kind: int) -> bytes:
    """A metadata marker sector (size 0)."""
    return MARKER.pack(dict(value=value, size=0, type=kind)).ljust(SECTOR, b"\0")


def compress_grain(lba: int, data: bytes | memoryview) -> bytes:
    """A compressed grain record, padded to whole sectors."""
    payload = zlib.compress(data, COMPRESSION_LEVEL)
    record = GRAIN_RECORD.pack(lba, len(payload)) + payload
    return record + zeros(-len(record) % SECTOR)


def inflate(payload: bytes, limit: int, path: str, where: int) -> bytes:
    """Inflate a grain's data, refusing output larger than ``limit`` bytes."""
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):  # zlib stream, else raw deflate
        engine = zlib.decompressobj(wbits)
        try:
            out = engine.decompress(payload, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise Corrupted(f"the compressed grain at file offset {where} inflates to more "
                            f"than the grain size ({limit} bytes)", path, status=_INVALID)
        if not engine.eof:
            raise Corrupted(f"the compressed grain at file offset {where} is truncated", path,
                            status=_INVALID)
        return out
    raise Corrupted(f"the compressed grain at file offset {where} is not valid deflate "
                    f"data", path, status=_INVALID)


@dataclass(frozen=True)
class SparseLayout:
    """Where a new sparse extent's structures go (sector units)."""

    header: SparseHeader
    gd_entries: int
    gd_sectors: int
    gt_sectors: int

    @classmethod
    def plan(cls, capacity: int, grain: int = DEFAULT_GRAIN_SECTORS, version: int = 1,
             flags: int = FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT,
             desc_sectors: int = 0) -> SparseLayout:
        """Header, descriptor, redundant GD and GTs, GD and GTs, then grains (qemu's
        and VirtualBox's layout; every GT allocated up front)."""
        gtes = DEFAULT_GTES_PER_GT
        grains = -(-capacity // grain)
        gd_entries = -(-grains // gtes)
        gd_sectors = -(-gd_entries * 4 // SECTOR)
        gt_sectors = -(-gtes * 4 // SECTOR)
        desc_offset = 1 if desc_sectors else 0
        rgd = 1 + desc_sectors
        gd = rgd + gd_sectors + gd_entries * gt_sectors
        overhead = align_up(gd + gd_sectors + gd_entries * gt_sectors, grain)
        header = SparseHeader(version=version, flags=flags, capacity=capacity, grain=grain,
                              desc_offset=desc_offset, desc_size=desc_sectors,
                              gtes_per_gt=gtes, rgd_offset=rgd, gd_offset=gd,
                              overhead=overhead)
        return cls(header, gd_entries, gd_sectors, gt_sectors)

    def directory(self, gd_sector: int) -> bytes:
        """A GD whose tables follow it back to back, padded to whole sectors."""
        first = gd_sector + self.gd_sectors
        entries = first + np.arange(self.gd_entries, dtype=np.uint32) * self.gt_sectors
        raw = entries.astype("<u4").tobytes()
        return raw + zeros(-len(raw) % SECTOR)

    def write(self, storage: Storage, descriptor: bytes = b"") -> None:
        """Write header, descriptor and directories; the tables stay holes (zeros)."""
        h = self.header
        if len(descriptor) > h.desc_size * SECTOR:
            raise NotSupported("the descriptor does not fit its reserved area", storage.path)
        storage.write_at(0, h.pack())
        if h.desc_size:
            storage.write_at(h.desc_offset * SECTOR,
                             descriptor + zeros(h.desc_size * SECTOR - len(descriptor)))
        if h.flags & FLAG_REDUNDANT_GT:
            storage.write_at(h.rgd_offset * SECTOR, self.directory(h.rgd_offset))
        storage.write_at(h.gd_offset * SECTOR, self.directory(h.gd_offset))
        storage.set_size(h.overhead * SECTOR)


class SparseExtent(Extent):
    """A hosted sparse extent (or, read-only, an ESX COWD extent)."""

    kind = "SPARSE"

    def __init__(self, storage: Storage, sectors: int, access: str, path: str,
                 header: SparseHeader, honor_zeroes: bool = False) -> None:
        super().__init__(sectors, access, path)
        self.storage = storage
        self.header = header
        self.honor_zeroes = honor_zeroes
        #: Why this extent cannot be written, when it cannot (None: it can).
        self.read_only_reason: str | None = None
        self.grain_sectors = header.grain
        self.grain_bytes = header.grain * SECTOR
        self.gtes = header.gtes_per_gt
        self.gt_sectors = -(-self.gtes * 4 // SECTOR)
        self.compressed = header.compressed
        self.markers = header.markers and self.compressed
        self.zero_grains = header.zero_grains
        self.data_start = header.overhead * SECTOR
        self.gd: FlatTable | None = None
        self.rgd: FlatTable | None = None
        self.gts = TableCache(storage, self.gtes, "<u4", what="VMDK grain table")
        self.rgts = TableCache(storage, self.gtes, "<u4", capacity=16,
                               what="VMDK redundant grain table")
        self._inflated: dict[int, bytes] = {}
        self.map = BlockMap(storage, self.grain_bytes, self.size, self._lookup)
        self.append = 0

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, storage: Storage, sectors: int | None, access: str, path: str,
             honor_zeroes: bool = False, check_tables: bool = True) -> SparseExtent:
        """Open the sparse extent in ``storage``; ``sectors`` None: the header's capacity."""
        raw = storage.read_at(0, SECTOR)
        if raw[:4] == COWD_MAGIC:
            return cls._open_cowd(storage, raw, sectors, access, path)
        if len(raw) < SECTOR:
            raise Corrupted(f"the VMDK sparse extent header is cut short ({len(raw)} of "
                            f"{SECTOR} bytes)", path, status=_INVALID)
        header = SparseHeader.unpack(raw, path)
        readonly_reason = None
        if header.gd_offset == GD_AT_END:
            header = read_footer(storage, path)
            readonly_reason = ("its grain directory is at the end of the file "
                               "(streamOptimized): new grains cannot be added in place")
        if not 1 <= header.version <= 3:
            raise NotSupported(f"VMDK sparse extent version {header.version} is not supported",
                               path, status="VERR_VD_VMDK_UNSUPPORTED_VERSION")
        if header.compression not in (COMPRESSION_NONE, COMPRESSION_DEFLATE):
            raise NotSupported(f"VMDK compression method {header.compression} is not "
                               f"supported", path, status="VERR_VD_VMDK_UNSUPPORTED_VERSION")
        if header.version == 3 and not header.compressed:
            # Version 3 without compression carries changed-block tracking data we do
            # not maintain (qemu opens these read-only too).
            readonly_reason = "version 3 sparse extents without compression are read-only"
        cls._validate(header, storage, path)
        capacity = header.capacity
        if sectors is None:
            sectors = capacity
        if sectors > capacity:
            raise Corrupted(f"the descriptor gives the sparse extent {sectors} sectors but "
                            f"its header only {capacity}", path, status=_INVALID)
        extent = cls(storage, sectors, access, path, header, honor_zeroes)
        extent.read_only_reason = readonly_reason
        extent._load_directories(check_tables)
        return extent

    @staticmethod
    def _validate(h: SparseHeader, storage: Storage, path: str) -> None:
        def bad(message: str) -> Corrupted:
            return Corrupted(message, path, status=_INVALID)

        if h.grain < 1 or h.grain & (h.grain - 1) or h.grain > MAX_GRAIN_SECTORS:
            raise bad(f"the VMDK grain size of {h.grain} sectors is not a power of two up "
                      f"to {MAX_GRAIN_SECTORS}")
        if not 1 <= h.gtes_per_gt <= MAX_GTES_PER_GT:
            raise bad(f"the VMDK header gives {h.gtes_per_gt} entries per grain table")
        if h.capacity < 1:
            raise bad("the VMDK sparse extent has a capacity of 0 sectors")
        coverage = h.gtes_per_gt * h.grain
        if -(-h.capacity // coverage) > MAX_GD_ENTRIES:
            raise NotSupported(f"the VMDK sparse extent's capacity ({h.capacity} sectors) "
                               f"needs a grain directory of more than {MAX_GD_ENTRIES} "
                               f"entries", path, status=_INVALID)
        size = storage.size()
        if h.overhead * SECTOR > size and h.gd_offset != GD_AT_END:
            raise bad(f"the file is truncated: the VMDK header says grains start at "
                      f"{h.overhead * SECTOR} but the file has {size} bytes")
        if h.desc_size > MAX_DESCRIPTOR_SECTORS:
            raise bad(f"the embedded descriptor area of {h.desc_size} sectors is too large")
        if h.desc_offset and h.desc_offset * SECTOR >= size:
            raise bad("the embedded descriptor lies beyond the end of the file")
        if h.gd_offset == 0:
            raise bad("the VMDK header gives no grain directory")
        gd_bytes = -(-h.capacity // coverage) * 4
        tables = [("grain directory", h.gd_offset)]
        if h.flags & FLAG_REDUNDANT_GT and h.rgd_offset:
            tables.append(("redundant grain directory", h.rgd_offset))
        for what, sector in tables:
            if sector * SECTOR + gd_bytes > size:
                raise bad(f"the file is truncated: the {what} at sector {sector} lies beyond "
                          f"its end ({size} bytes)")

    @classmethod
    def _open_cowd(cls, storage: Storage, raw: bytes, sectors: int | None, access: str,
                   path: str) -> SparseExtent:
        """ESX vmfsSparse ("COWD") extents: read-only, 4096-entry grain tables."""
        c = COWD_HEADER.unpack(raw, 0, path)
        header = SparseHeader(version=1, flags=0, capacity=c["capacity"], grain=c["grain"],
                              gtes_per_gt=COWD_GTES_PER_GT, gd_offset=c["gd_offset"],
                              overhead=0)
        cls._validate(header, storage, path)
        needed = -(-header.capacity // (COWD_GTES_PER_GT * header.grain))
        if c["gd_entries"] < needed:
            raise Corrupted(f"the COWD extent's grain directory has {c['gd_entries']} "
                            f"entries; its capacity needs {needed}", path, status=_INVALID)
        sectors = header.capacity if sectors is None else sectors
        if sectors > header.capacity:
            raise Corrupted(f"the descriptor gives the COWD extent {sectors} sectors but its "
                            f"header only {header.capacity}", path, status=_INVALID)
        extent = cls(storage, sectors, access, path, header)
        extent.kind = "VMFSSPARSE"
        extent.read_only_reason = "ESX vmfsSparse (COWD) extents are read-only"
        extent._load_directories(True)
        return extent

    def _gd_entries(self) -> int:
        return -(-self.header.capacity // (self.gtes * self.grain_sectors))

    def _load_directories(self, check_tables: bool) -> None:
        h, count = self.header, self._gd_entries()
        self.gd = FlatTable(self.storage, h.gd_offset * SECTOR, count, "<u4",
                            "VMDK grain directory")
        if h.flags & FLAG_REDUNDANT_GT and h.rgd_offset:
            self.rgd = FlatTable(self.storage, h.rgd_offset * SECTOR, count, "<u4",
                                 "VMDK redundant grain directory")
        size = self.storage.size()
        if check_tables:
            for table, what in ((self.gd, "grain directory"),
                                (self.rgd, "redundant grain directory")):
                if table is None:
                    continue
                bad = np.flatnonzero(table.entries.astype(np.int64) * SECTOR
                                     + self.gtes * 4 > size)
                if bad.size:
                    i = int(bad[0])
                    raise Corrupted(f"entry {i} of the VMDK {what} points to sector "
                                    f"{int(table.entries[i])}, beyond the end of the file",
                                    self.path, status=_INVALID)
        step = SECTOR if self.compressed else self.grain_bytes
        self.append = align_up(max(size, self.data_start), step)

    # -- the grain map ----------------------------------------------------------------

    def _gt_offset(self, index: int) -> int:
        """The file offset of grain table ``index``, 0 when it is not allocated."""
        return int(self.gd.entries[index]) * SECTOR if index < len(self.gd.entries) else 0

    def _gt_entries(self, index: int) -> np.ndarray | None:
        """Grain table ``index`` (a cached, read-only array), None when it is not
        allocated."""
        offset = self._gt_offset(index)
        return self.gts.get(offset) if offset else None

    def _lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        states = np.zeros(count, dtype=np.uint8)
        offsets = np.zeros(count, dtype=np.int64)
        grain, end = first, first + count
        while grain < end:
            index, low = divmod(grain, self.gtes)
            n = min(self.gtes - low, end - grain)
            table = self._gt_entries(index)
            if table is not None:
                entries = table[low:low + n].astype(np.int64)
                at = grain - first
                state = np.where(entries == 0, FREE, DATA).astype(np.uint8)
                if self.zero_grains:
                    state[entries == GTE_ZERO] = ZERO
                states[at:at + n] = state
                offsets[at:at + n] = entries * SECTOR
            grain += n
        return states, offsets

    # -- reading ----------------------------------------------------------------------

    @property
    def allocation_unit(self) -> int:
        return self.grain_bytes

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        return self.map.block_status(offset, length)

    def read_into(self, offset: int, buf: memoryview) -> None:
        if not self.compressed:
            self.map.read_into(offset, buf)
            return
        gb = self.grain_bytes
        pos, end = offset, offset + len(buf)
        while pos < end:
            first = pos // gb
            count = min((end - 1) // gb - first + 1, LOOKAHEAD)
            states, offsets = self._lookup(first, count)
            for i in range(count):
                start = max(pos, (first + i) * gb)
                stop = min(end, (first + i + 1) * gb)
                if states[i] == DATA:
                    grain = self._grain_content(first + i, int(offsets[i]))
                    inner = start - (first + i) * gb
                    buf[start - offset:stop - offset] = grain[inner:inner + stop - start]
                else:
                    fill_zero(buf, start - offset, stop - offset)
                pos = stop

    def _grain_content(self, index: int, file_offset: int) -> bytes:
        """The content of compressed grain ``index`` stored at ``file_offset``."""
        return self._grain(file_offset)

    def _grain(self, file_offset: int) -> bytes:
        """The inflated content of the compressed grain stored at ``file_offset``."""
        cached = self._inflated.pop(file_offset, None)
        if cached is None:
            cached = self._inflate_at(file_offset)
            if len(self._inflated) >= 16:
                self._inflated.pop(next(iter(self._inflated)))
        self._inflated[file_offset] = cached
        return cached

    def _inflate_at(self, file_offset: int) -> bytes:
        gb = self.grain_bytes
        if self.markers:
            head = self.storage.read_exact(file_offset, GRAIN_RECORD.size,
                                           "compressed grain header")
            _, size = GRAIN_RECORD.unpack(head)
            if not 0 < size <= 2 * gb + SECTOR:
                raise Corrupted(f"the compressed grain at file offset {file_offset} claims "
                                f"{size} bytes of data", self.path, status=_INVALID)
            payload = self.storage.read_exact(file_offset + GRAIN_RECORD.size, size,
                                              "compressed grain")
        else:
            payload = self.storage.read_at(file_offset, 2 * gb)
        out = inflate(payload, gb, self.path, file_offset)
        return out + zeros(gb - len(out)) if len(out) < gb else out

    # -- writing ----------------------------------------------------------------------

    def check_writable(self) -> None:
        super().check_writable()
        if self.read_only_reason:
            raise ReadOnly(self.read_only_reason, self.path)
        if not self.storage.writable:
            raise ReadOnly("the extent file is opened read-only", self.path)

    def write(self, offset: int, data: memoryview) -> None:
        """Write into allocated grains (uncompressed in place; compressed: new grains)."""
        self.check_writable()
        gb = self.grain_bytes
        end = offset + len(data)
        first = offset // gb
        count = (end - 1) // gb - first + 1
        states, offsets = self._lookup(first, count)
        allocated = offsets[states == DATA]
        if allocated.size and int(allocated.min()) < self.data_start:
            raise Corrupted("a grain table entry points into the extent's metadata area; "
                            "refusing to write there", self.path, status=_INVALID)
        if not self.compressed:
            self.map.write(offset, data)
            return
        # Compressed grains are never rewritten in place: a whole grain gets a new
        # record; part of one would need the old data recompressed (VirtualBox: invalid).
        if offset % gb or (end % gb and end != self.size):
            raise InvalidState("a partial rewrite of a compressed grain is not possible; "
                               "only whole grains can be replaced", self.path,
                               status=INVALID_STATE)
        self.write_blocks(offset, data)

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Allocate grains at the end of the file and point the grain tables at them."""
        self.check_writable()
        gb = self.grain_bytes
        if len(data) % gb:  # the extent's last, partial grain: store it whole
            data = memoryview(bytes(data) + zeros(gb - len(data) % gb))
        first = offset // gb
        pending: dict[int, list[int]] = {}
        try:
            for start, count, zero in unit_runs(data, gb, True):
                grain = first + start
                chunk = data[start * gb:(start + count) * gb]
                if zero and self.zero_grains and not self.honor_zeroes:
                    values = np.full(count, GTE_ZERO, dtype=np.int64)
                elif self.compressed:
                    values = self._append_compressed(grain, chunk, count)
                elif zero:
                    values = self._append(None, count)  # a hole at the end reads as zeros
                else:
                    values = self._append(chunk, count)
                self._set_entries(grain, values, pending)
        finally:
            self._persist(pending)

    def _reserve(self, length: int) -> int:
        pos = self.append
        if (pos + length) // SECTOR > MAX_FILE_SECTORS:
            raise NotSupported("the sparse extent file would grow past the 2 TiB a VMDK grain "
                               "table can address", self.path)
        self.append = pos + length
        return pos

    def _append(self, data: memoryview | None, count: int) -> np.ndarray:
        gb = self.grain_bytes
        pos = self._reserve(count * gb)
        if data is None:
            if self.storage.size() < pos + count * gb:
                self.storage.set_size(pos + count * gb)
        else:
            self.storage.write_at(pos, data)
        return pos // SECTOR + np.arange(count, dtype=np.int64) * self.grain_sectors

    def _append_compressed(self, grain: int, data: memoryview, count: int) -> np.ndarray:
        gb = self.grain_bytes
        records = [compress_grain((grain + i) * self.grain_sectors, data[i * gb:(i + 1) * gb])
                   for i in range(count)]
        pos = self._reserve(sum(len(r) for r in records))
        self.storage.write_at(pos, b"".join(records))
        starts = np.cumsum([0] + [len(r) for r in records[:-1]], dtype=np.int64)
        return (pos + starts) // SECTOR

    def _table_for_update(self, index: int) -> np.ndarray:
        """Grain table ``index``, writable, allocating it (and its mirror) if the GD
        has none."""
        offset = self._gt_offset(index)
        if offset:
            return self.gts.modify(offset)
        if index >= len(self.gd.entries):
            raise Corrupted(f"grain table {index} lies outside the grain directory",
                            self.path, status=_INVALID)
        size = self.gt_sectors * SECTOR
        pos = self._reserve(size * (2 if self.rgd is not None else 1))
        table = self.gts.new(pos)
        self.gd.entries[index] = pos // SECTOR
        if self.rgd is not None:
            self.rgts.new(pos + size)
            self.rgd.entries[index] = (pos + size) // SECTOR
            self.rgd.persist(index, 1)
        self.gd.persist(index, 1)
        if self.compressed or self.append % self.grain_bytes == 0:
            return table
        self.append = align_up(self.append, self.grain_bytes)
        return table

    def _set_entries(self, grain: int, values: np.ndarray,
                     pending: dict[int, list[int]]) -> None:
        """Set grain table entries in memory; :meth:`_persist` writes them."""
        pos, i = grain, 0
        while i < len(values):
            index, low = divmod(pos, self.gtes)
            n = min(self.gtes - low, len(values) - i)
            if index not in pending and len(pending) >= PENDING_TABLES:
                # Changed tables live in the table cache until written: write them
                # before the cache could drop one (a write spanning many tables).
                self._persist(pending)
                pending.clear()
            table = self._table_for_update(index)
            table[low:low + n] = values[i:i + n]
            span = pending.setdefault(index, [low, low + n])
            span[0], span[1] = min(span[0], low), max(span[1], low + n)
            pos += n
            i += n
        self._inflated.clear()

    def _persist(self, pending: dict[int, list[int]]) -> None:
        """Write changed entries to the grain tables, then to their mirrors."""
        for index, (low, high) in sorted(pending.items()):
            self.gts.persist(int(self.gd.entries[index]) * SECTOR, low, high - low)
            if self.rgd is not None and int(self.rgd.entries[index]):
                offset = int(self.rgd.entries[index]) * SECTOR
                mirror = self.rgts.modify(offset)
                mirror[low:high] = self._gt_entries(index)[low:high]
                self.rgts.persist(offset, low, high - low)

    # -- growing --------------------------------------------------------------------------

    def grow(self, sectors: int) -> None:
        """Raise the capacity to ``sectors``; new grain tables are allocated on use.

        When the grain directories have no room for the new entries they are copied,
        larger, to the end of the file; the header is switched over last (one sector).
        """
        self.check_writable()
        if self.compressed:
            raise NotSupported("compressed (streamOptimized) extents cannot grow", self.path)
        h = self.header
        count = -(-sectors // (self.gtes * self.grain_sectors))
        if count > MAX_GD_ENTRIES:
            raise NotSupported(f"a sparse extent of {sectors} sectors needs a grain directory "
                               f"of more than {MAX_GD_ENTRIES} entries", self.path)
        old = len(self.gd.entries)
        room = -(-old * 4 // SECTOR) * SECTOR // 4
        tables = [("gd_offset", self.gd)] + ([("rgd_offset", self.rgd)] if self.rgd else [])
        new_header = SparseHeader(**{**h.__dict__, "capacity": max(sectors, h.capacity)})
        grown: list[FlatTable] = []
        for name, table in tables:
            entries = np.concatenate([table.entries, np.zeros(count - old, dtype="<u4")])
            offset = table.offset
            if count > room:
                raw = entries.tobytes()
                offset = self._reserve(align_up(len(raw), SECTOR))
                self.storage.write_at(offset, raw + zeros(-len(raw) % SECTOR))
                setattr(new_header, name, offset // SECTOR)
            new = FlatTable.new(self.storage, offset, count, "<u4", 0, table.what)
            new.entries[:] = entries
            if count <= room and count > old:
                new.persist(old, count - old)
            grown.append(new)
        self.storage.write_at(0, new_header.pack())
        self.header = new_header
        self.gd = grown[0]
        self.rgd = grown[1] if len(grown) > 1 else None
        self.sectors = sectors
        self.map.size = self.size

    # -- releasing grains, packing, shrinking ------------------------------------------

    def check_compactable(self, writable: bool = True) -> None:
        """Refuse (NotSupported) an extent whose grains cannot be released in place
        (``writable``: and one that cannot be written now)."""
        if self.compressed:
            raise NotSupported("streamOptimized (compressed) VMDK images cannot be compacted "
                               "in place: their grains are compressed records written once, "
                               "front to back.  Convert the image to a new streamOptimized "
                               "one instead (that stores no all-zero grains)", self.path)
        if self.kind == "VMFSSPARSE":
            raise NotSupported("ESX vmfsSparse (COWD) extents cannot be compacted", self.path)
        if writable:
            self.check_writable()

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        """Release the whole grains of the range: their entries become 0 (free) or,
        with ``zero``, 1 (a grain of zeros), in the grain table and then its mirror.
        The grains stay in the file until :meth:`pack`."""
        self.check_compactable()
        if zero and not self.zero_grains:
            raise NotSupported("this sparse extent cannot mark grains as zero (it needs a "
                               "version 2 header with the zeroed-grain flag)", self.path)
        gb = self.grain_bytes
        self._set_range(offset // gb, -(-min(offset + length, self.size) // gb),
                        GTE_ZERO if zero else 0)

    def _set_range(self, first: int, end: int, value: int) -> None:
        """Set the entries of grains ``first .. end-1`` to ``value`` (0 or GTE_ZERO),
        allocating a table only where a zero marker needs one."""
        grain = first
        while grain < end:
            index, low = divmod(grain, self.gtes)
            high = min(self.gtes, low + end - grain)
            table = self._gt_entries(index)
            if table is None and value:
                table = self._table_for_update(index)
            if table is not None and np.any(table[low:high] != value):
                table = self._table_for_update(index)
                table[low:high] = value
                self._persist({index: [low, high]})
            grain += high - low

    def _layout(self) -> tuple[list[Movable], np.ndarray, list[int]]:
        """What packing may move (grains, then tables and directories after the
        metadata area); the ``(start, length)`` sector ranges that stay (rows); and the
        indices of redundant tables that differ from their grain table.  Tables are
        read a batch at a time (memory stays bounded whatever the extent's size)."""
        h = self.header
        grains, owners, stale = [], [], []
        indices = np.flatnonzero(self.gd.entries)
        for first in range(0, len(indices), TABLE_BATCH):
            part = indices[first:first + TABLE_BATCH]
            tables = read_tables(self.storage, self.gd.entries[part], self.gtes,
                                 "VMDK grain table")
            flat = tables.reshape(-1).astype(np.int64)
            used = np.flatnonzero(flat >= (2 if self.zero_grains else 1))
            grains.append(flat[used])
            owners.append(part[used // self.gtes].astype(np.int64) * self.gtes
                          + used % self.gtes)
            if self.rgd is not None:
                mirrored = np.flatnonzero(self.rgd.entries[part])
                mirrors = read_tables(self.storage, self.rgd.entries[part[mirrored]],
                                      self.gtes, "VMDK redundant grain table")
                differ = (mirrors != tables[mirrored]).any(axis=1)
                stale += part[mirrored[differ]].tolist()
        count = len(self.gd.entries)
        dir_sectors = -(-count * 4 // SECTOR)
        fixed = [(0, 1)]
        if h.desc_offset and h.desc_size:
            fixed.append((h.desc_offset, h.desc_size))
        early_tables, table_starts, table_owners, dir_starts, dir_owners = [], [], [], [], []
        for k, directory in enumerate(self._directories()):
            sector = directory.offset // SECTOR
            if sector >= h.overhead:
                dir_starts.append(sector)
                dir_owners.append(k)
            else:
                fixed.append((sector, dir_sectors))
            where = np.flatnonzero(directory.entries)
            at = directory.entries[where].astype(np.int64)
            late = at >= h.overhead
            early_tables.append(at[~late])
            table_starts.append(at[late])
            table_owners.append(k * count + where[late])
        early = np.concatenate(early_tables)
        fixed = np.concatenate([np.array(fixed, dtype=np.int64),
                                np.stack([early, np.full(len(early), self.gt_sectors)], axis=1)])
        none = [np.zeros(0, dtype=np.int64)]
        kinds = [Movable(np.concatenate(grains or none), np.concatenate(owners or none),
                         self.grain_sectors),
                 Movable(np.concatenate(table_starts), np.concatenate(table_owners),
                         self.gt_sectors),
                 Movable(np.array(dir_starts, dtype=np.int64), np.array(dir_owners),
                         dir_sectors)]
        return kinds, fixed, stale

    def _directories(self) -> list[FlatTable]:
        return [self.gd] + ([self.rgd] if self.rgd is not None else [])

    def pack(self, progress: Progress | None = None) -> None:
        """Move the last grains (then tables and directories lying after them) into
        the holes, and cut the file after what is left.

        Each batch is copied first and then pointed at (grain tables and their
        mirrors, directories, or the header) in one transaction, so an interruption
        leaves everything readable (a copy not yet used is merely leaked).
        """
        self.check_compactable()
        gb = self.grain_bytes
        kinds, fixed, stale = self._layout()
        grains = kinds[0].starts
        size = self.storage.size()
        if len(grains) and (int(grains.min()) < self.header.overhead
                            or int(grains.max()) * SECTOR >= size):
            raise Corrupted("a grain table entry points into the metadata or past the end of "
                            "the file; repair the image first (vdimg repair)", self.path,
                            status=_INVALID)
        try:
            plan = plan_pack(kinds, fixed, self.header.overhead)
        except ValueError:
            raise Corrupted("grains or grain tables of the sparse extent overlap; repair the "
                            "image first (vdimg repair)", self.path, status=_INVALID) from None
        self._sync_mirrors(stale)
        moves = plan.moves[0]
        batch = max(1, (64 << 20) // gb)
        for done in range(0, len(moves), batch):
            report(progress, done, len(moves), "moving grains")
            part = moves[done:done + batch]
            for source, target, count in _runs(part, self.grain_sectors):
                self.storage.copy_to(source * SECTOR, count * gb, self.storage, target * SECTOR)
            self.storage.flush()
            with self.storage.transaction():
                self._repoint(part)
        self._move_tables(plan.moves[1], len(self.gd.entries))
        self._move_directories(plan.moves[2])
        end = plan.end * SECTOR
        if size > end:
            with self.storage.transaction():
                self.storage.set_size(end)
        self.append = align_up(max(min(size, end), self.data_start), gb)
        report(progress, len(moves), len(moves), "moving grains")

    def _move_tables(self, moves: list[tuple[int, int, int]], count: int) -> None:
        """Copy grain tables lower, then point their directory entries at the copies."""
        if not moves:
            return
        size = self.gt_sectors * SECTOR
        for source, target, _owner in moves:
            self.storage.copy_to(source * SECTOR, size, self.storage, target * SECTOR,
                                 "VMDK grain table")
        self.storage.flush()
        caches = (self.gts, self.rgts)
        with self.storage.transaction():
            for source, target, owner in moves:
                k, index = divmod(owner, count)
                directory = self._directories()[k]
                directory.entries[index] = target
                directory.persist(index, 1)
                caches[k].forget(source * SECTOR)

    def _move_directories(self, moves: list[tuple[int, int, int]]) -> None:
        """Copy a directory lower, then point the header at the copy."""
        for source, target, k in moves:
            directory = self._directories()[k]
            raw = directory.entries.tobytes()
            self.storage.write_at(target * SECTOR, raw + zeros(-len(raw) % SECTOR))
            self.storage.flush()
            header = replace(self.header, **{("gd_offset", "rgd_offset")[k]: target})
            with self.storage.transaction():
                self.storage.write_at(0, header.pack())
            self.header = header
            directory.offset = target * SECTOR

    def _sync_mirrors(self, stale: list[int]) -> None:
        """Make the redundant grain tables ``stale`` equal to their grain tables (an
        interrupted update may have left a mirror behind; it must not point into a
        hole that packing is about to fill)."""
        for first in range(0, len(stale), TABLE_BATCH):
            part = np.array(stale[first:first + TABLE_BATCH])
            tables = read_tables(self.storage, self.gd.entries[part], self.gtes,
                                 "VMDK grain table")
            with self.storage.transaction():
                for k, index in enumerate(part.tolist()):
                    offset = int(self.rgd.entries[index]) * SECTOR
                    self.storage.write_at(offset, tables[k].tobytes())
                    self.rgts.forget(offset)

    def _repoint(self, moves: list[tuple[int, int, int]]) -> None:
        """Point the owners of moved grains (both tables) at the grains' new places."""
        by_table: dict[int, list[tuple[int, int]]] = {}
        for _source, target, owner in moves:
            index, low = divmod(owner, self.gtes)
            by_table.setdefault(index, []).append((low, target))
        for index, items in sorted(by_table.items()):
            lows = [low for low, _ in items]
            first, stop = min(lows), max(lows) + 1
            offset = int(self.gd.entries[index]) * SECTOR
            table = self.gts.modify(offset)
            table[lows] = [target for _, target in items]
            self.gts.persist(offset, first, stop - first)
            if self.rgd is not None and int(self.rgd.entries[index]):
                mirror_offset = int(self.rgd.entries[index]) * SECTOR
                mirror = self.rgts.modify(mirror_offset)
                mirror[first:stop] = table[first:stop]
                self.rgts.persist(mirror_offset, first, stop - first)

    def shrink(self, sectors: int) -> None:
        """Lower the capacity to ``sectors`` (the caller made sure no grain beyond is
        allocated).  Zero markers beyond are cleared, so that a later growth reads
        free grains there; header and tables change in one transaction."""
        self.check_compactable()
        gs = self.grain_sectors
        grains = -(-sectors // gs)
        count = -(-grains // self.gtes)
        header = replace(self.header, capacity=sectors)
        with self.storage.transaction():
            self._set_range(grains, count * self.gtes, 0)
            self.storage.write_at(0, header.pack())
        self.gd.entries = self.gd.entries[:count].copy()
        if self.rgd is not None:
            self.rgd.entries = self.rgd.entries[:count].copy()
        self.header = header
        self.sectors = sectors
        self.map.size = self.size

    # -- description --------------------------------------------------------------------

    def describe(self) -> list[tuple[str, str]]:
        h = self.header
        gd = self.gd.entries if self.gd is not None else np.zeros(0, np.uint32)
        out = [("header version", str(h.version)), ("header flags", f"{h.flags:#x}"),
               ("capacity (sectors)", str(h.capacity)),
               ("grain size (sectors)", str(h.grain)),
               ("grain table entries", str(h.gtes_per_gt)),
               ("descriptor offset/size (sectors)", f"{h.desc_offset}/{h.desc_size}"),
               ("grain directory offset (sectors)", str(h.gd_offset)),
               ("redundant grain directory offset (sectors)",
                str(h.rgd_offset) if self.rgd is not None else "none"),
               ("grain directory entries", f"{len(gd)} ({int(np.count_nonzero(gd))} tables)"),
               ("overhead (sectors)", str(h.overhead)),
               ("compression", "deflate" if h.compressed else "none"),
               ("zeroed-grain entries", "yes" if self.zero_grains else "no")]
        if self.read_only_reason:
            out.append(("read-only", self.read_only_reason))
        return out


def _runs(moves: list[tuple[int, int, int]], grain: int) -> list[tuple[int, int, int]]:
    """``(source, target, grains)``: moves whose sources and targets both follow each
    other, copied with one read and one write."""
    runs: list[list[int]] = []
    for source, target, _owner in moves:
        if runs and runs[-1][0] + runs[-1][2] * grain == source \
                and runs[-1][1] + runs[-1][2] * grain == target and runs[-1][2] < 256:
            runs[-1][2] += 1
        else:
            runs.append([source, target, 1])
    return [tuple(run) for run in runs]
