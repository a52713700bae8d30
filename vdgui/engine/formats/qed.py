"""QED: the QEMU Enhanced Disk format (qemu's docs/interop/qed_spec).

Little-endian.  Cluster 0 holds a 64-byte header and, directly after it, the
backing file name; the L1 table and every L2 table are ``table_size`` clusters of
u64 file offsets.  An L2 entry of 0 means "not allocated" (read the backing file,
or zeros), 1 means "zero cluster" (reads as zeros and hides the backing file),
anything else is the file offset of the data cluster.

Writing follows qemu: new clusters are appended at the end of the file (data, then
a new L2 table, then the L2 entry, then the L1 entry), and the "need check"
feature bit is set and flushed before the first metadata change of a session and
cleared again on a clean close (or flush).  An image opened read/write with the
bit still set is checked first, as :meth:`QedImage.check` checks it (entries
pointing outside the file or into metadata are cleared, shared clusters copied),
and what was fixed is logged.  Read-only opens never write.

Clusters are released by setting their entries to 0 (free) or 1 (zero cluster);
a pack moves clusters and tables from the end of the file into the holes and
cuts the file short.  The disk grows as far as the L1 table can map (the table
never moves) and shrinks when nothing is stored past the new end.

New images have 64 KiB clusters and 4-cluster tables by default (options
``cluster_size`` and ``table_size``).  qemu 7.2 cannot open images with
``table_size=1`` (its table-offset check rejects them), though the specification
allows them and this backend reads and writes them.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..blockmap import DATA, FREE, ZERO, BlockMap, is_zero, unit_runs
from ..errors import (Corrupted, InvalidHeader, InvalidParameter, InvalidSize, InvalidType,
                      NotSupported, ShrinkNotSupported, VDError)
from ..findings import ERROR, LEAK, WARNING, Finding
from ..io import Storage, StorageProvider
from ..layout import Layout
from ..progress import Progress
from ..types import (SECTOR, Capability, ConfigKey, ConfigKeyFlags, ConfigValueType, DiskType,
                     ImageFlags, OpenFlags)
from ._twolevel import (CheckPlan, Region, TableLayout, TwoLevelTable, leak_findings,
                        repair_open, run_check, survey_tables, table_fixes)
from .base import (BackendInfo, CreateRequest, MappedContent, ParentLink, SingleFileImage,
                   config_int, relative_parent_path, validate_config)

log = logging.getLogger(__name__)

MAGIC = 0x00444551  # "QED\0"

FEATURE_BACKING_FILE = 0x1
FEATURE_NEED_CHECK = 0x2
FEATURE_BACKING_RAW = 0x4  # the backing file is raw: do not probe it
KNOWN_FEATURES = FEATURE_BACKING_FILE | FEATURE_NEED_CHECK | FEATURE_BACKING_RAW

ENTRY_ZERO = 1  # L2 value of a zero cluster

MIN_CLUSTER = 4 << 10
MAX_CLUSTER = 64 << 20
MAX_TABLE_SIZE = 16
DEFAULT_CLUSTER = 64 << 10
DEFAULT_TABLE_SIZE = 4
MAX_NAME = 4095  # qemu reads backing names into a PATH_MAX buffer

HEADER = Layout("QED header", "<", [
    ("magic", "I"), ("cluster_size", "I"), ("table_size", "I"), ("header_size", "I"),
    ("features", "Q"), ("compat_features", "Q"), ("autoclear_features", "Q"),
    ("l1_table_offset", "Q"), ("image_size", "Q"),
    ("backing_filename_offset", "I"), ("backing_filename_size", "I")])


def _power_of_two(value: int) -> bool:
    return value > 0 and not value & (value - 1)


def _backing(path: str, link: ParentLink | None, room: int) -> tuple[int, bytes]:
    """Feature bits and stored name for a backing file (``room``: bytes free after the
    header in the header area)."""
    if link is None:
        return 0, b""
    name = os.fsencode(relative_parent_path(path, link.path))
    room = min(room, MAX_NAME)
    if len(name) > room:
        raise InvalidParameter(f"the backing file name is longer than the QED header area "
                               f"can hold ({room} bytes)", path)
    raw = FEATURE_BACKING_RAW if link.format.upper() == "RAW" else 0
    return FEATURE_BACKING_FILE | raw, name


def _decode(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    states = np.where(raw == 0, FREE, np.where(raw == ENTRY_ZERO, ZERO, DATA)).astype(np.uint8)
    return states, raw.astype(np.int64)


class QedImage(MappedContent, SingleFileImage):
    """An opened QED image."""

    info = BackendInfo(
        name="QED",
        description="QEMU Enhanced Disk",
        capabilities=(Capability.CREATE_DYNAMIC | Capability.DIFF | Capability.FILE
                      | Capability.ASYNC | Capability.VFS | Capability.DISCARD),
        extensions=(("qed", DiskType.HDD),),
        variants=("standard",),
        config_keys=(
            ConfigKey("cluster_size", str(DEFAULT_CLUSTER), ConfigValueType.INTEGER,
                      ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("table_size", str(DEFAULT_TABLE_SIZE), ConfigValueType.INTEGER,
                      ConfigKeyFlags.CREATE_ONLY),
        ),
        image_flags_mask=ImageFlags.DIFF,
        stores=frozenset({"parent_path"}),
    )

    # -- probing and opening ---------------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            cls._parse_header(storage.read_at(0, HEADER.size), storage.size(), path)
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("QED images are hard disks", path)
        return DiskType.HDD

    @staticmethod
    def _parse_header(raw: bytes, file_size: int, path: str) -> dict:
        """The header's fields, validated as qemu validates them."""
        if len(raw) < 4 or int.from_bytes(raw[:4], "little") != MAGIC:
            raise InvalidHeader("not a QED image (no QED magic)", path)
        h = HEADER.unpack(raw, 0, path)
        cs, ts = h["cluster_size"], h["table_size"]
        if not _power_of_two(cs) or not MIN_CLUSTER <= cs <= MAX_CLUSTER:
            raise Corrupted(f"the QED cluster size {cs} is not a power of two between "
                            f"4 KiB and 64 MiB", path)
        if not _power_of_two(ts) or ts > MAX_TABLE_SIZE:
            raise Corrupted(f"the QED table size {ts} is not a power of two between 1 and "
                            f"{MAX_TABLE_SIZE} clusters", path)
        unknown = h["features"] & ~KNOWN_FEATURES
        if unknown:
            raise NotSupported(f"the image uses QED features this program does not know "
                               f"({unknown:#x})", path)
        header_bytes = h["header_size"] * cs
        if h["header_size"] == 0 or header_bytes > 0xFFFFFFFF:
            raise Corrupted(f"the QED header size of {h['header_size']} clusters is invalid",
                            path)
        entries = ts * cs // 8
        size = h["image_size"]
        if size % SECTOR or size > entries * entries * cs:
            raise Corrupted(f"the QED image size {size} is not a multiple of 512 or larger "
                            f"than {ts}-cluster tables of {cs}-byte clusters can map", path)
        l1 = h["l1_table_offset"]
        if l1 % cs or l1 < header_bytes or l1 + ts * cs > file_size:
            raise Corrupted(f"the QED L1 table offset {l1:#x} is not cluster aligned, "
                            f"overlaps the header or lies beyond the end of the file", path)
        if h["features"] & FEATURE_BACKING_FILE:
            start, length = h["backing_filename_offset"], h["backing_filename_size"]
            if not 0 < length <= MAX_NAME or start < HEADER.size \
                    or start + length > min(header_bytes, file_size):
                raise Corrupted(f"the QED backing file name ({length} bytes at {start:#x}) is "
                                f"empty, too long or outside the header area", path)
        return h

    def _load(self) -> None:
        storage, path = self.storage, self.path
        h = self._h = self._parse_header(storage.read_at(0, HEADER.size), storage.size(), path)
        self._cluster = cs = h["cluster_size"]
        self._entries = h["table_size"] * cs // 8
        self._backing: str | None = None
        if h["features"] & FEATURE_BACKING_FILE:
            raw = storage.read_exact(h["backing_filename_offset"], h["backing_filename_size"],
                                     "QED backing file name")
            self._backing = os.fsdecode(raw)
        self._map_tables()
        if h["features"] & FEATURE_NEED_CHECK and self.read_only:
            log.info("%s was not closed cleanly (QED need-check flag set); reading it "
                     "without repairing it", path)

    @staticmethod
    def _layout(h: dict) -> TableLayout:
        """Where the header ``h`` puts the tables, and what their entries may hold."""
        cs, ts = h["cluster_size"], h["table_size"]
        entries = ts * cs // 8
        header_bytes = h["header_size"] * cs
        l1 = h["l1_table_offset"]
        return TableLayout(
            cluster_size=cs, l2_entries=entries, dtype="<u8", l1_offset=l1,
            l1_count=-(-h["image_size"] // (entries * cs)), l1_capacity=entries,
            l1_span=ts * cs, regions=(Region(0, header_bytes, "header"),),
            table_align=cs, data_align=cs, decode=_decode, origin=header_bytes,
            l1_align=cs, min_end=max(header_bytes, l1 + ts * cs), trunc=cs)

    def _map_tables(self) -> None:
        """Load the L1 entries that cover the disk and set up the block map."""
        self.tables = TwoLevelTable(self.storage, self._layout(self._h))
        self.map = BlockMap(self.storage, self._cluster, self._h["image_size"],
                            self.tables.lookup)

    def _start_writing(self) -> None:
        """Make a newly writable image consistent before anything is written."""
        h = self._h
        if h["autoclear_features"]:
            # No autoclear feature is defined: whatever set them is no longer in charge.
            h["autoclear_features"] = 0
            self._write_header()
            self.storage.flush()
        if h["features"] & FEATURE_NEED_CHECK:
            self._repair()

    def _repair(self) -> None:
        """qemu's open-time check, done as :meth:`check` does it, except that leaked
        space is left for a pack to give back."""
        found = [f.what for f in repair_open(type(self), self.storage)
                 if f.severity != LEAK and f.offset != HEADER.offset_of("features")]
        if found:
            log.warning("%s was not closed cleanly; the consistency check found: %s",
                        self.path, "; ".join(found))
        else:
            log.info("%s was not closed cleanly; the consistency check found no problems",
                     self.path)
        self._h = self._parse_header(self.storage.read_at(0, HEADER.size),
                                     self.storage.size(), self.path)
        self._map_tables()

    # -- check and repair --------------------------------------------------------------

    @classmethod
    def _inspect(cls, storage: Storage, plan: CheckPlan,
                 progress: Progress | None = None) -> None:
        """Findings and fixes for the QED image in ``storage``."""
        try:
            # The file's length is checked with the tables, where a cut can be mended.
            h = cls._parse_header(storage.read_at(0, HEADER.size), 1 << 63, storage.path)
        except VDError as exc:
            plan.add(ERROR, f"{exc.message}; the header cannot be rebuilt", 0)
            return
        layout = cls._layout(h)
        survey = survey_tables(storage, layout, progress)
        table_fixes(survey, plan, "marker" if h["features"] & FEATURE_BACKING_FILE else "free",
                    ENTRY_ZERO)
        leak_findings(plan, survey.ext, layout.origin, layout.cluster_size, survey.file_size,
                      layout.min_end, layout.trunc)
        fixed = dict(h)
        if h["features"] & FEATURE_NEED_CHECK:
            plan.add(WARNING, "the image was not closed cleanly (QED need-check flag set)",
                     HEADER.offset_of("features"), "clear the flag once the tables are "
                                                   "consistent")
            fixed["features"] &= ~FEATURE_NEED_CHECK
        if h["autoclear_features"]:
            plan.add(WARNING, f"unknown autoclear feature bits are set "
                              f"({h['autoclear_features']:#x})",
                     HEADER.offset_of("autoclear_features"), "clear them")
            fixed["autoclear_features"] = 0
        if fixed != h:
            header = HEADER.pack(fixed)
            plan.during.append(lambda target: target.write_at(0, header))

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list[Finding]:
        """``VDRepair`` for QED: the need-check consistency check, made complete.

        Finds entries pointing outside the file or into metadata, tables or clusters
        used twice, a file cut short, leaked clusters and a stale need-check flag.
        A repair clears unusable entries (zero clusters in a differencing image, so
        the backing file's older data stays hidden), gives each sharer of a cluster
        its own copy, extends a cut file, then packs the file to reclaim leaks.
        """
        return run_check(cls, io, path, repair, progress)

    # -- header ----------------------------------------------------------------------

    def _write_header(self) -> None:
        self.check_writable()
        self.storage.write_at(0, HEADER.pack(self._h))

    def _begin_update(self) -> None:
        """Set and flush need-check before the first metadata change of a session."""
        if not self._h["features"] & FEATURE_NEED_CHECK:
            self._h["features"] |= FEATURE_NEED_CHECK
            self._write_header()
            self.storage.flush()

    def _end_update(self) -> None:
        """Everything is on disk: the image is consistent again."""
        self.storage.flush()
        if self._h["features"] & FEATURE_NEED_CHECK:
            self._h["features"] &= ~FEATURE_NEED_CHECK
            self._write_header()
            self.storage.flush()

    # -- content ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._h["image_size"]

    @property
    def allocation_unit(self) -> int:
        return self._cluster

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Append the clusters (all-zero ones become zero clusters unless HONOR_ZEROES)."""
        self.check_writable()
        self._begin_update()
        cs = self._cluster
        first = offset // cs
        detect_zero = not self.open_flags & OpenFlags.HONOR_ZEROES
        for start, count, zero in unit_runs(data, cs, detect_zero):
            if zero:
                values = np.full(count, ENTRY_ZERO, dtype=np.uint64)
            else:
                at = self.tables.append(data[start * cs:(start + count) * cs], count * cs)
                values = at + np.arange(count, dtype=np.uint64) * np.uint64(cs)
            self.tables.set_entries(first + start, values)

    # -- releasing clusters, compaction, resizing --------------------------------------

    @property
    def can_mark_zero(self) -> bool:
        return True

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        self.check_writable()
        cs = self._cluster
        first, end = offset // cs, -(-min(offset + length, self.size) // cs)
        if end > first:
            self._begin_update()
            self.tables.release(first, end - first, ENTRY_ZERO if zero else 0)

    def pack(self, progress: Progress | None = None) -> None:
        """Move clusters and tables from the end into the holes, then cut the file."""
        self.check_writable()
        self._begin_update()
        self.tables.pack(self._move_l1, progress)
        self._map_tables()

    def _move_l1(self, offset: int) -> None:
        self._h["l1_table_offset"] = offset
        self._write_header()

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Grow up to what the L1 table can map (the table never moves), or shrink when
        nothing is stored past the new end."""
        self.check_writable()
        h, cs = self._h, self._cluster
        limit = self._entries * self._entries * cs
        if size <= 0 or size % SECTOR:
            raise InvalidSize(f"the size {size} is not a positive multiple of 512 bytes",
                              self.path)
        if size > limit:
            raise InvalidSize(f"this QED image holds at most {limit} bytes (asked for "
                              f"{size})", self.path)
        if size < h["image_size"]:
            self._shrink(size, progress)
        elif size > h["image_size"]:
            self.storage.flush()
            h["image_size"] = size
            self._write_header()
            self.storage.flush()
            self._map_tables()

    def _shrink(self, size: int, progress: Progress | None) -> None:
        cs, n = self._cluster, self._entries
        keep, old = -(-size // cs), -(-self.size // cs)
        for first in range(keep, old, 1 << 20):
            states, _ = self.tables.lookup(first, min(1 << 20, old - first))
            stored = np.flatnonzero(states == DATA)
            if stored.size:
                raise ShrinkNotSupported(f"data is stored beyond the new end (from offset "
                                         f"{(first + int(stored[0])) * cs}); shrinking "
                                         f"would lose it", self.path)
        tail = bytearray(min(keep * cs, self.size) - size)
        self.map.read_into(size, memoryview(tail))
        if not is_zero(tail):
            raise ShrinkNotSupported(f"the last cluster holds data after offset {size}; "
                                     f"shrinking would lose it", self.path)
        self._begin_update()
        l1 = self.tables.l1
        count = -(-size // (n * cs))
        dropped = bool(l1.entries[count:].any())
        with self.transaction():
            # Zero clusters past the end would come back if the disk grew again.
            self.tables.release(keep, min(count * n, old) - keep)
            l1.entries[count:] = 0
            l1.persist(count, len(l1) - count)
            self._h["image_size"] = size
            self._write_header()
        self._map_tables()
        if dropped:
            self.pack(progress)  # the tables past the end are free space now

    # -- metadata --------------------------------------------------------------------

    @property
    def image_flags(self) -> ImageFlags:
        return ImageFlags.DIFF if self._backing is not None else ImageFlags.NONE

    @property
    def parent_filename(self) -> str | None:
        return self._backing

    @property
    def parent_format(self) -> str | None:
        if self._backing is not None and self._h["features"] & FEATURE_BACKING_RAW:
            return "RAW"
        return None

    def _name_room(self) -> int:
        """Bytes the header area has for a backing file name."""
        return self._h["header_size"] * self._cluster - HEADER.size

    def check_parent(self, link: ParentLink | None) -> None:
        _backing(self.path, link, self._name_room())

    def set_parent(self, link: ParentLink | None) -> None:
        """Record a new backing file (merge, rebase), or none."""
        self.check_writable()
        h = self._h
        bits, name = _backing(self.path, link, self._name_room())
        h["features"] = h["features"] & ~(FEATURE_BACKING_FILE | FEATURE_BACKING_RAW) | bits
        h["backing_filename_offset"] = HEADER.size if name else 0
        h["backing_filename_size"] = len(name)
        with self.transaction():  # name and header change together or not at all
            self.storage.write_at(0, HEADER.pack(h) + name)
        self._backing = os.fsdecode(name) if name else None

    def describe(self) -> list[tuple[str, str]]:
        h = self._h
        names = [name for bit, name in ((FEATURE_BACKING_FILE, "backing file"),
                                        (FEATURE_NEED_CHECK, "need check"),
                                        (FEATURE_BACKING_RAW, "backing format raw"))
                 if h["features"] & bit]
        return [
            ("cluster size", str(h["cluster_size"])),
            ("table size", f"{h['table_size']} clusters ({self._entries} entries)"),
            ("header size", f"{h['header_size']} clusters"),
            ("features", f"{h['features']:#x} ({', '.join(names) or 'none'})"),
            ("compatible features", f"{h['compat_features']:#x}"),
            ("autoclear features", f"{h['autoclear_features']:#x}"),
            ("L1 table offset", f"{h['l1_table_offset']:#x}"),
            ("L1 entries used", str(len(self.tables.l1))),
            ("L2 tables", str(int(np.count_nonzero(self.tables.l1.entries)))),
            ("image size", str(h["image_size"])),
            ("backing file", repr(self._backing) if self._backing is not None else "none"),
        ]

    # -- lifetime --------------------------------------------------------------------

    def flush(self) -> None:
        if self.storage.writable:
            self._end_update()

    def _end_writing(self) -> None:
        self._end_update()

    # -- creation --------------------------------------------------------------------

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> QedImage:
        path, size = request.path, request.size
        validate_config(cls.info, request.config, path)
        if request.image_flags & ImageFlags.FIXED:
            raise InvalidType("QED images are always dynamically allocated", path)
        cs = config_int(request.config, "cluster_size", DEFAULT_CLUSTER, path)
        ts = config_int(request.config, "table_size", DEFAULT_TABLE_SIZE, path)
        if not _power_of_two(cs) or not MIN_CLUSTER <= cs <= MAX_CLUSTER:
            raise InvalidParameter(f"cluster_size {cs} must be a power of two between "
                                   f"4 KiB and 64 MiB", path)
        if not _power_of_two(ts) or ts > MAX_TABLE_SIZE:
            raise InvalidParameter(f"table_size {ts} must be a power of two between 1 and "
                                   f"{MAX_TABLE_SIZE}", path)
        entries = ts * cs // 8
        if size % SECTOR or size > entries * entries * cs:
            raise InvalidSize(f"a QED image with {cs}-byte clusters and {ts}-cluster tables "
                              f"holds at most {entries * entries * cs} bytes (asked for "
                              f"{size})", path)
        features, name = _backing(path, request.parent, cs - HEADER.size)
        header = HEADER.pack(dict(
            magic=MAGIC, cluster_size=cs, table_size=ts, header_size=1, features=features,
            compat_features=0, autoclear_features=0, l1_table_offset=cs, image_size=size,
            backing_filename_offset=HEADER.size if name else 0,
            backing_filename_size=len(name)))
        storage = io.open(path, create=True)
        try:
            storage.write_at(0, header + name)
            storage.set_size(cs + ts * cs)  # header cluster and an empty L1 table
            storage.flush()
        finally:
            storage.close()
        return cls.open(io, path, request.open_flags & ~OpenFlags.READONLY)
