"""Parallels expandable disk images (``.hdd`` / ``.hds``; qemu's docs/interop/parallels).

Little-endian.  A 64-byte header, then the block allocation table (BAT) of u32
entries, then data clusters.  The header's "tracks" field is the cluster size in
sectors.  Two signatures exist:

- ``WithoutFreeSpace`` (classic): BAT entries are sector numbers and the disk size
  is a 32-bit sector count.  VirtualBox reads only this one; qemu reads both.
- ``WithouFreSpacExt`` (extended, what qemu creates): BAT entries are cluster numbers.

BAT entry 0 means "not allocated": zeros, or what the image below holds when the
image is opened on top of another one in a container.  The format records no
parent, so this backend does not create differencing images (VirtualBox claims the
capability but its Parallels "diffs" cannot be reopened as a chain either); qemu,
too, supports backing files for Parallels only when given at run time.

The "in use" field is set while an image is open read/write and cleared on a clean
close.  A read-only open of an image left in use reads it and writes nothing; a
read/write open checks the BAT against the file first, as :meth:`ParallelsImage.check`
does (entries outside the file are cleared, shared clusters copied, space leaked
at the end is reused and trimmed) and logs what it found.  qemu 7.2 refuses such a
read/write open until ``qemu-img check -r`` has run.

Clusters are released by clearing their BAT entries (there is no zero marker); a
pack moves the last clusters into the holes and cuts the file short.  Growing the
disk grows the BAT, first moving the data clusters it would run into to the end
of the file; shrinking works when nothing is stored past the new end.
An optional format extension (dirty bitmaps) is dropped on a read/write open, as
qemu does, because this backend does not keep it up to date; an extension with a
"necessary" feature it does not know makes the image read-only.

New images are expanding images with 1 MiB clusters (option ``cluster_size``) and
the data area aligned to the cluster size.  Option ``format``: ``classic`` writes
the ``WithoutFreeSpace`` signature that both VirtualBox and qemu read (disks below
2 TiB), ``extended`` writes qemu's ``WithouFreSpacExt``, ``auto`` (the default)
picks classic when the disk fits.  Not supported: "plain" (raw data file) Parallels
disks and the ``DiskDescriptor.xml`` bundle directory; open the ``.hds`` file
inside a bundle directly.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import numpy as np

from ..blockmap import DATA, FREE, BlockMap, FlatTable, is_zero, unit_runs, zeros
from ..errors import (Corrupted, InvalidHeader, InvalidParameter, InvalidSize, InvalidType,
                      NotSupported, ShrinkNotSupported, VDError)
from ..findings import ERROR, Finding
from ..io import Storage, StorageProvider
from ..layout import Layout
from ..progress import Progress
from ..sizes import align_up
from ..types import (SECTOR, Capability, ConfigKey, ConfigKeyFlags, ConfigValueType, DiskType,
                     Geometry, ImageFlags, OpenFlags, Status)
from ._twolevel import (KIND_DATA, CheckPlan, Extents, Region, classify, copy_ranges,
                        leak_findings, move_extents, plan_moves, repair_open, run_check,
                        why_bad, write_value)
from .base import (BackendInfo, CreateRequest, MappedContent, SingleFileImage, config_int,
                   validate_config)

log = logging.getLogger(__name__)

MAGIC_CLASSIC = b"WithoutFreeSpace"
MAGIC_EXTENDED = b"WithouFreSpacExt"
VERSION = 2
INUSE = 0x746F6E59  # "Ynot"

DEFAULT_CLUSTER = 1 << 20
MAX_CLUSTER = 256 << 20
MAX_BAT_ENTRIES = 1 << 30  # VirtualBox's limit
U32 = 1 << 32

EXT_MAGIC = 0xAB234CEF23DCEA87
EXT_FEATURE_DIRTY_BITMAP = 0x20385FAE252CB34A
EXT_NECESSARY = 0x1
EXT_RECORD = struct.Struct("<QQII")

FORMATS = ("auto", "classic", "extended")

HEADER = Layout("Parallels header", "<", [
    ("magic", "16s"), ("version", "I"), ("heads", "I"), ("cylinders", "I"), ("tracks", "I"),
    ("bat_entries", "I"), ("nb_sectors", "Q"), ("inuse", "I"), ("data_off", "I"),
    ("flags", "I"), ("ext_off", "Q")])


def _invalid(message: str, path: str) -> InvalidHeader:
    return InvalidHeader(message, path, status="VERR_VD_PARALLELS_INVALID_HEADER")


def _cylinders(sectors: int, tracks: int) -> int:
    """qemu divides by 32 sectors per track; when the cluster is small enough to be a
    real sectors-per-track value (VirtualBox's 63), keep the geometry consistent."""
    return min(sectors // (16 * (tracks if tracks <= 63 else 32)), U32 - 1)


@dataclass(frozen=True)
class _Layout:
    """Where a Parallels header puts the BAT and the clusters."""

    cluster: int
    #: What a BAT entry counts: clusters (extended) or sectors (classic).
    unit: int
    count: int
    size: int
    data_start: int

    @property
    def bat_end(self) -> int:
        return HEADER.size + 4 * self.count

    @property
    def data_floor(self) -> int:
        """Clusters may not overlap the header or the BAT, whatever data_off says."""
        return max(self.data_start, self.bat_end)

    @property
    def origin(self) -> int:
        """Where the first cluster can go."""
        return align_up(self.data_floor, self.unit)

    @classmethod
    def of(cls, h: dict, path: str) -> _Layout:
        extended = h["magic"] == MAGIC_EXTENDED
        tracks, count = h["tracks"], h["bat_entries"]
        if tracks == 0 or tracks * SECTOR > MAX_CLUSTER:
            raise Corrupted(f"the Parallels cluster size of {tracks} sectors is 0 or larger "
                            f"than {MAX_CLUSTER >> 20} MiB", path)
        if count > MAX_BAT_ENTRIES:
            raise Corrupted(f"the Parallels BAT has {count} entries, more than "
                            f"{MAX_BAT_ENTRIES}", path)
        cs = tracks * SECTOR
        sectors = h["nb_sectors"] if extended else h["nb_sectors"] & 0xFFFFFFFF
        if sectors == 0:
            raise Corrupted("the Parallels header gives a disk size of 0", path)
        bat_end = HEADER.size + 4 * count
        data_start = h["data_off"] * SECTOR if h["data_off"] else align_up(bat_end, SECTOR)
        return cls(cs, cs if extended else SECTOR, count, sectors * SECTOR, data_start)


class ParallelsImage(MappedContent, SingleFileImage):
    """An opened Parallels expanding image."""

    info = BackendInfo(
        name="Parallels",
        description="Parallels expanding disk image",
        capabilities=(Capability.CREATE_DYNAMIC | Capability.FILE | Capability.ASYNC
                      | Capability.VFS | Capability.DISCARD),
        extensions=(("hdd", DiskType.HDD), ("hds", DiskType.HDD)),
        variants=("standard",),
        config_keys=(
            ConfigKey("cluster_size", str(DEFAULT_CLUSTER), ConfigValueType.INTEGER,
                      ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("format", "auto", ConfigValueType.STRING, ConfigKeyFlags.CREATE_ONLY),
        ),
        image_flags_mask=ImageFlags.NONE,
        stores=frozenset(),
    )

    # -- probing and opening ---------------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            cls._check_signature(storage.read_at(0, HEADER.size), path)
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("Parallels images are hard disks", path)
        return DiskType.HDD

    @staticmethod
    def _check_signature(raw: bytes, path: str) -> dict:
        if raw[:16] not in (MAGIC_CLASSIC, MAGIC_EXTENDED):
            raise _invalid("not a Parallels image (no WithoutFreeSpace or WithouFreSpacExt "
                           "signature)", path)
        h = HEADER.unpack(raw, 0, path)
        if h["version"] != VERSION:
            raise NotSupported(f"Parallels header version {h['version']} is not supported "
                               f"(only version {VERSION})", path)
        return h

    def _load(self) -> None:
        storage, path = self.storage, self.path
        h = self._h = self._check_signature(storage.read_at(0, HEADER.size), path)
        self._extended = h["magic"] == MAGIC_EXTENDED
        self._file_size = storage.size()
        self._map_bat(_Layout.of(h, path))
        self._trim = False  # set when a crash left leaked space at the end
        if h["inuse"] == INUSE and self.read_only:
            log.info("%s was not closed cleanly (Parallels in-use flag set); reading it "
                     "without repairing it", path)

    def _map_bat(self, layout: _Layout) -> None:
        """Load the BAT and set up the block map."""
        if layout.bat_end > self._file_size:
            raise Corrupted(f"the file is truncated: the Parallels BAT ({layout.count} "
                            f"entries) lies beyond its end", self.path)
        self._layout = layout
        self._cluster = layout.cluster
        self._unit = layout.unit
        self._size = layout.size
        self._data_floor = layout.data_floor
        self.bat = FlatTable(self.storage, HEADER.size, layout.count, "<u4", "Parallels BAT")
        self._compute_data_end()
        self.map = BlockMap(self.storage, layout.cluster, layout.size, self._lookup)

    # -- the BAT ---------------------------------------------------------------------

    def _offsets(self, entries: np.ndarray) -> np.ndarray:
        return entries.astype(np.int64) * self._unit

    def _bad(self, entries: np.ndarray) -> np.ndarray:
        offsets = self._offsets(entries)
        return (entries != 0) & ((offsets < self._data_floor) | (offsets >= self._file_size))

    def _why(self, offset: int) -> str:
        if offset < self._data_floor:
            return "overlaps the header or the BAT"
        return f"lies beyond the end of the file ({self._file_size} bytes)"

    def _compute_data_end(self) -> None:
        """The end of the last cluster in use: where the next cluster goes."""
        entries = self.bat.entries
        good = entries[(entries != 0) & ~self._bad(entries)]
        end = self._data_floor
        if good.size:
            end = max(end, int(good.max()) * self._unit + self._cluster)
        self._data_end = align_up(end, self._unit)

    def _lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        entries = self.bat.entries[first:first + count]
        if len(entries) < count:  # past the BAT: nothing stored
            entries = np.concatenate([entries, np.zeros(count - len(entries), np.uint32)])
        bad = self._bad(entries)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            offset = int(entries[i]) * self._unit
            raise Corrupted(f"BAT entry {first + i} points to file offset {offset:#x}, which "
                            f"{self._why(offset)}", self.path)
        states = np.where(entries == 0, FREE, DATA).astype(np.uint8)
        return states, self._offsets(entries)

    # -- sessions: the in-use flag ----------------------------------------------------

    def _write_header(self) -> None:
        self.check_writable()
        self.storage.write_at(0, HEADER.pack(self._h))

    def _start_writing(self) -> None:
        """Check an image left in use, drop a stale extension, mark the image in use."""
        h = self._h
        if h["ext_off"]:
            self._drop_extension()  # first: it may refuse to let anything be changed
        if h["inuse"] == INUSE:
            self._repair()
        else:
            # Bytes past the last cluster in use that were not left by a crash are not
            # ours to reuse or trim: allocate after them.
            self._data_end = max(self._data_end, align_up(self._file_size, self._unit))
        h["inuse"] = INUSE
        self._write_header()
        self.storage.flush()

    def _repair(self) -> None:
        """The check :meth:`check` makes, on opening an image left in use; space leaked
        at the end is reused and trimmed by the session rather than packed."""
        found = [f.what for f in repair_open(type(self), self.storage)
                 if f.offset != HEADER.offset_of("inuse")]
        self._file_size = self.storage.size()
        self._map_bat(self._layout)
        if self._file_size > self._data_end:
            self._trim = True
        log.warning("%s was not closed cleanly (Parallels in-use flag set); checked the BAT: "
                    "%s", self.path, "; ".join(found) or "no problems")

    def _drop_extension(self) -> None:
        """Refuse unknown necessary features; otherwise forget the extension cluster."""
        h = self._h
        offset = h["ext_off"] * SECTOR
        length = max(0, min(self._cluster, self._file_size - offset))
        raw = self.storage.read_at(offset, length) if length else b""
        if len(raw) >= 24 and int.from_bytes(raw[:8], "little") == EXT_MAGIC:
            pos = 24
            while pos + EXT_RECORD.size <= len(raw):
                magic, flags, size, _ = EXT_RECORD.unpack_from(raw, pos)
                if magic == 0:
                    break
                if flags & EXT_NECESSARY and magic != EXT_FEATURE_DIRTY_BITMAP:
                    raise NotSupported(f"the image's format extension holds a necessary "
                                       f"feature this program does not know ({magic:#x}); "
                                       f"open it read-only", self.path)
                pos += EXT_RECORD.size + align_up(size, 8)
        log.info("%s: dropping the Parallels format extension (dirty bitmaps), which "
                 "this program does not keep up to date", self.path)
        h["ext_off"] = 0

    def _end_writing(self) -> None:
        """Clean close of a session: trim space a crash leaked, clear the in-use flag."""
        self.storage.flush()
        if self._trim and self.storage.size() > self._data_end:
            self.storage.set_size(self._data_end)
            self._file_size = self._data_end
        self._trim = False
        self._h["inuse"] = 0  # what qemu writes on close
        self._write_header()
        self.storage.flush()

    # -- content ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        mapped = len(self.bat) * self._cluster
        if offset >= mapped:
            # Past a BAT shorter than the disk nothing is stored: one answer for it all
            # (a 64-bit sector count can make that tail astronomically long).
            return Status.FREE, length
        return self.map.block_status(offset, min(length, mapped - offset))

    @property
    def allocation_unit(self) -> int:
        return self._cluster

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Append whole clusters (data first, then their BAT entries)."""
        self.check_writable()
        cs = self._cluster
        first, count = offset // cs, len(data) // cs
        if first + count > len(self.bat):
            raise Corrupted(f"guest offset {(first + count) * cs - 1} lies beyond the "
                            f"Parallels BAT ({len(self.bat)} entries)", self.path)
        for start, run, zero in unit_runs(data, cs, True):
            at = self._data_end
            if (at + (run - 1) * cs) // self._unit >= U32:
                raise NotSupported("the image file would grow beyond what its BAT entries "
                                   "can address (2 TiB for WithoutFreeSpace images)",
                                   self.path)
            if zero and self.storage.size() <= at:
                self.storage.set_size(at + run * cs)  # zeros without writing them
            else:
                self.storage.write_at(at, zeros(run * cs) if zero
                                      else data[start * cs:(start + run) * cs])
            self._data_end = at + run * cs
            self._file_size = max(self._file_size, self._data_end)
            block = first + start
            self.bat.entries[block:block + run] = (
                at + np.arange(run, dtype=np.int64) * cs) // self._unit
            self.bat.persist(block, run)

    # -- releasing clusters, compaction, resizing --------------------------------------

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        self.check_writable()
        if zero:
            raise NotSupported("Parallels images have no zero marker", self.path)
        cs = self._cluster
        first = offset // cs
        end = min(-(-min(offset + length, self._size) // cs), len(self.bat))
        if end > first:
            self.bat.entries[first:end] = 0
            self.bat.persist(first, end - first)

    def _regions(self) -> list[Region]:
        return [Region(0, self._data_floor, "header or the BAT")]

    def _extents(self) -> Extents:
        """Every cluster the BAT points at; Corrupted when the BAT is damaged."""
        entries = self.bat.entries
        index = np.flatnonzero(entries)
        ext = Extents.of(entries[index].astype(np.int64) * self._unit, self._cluster,
                         self._unit, KIND_DATA, index)
        found = classify(ext.start, ext.length, self._unit, self._file_size, self._regions(),
                         may_cut=False)
        if (found.bad | found.loser).any():
            raise Corrupted("the BAT is damaged (entries outside the file or into the "
                            "header, or clusters used twice); repair it first (vdimg "
                            "repair)", self.path)
        return ext

    def _set_entries(self, index: np.ndarray, offsets: np.ndarray) -> None:
        """Point BAT entries at new offsets, writing each sector of the BAT once."""
        self.bat.entries[index] = offsets // self._unit
        per_sector = SECTOR // 4
        for sector in np.unique(index // per_sector).tolist():
            self.bat.persist(sector * per_sector, per_sector)

    def _move_clusters(self, ext: Extents, rounds: list, progress: Progress | None) -> None:
        move_extents(self.storage, ext, rounds,
                     lambda idx, dst: self._set_entries(ext.ref[idx], dst), progress)

    def pack(self, progress: Progress | None = None) -> None:
        """Move the last clusters into the holes, then cut the file after the last one."""
        self.check_writable()
        ext = self._extents()
        rounds, _ = plan_moves(ext, self._layout.origin, self._cluster)
        self._move_clusters(ext, rounds, progress)
        end = align_up(ext.last_end(self._layout.data_start), SECTOR)
        self.storage.flush()
        if self.storage.size() > end:
            self.storage.set_size(end)
        self._trim = False
        self._remap(self._layout)

    def _remap(self, layout: _Layout) -> None:
        """Reload the BAT after the file or the layout changed."""
        self._file_size = self.storage.size()
        self._map_bat(layout)
        if not self._trim:
            self._data_end = max(self._data_end, align_up(self._file_size, self._unit))

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Grow (moving the clusters the larger BAT runs into to the end of the file),
        or shrink when nothing is stored past the new end."""
        self.check_writable()
        cs = self._cluster
        count = -(-size // cs)
        if size <= 0 or size % SECTOR or count > MAX_BAT_ENTRIES \
                or not self._extended and size // SECTOR >= U32:
            raise InvalidSize(f"this Parallels image cannot hold {size} bytes (a "
                              f"WithoutFreeSpace image stays below 2 TiB, and the BAT holds "
                              f"at most {MAX_BAT_ENTRIES} clusters)", self.path)
        if size < self._size:
            beyond = np.flatnonzero(self.bat.entries[count:])
            if beyond.size:
                raise ShrinkNotSupported(f"data is stored beyond the new end (from offset "
                                         f"{(count + int(beyond[0])) * cs}); shrinking "
                                         f"would lose it", self.path)
            tail = bytearray(min(count * cs, self._size) - size)
            self.map.read_into(size, memoryview(tail))
            if not is_zero(tail):
                raise ShrinkNotSupported(f"the last cluster holds data after offset {size}; "
                                         f"shrinking would lose it", self.path)
            self._set_size(size, count, self._layout.data_start)
        elif size > self._size:
            self._grow(size, count, progress)

    def _grow(self, size: int, count: int, progress: Progress | None) -> None:
        h, layout, cs = self._h, self._layout, self._cluster
        bat_end = HEADER.size + 4 * count
        data_start = layout.data_start
        if not h["data_off"]:
            data_start = align_up(bat_end, SECTOR)  # implied: right after the BAT
        elif bat_end > data_start:
            # Keep the clusters aligned as they were.
            data_start = align_up(bat_end, cs if data_start % cs == 0 else SECTOR)
        if data_start // SECTOR >= U32:
            raise InvalidSize(f"a Parallels BAT for {size} bytes does not fit in front of "
                              f"the data", self.path)
        entries = self.bat.entries
        offsets = entries.astype(np.int64) * self._unit
        in_way = np.flatnonzero((entries != 0) & (offsets < max(data_start, bat_end)))
        if in_way.size:
            # Copied to the end first, then repointed: a crash leaves them where they were.
            ext = Extents.of(offsets[in_way], cs, self._unit, KIND_DATA, in_way)
            at = align_up(max(self._data_end, data_start), self._unit)
            if not self._extended and (at + in_way.size * cs) // SECTOR >= U32:
                raise NotSupported("the clusters in the way of the larger BAT cannot be "
                                   "moved within what a WithoutFreeSpace image addresses",
                                   self.path)
            self._move_clusters(ext, [(np.arange(in_way.size),
                                       at + np.arange(in_way.size, dtype=np.int64) * cs)],
                                progress)
            self._file_size = self.storage.size()
            self._compute_data_end()
        # The new entries lie in padding or where the moved clusters were: unused now.
        for pos in range(layout.bat_end, bat_end, 16 << 20):
            self.storage.write_at(pos, zeros(min(16 << 20, bat_end - pos)))
        if self.storage.size() < data_start:
            self.storage.set_size(data_start)
        self.storage.flush()
        if h["data_off"]:
            h["data_off"] = data_start // SECTOR
        self._set_size(size, count, data_start)

    def _set_size(self, size: int, count: int, data_start: int) -> None:
        h = self._h
        h.update(bat_entries=count, nb_sectors=size // SECTOR,
                 cylinders=_cylinders(size // SECTOR, h["tracks"]))
        with self.transaction():
            self._write_header()
        self._remap(_Layout(self._cluster, self._unit, count, size, data_start))

    # -- check and repair --------------------------------------------------------------

    @classmethod
    def _inspect(cls, storage: Storage, plan: CheckPlan,
                 progress: Progress | None = None) -> None:
        """Findings and fixes for the Parallels image in ``storage``."""
        path = storage.path
        try:
            h = cls._check_signature(storage.read_at(0, HEADER.size), path)
            layout = _Layout.of(h, path)
        except VDError as exc:
            plan.add(ERROR, f"{exc.message}; the header cannot be rebuilt", 0)
            return
        file_size = storage.size()
        cs, unit = layout.cluster, layout.unit
        fixed = dict(h)
        if h["inuse"] == INUSE:
            plan.add(ERROR, "the image was not closed cleanly (in-use flag set)",
                     HEADER.offset_of("inuse"), "clear the flag")
            fixed["inuse"] = 0
        regions = [Region(0, layout.data_floor, "header or the BAT")]
        if h["ext_off"]:
            at = h["ext_off"] * SECTOR
            if at < layout.data_floor or at + cs > file_size:
                plan.add(ERROR, f"the format extension at file offset {at:#x} overlaps the BAT "
                                f"or lies beyond the end of the file",
                         HEADER.offset_of("ext_off"), "drop the extension")
                fixed["ext_off"] = 0
            else:
                regions.append(Region(at, at + cs, "format extension"))
        raw = storage.read_at(HEADER.size, 4 * layout.count)
        entries = np.frombuffer(raw.ljust(4 * layout.count, b"\0"), dtype="<u4")
        index = np.flatnonzero(entries)
        start = entries[index].astype(np.int64) * unit
        lengths = np.full(index.size, cs, dtype=np.int64)
        found = classify(start, lengths, unit, file_size, regions)
        for i in np.flatnonzero(found.bad).tolist():
            plan.add(ERROR, f"BAT entry {index[i]} points to file offset {start[i]:#x}, which "
                            f"{why_bad(int(start[i]), cs, unit, file_size, regions)}",
                     HEADER.size + 4 * int(index[i]), "clear the entry (the cluster then "
                                                      "reads as zeros)",
                     kind="BAT entries point outside the file or into the header")
            plan.during.append(write_value(HEADER.size + 4 * int(index[i]), 0, "<u4"))
        need = max([layout.data_start] + (start[found.cut] + cs).tolist())
        if need > file_size:
            plan.add(ERROR, f"the file is cut short: it ends at {file_size}, inside the BAT "
                            f"or a cluster", file_size,
                     "extend the file with zeros to its full length")
            plan.before.append(lambda target: target.set_size(max(target.size(), need)))
        tail = align_up(max(file_size, need), unit)
        copies = []
        for i in np.flatnonzero(found.loser).tolist():
            other = index[found.winner[i]]
            plan.add(ERROR, f"BAT entry {index[i]} uses the cluster at file offset "
                            f"{start[i]:#x}, which BAT entry {other} uses too",
                     HEADER.size + 4 * int(index[i]), "give it a copy of its own",
                     kind="clusters are used by more than one BAT entry")
            copies.append((int(start[i]), tail))
            plan.during.append(write_value(HEADER.size + 4 * int(index[i]), tail // unit,
                                           "<u4"))
            tail += cs
        if copies:
            src, dst = (np.array(c, dtype=np.int64) for c in zip(*copies))
            plan.before.append(lambda target: copy_ranges(target, src, dst,
                                                          np.full(src.size, cs, np.int64)))
        good = ~found.bad
        leak_findings(plan, Extents.of(start[good], cs, unit, KIND_DATA, index[good]),
                      layout.origin, cs, file_size, layout.data_start, SECTOR)
        if fixed != h:
            header = HEADER.pack(fixed)
            plan.during.append(lambda target: target.write_at(0, header))

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list[Finding]:
        """``VDRepair`` for Parallels: BAT entries outside the file or into the header,
        clusters used twice, a file cut short, leaked clusters, a stale in-use flag and
        a broken format extension.  A repair clears unusable entries, gives each
        sharer of a cluster its own copy, extends a cut file, clears the flag, then
        packs the file to reclaim leaks."""
        return run_check(cls, io, path, repair, progress)

    # -- metadata --------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._h["version"]

    @property
    def pchs(self) -> Geometry:
        h = self._h
        # "tracks" doubles as the cluster size: only small values are a real geometry.
        if h["cylinders"] and 0 < h["heads"] <= 16 and 0 < h["tracks"] <= 63:
            return Geometry(h["cylinders"], h["heads"], h["tracks"])
        return super().pchs

    @pchs.setter
    def pchs(self, value: Geometry) -> None:
        raise NotSupported("a Parallels image's sectors-per-track field is its cluster size; "
                           "its geometry cannot be changed", self.path)

    def describe(self) -> list[tuple[str, str]]:
        h = self._h
        inuse = {INUSE: "in use (Ynot)", 0: "closed"}.get(h["inuse"], f"{h['inuse']:#x}")
        allocated = int(np.count_nonzero(self.bat.entries))
        return [
            ("signature", h["magic"].decode("ascii")),
            ("version", str(h["version"])),
            ("geometry", f"{h['cylinders']}/{h['heads']}/{h['tracks']}"),
            ("cluster size", f"{self._cluster} ({h['tracks']} sectors)"),
            ("BAT entries", f"{h['bat_entries']} ({'clusters' if self._extended else 'sectors'})"),
            ("allocated clusters", str(allocated)),
            ("disk size", f"{self._size} ({h['nb_sectors']} sectors)"),
            ("in use", inuse),
            ("data offset", f"{h['data_off']} sectors"),
            ("flags", f"{h['flags']:#x}"),
            ("format extension", f"sector {h['ext_off']}" if h["ext_off"] else "none"),
        ]

    # -- lifetime --------------------------------------------------------------------

    # -- creation --------------------------------------------------------------------

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> ParallelsImage:
        path, size = request.path, request.size
        validate_config(cls.info, request.config, path)
        if request.image_flags & ImageFlags.FIXED:
            raise InvalidType("Parallels images can only be created expanding (use RAW for "
                              "a fixed disk)", path)
        if request.parent is not None:
            raise NotSupported("a Parallels image cannot record a parent image; use QED, "
                               "QCOW or VDI for differencing images", path)
        cs = config_int(request.config, "cluster_size", DEFAULT_CLUSTER, path)
        fmt = {k.lower(): v for k, v in request.config.items()}.get("format", "auto").lower()
        if cs <= 0 or cs % SECTOR or cs > MAX_CLUSTER:
            raise InvalidParameter(f"cluster_size {cs} must be a multiple of 512 bytes of "
                                   f"at most {MAX_CLUSTER >> 20} MiB", path)
        if fmt not in FORMATS:
            raise InvalidParameter(f"format={fmt!r}: use {', '.join(FORMATS)}", path)
        if size % SECTOR:
            raise InvalidSize(f"the size {size} is not a multiple of 512 bytes", path)
        count = -(-size // cs)
        if count > MAX_BAT_ENTRIES:
            raise InvalidSize(f"a Parallels image with {cs}-byte clusters holds at most "
                              f"{MAX_BAT_ENTRIES * cs} bytes (choose a larger cluster_size)",
                              path)
        data_start = align_up(HEADER.size + 4 * count, cs)
        sectors = size // SECTOR
        fits_classic = sectors < U32 and (data_start + count * cs) // SECTOR < U32
        if fmt == "auto":
            fmt = "classic" if fits_classic else "extended"
        if fmt == "classic" and not fits_classic:
            raise InvalidSize("a WithoutFreeSpace (classic) Parallels image must be smaller "
                              "than 2 TiB; use format=extended", path)
        tracks = cs // SECTOR
        header = HEADER.pack(dict(
            magic=MAGIC_CLASSIC if fmt == "classic" else MAGIC_EXTENDED, version=VERSION,
            heads=16, cylinders=_cylinders(sectors, tracks), tracks=tracks,
            bat_entries=count, nb_sectors=sectors, inuse=0, data_off=data_start // SECTOR,
            flags=0, ext_off=0))
        storage = io.open(path, create=True)
        try:
            storage.write_at(0, header)
            storage.set_size(data_start)  # the BAT reads as zeros: nothing allocated
            storage.flush()
        finally:
            storage.close()
        return cls.open(io, path, request.open_flags & ~OpenFlags.READONLY)
