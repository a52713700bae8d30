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
read/write open checks the BAT against the file first (entries outside the file
are cleared, space leaked at the end is reused and trimmed) and logs what it found.
qemu 7.2 refuses such a read/write open until ``qemu-img check -r`` has run.
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
from typing import Mapping

import numpy as np

from ..blockmap import DATA, FREE, BlockMap, FlatTable, unit_runs, zeros
from ..errors import (Corrupted, InvalidHeader, InvalidParameter, InvalidSize, InvalidType,
                      NotSupported)
from ..io import StorageProvider
from ..layout import Layout
from ..sizes import align_up
from ..types import (SECTOR, Capability, ConfigKey, ConfigKeyFlags, ConfigValueType, DiskType,
                     Geometry, ImageFlags, OpenFlags, Status)
from .base import BackendInfo, CreateRequest, SingleFileImage, config_int, validate_config

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


class ParallelsImage(SingleFileImage):
    """An opened Parallels expanding image."""

    info = BackendInfo(
        name="Parallels",
        description="Parallels expanding disk image",
        capabilities=(Capability.CREATE_DYNAMIC | Capability.FILE | Capability.ASYNC
                      | Capability.VFS),
        extensions=(("hdd", DiskType.HDD), ("hds", DiskType.HDD)),
        variants=("standard",),
        config_keys=(
            ConfigKey("cluster_size", str(DEFAULT_CLUSTER), ConfigValueType.INTEGER,
                      ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("format", "auto", ConfigValueType.STRING, ConfigKeyFlags.CREATE_ONLY),
        ),
        image_flags_mask=ImageFlags.NONE,
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

    @classmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags,
             disk_type: DiskType = DiskType.HDD,
             config: Mapping[str, str] | None = None) -> ParallelsImage:
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("Parallels images are hard disks", path)
        image = cls(io, path, flags)
        try:
            image._load()
        except BaseException:
            image.storage.close()
            raise
        return image

    def _load(self) -> None:
        storage, path = self.storage, self.path
        h = self._h = self._check_signature(storage.read_at(0, HEADER.size), path)
        self._extended = h["magic"] == MAGIC_EXTENDED
        tracks, count = h["tracks"], h["bat_entries"]
        if tracks == 0 or tracks * SECTOR > MAX_CLUSTER:
            raise Corrupted(f"the Parallels cluster size of {tracks} sectors is 0 or larger "
                            f"than {MAX_CLUSTER >> 20} MiB", path)
        self._cluster = cs = tracks * SECTOR
        if count > MAX_BAT_ENTRIES:
            raise Corrupted(f"the Parallels BAT has {count} entries, more than "
                            f"{MAX_BAT_ENTRIES}", path)
        self._file_size = storage.size()
        bat_end = HEADER.size + 4 * count
        if bat_end > self._file_size:
            raise Corrupted(f"the file is truncated: the Parallels BAT ({count} entries) "
                            f"lies beyond its end", path)
        sectors = h["nb_sectors"] if self._extended else h["nb_sectors"] & 0xFFFFFFFF
        self._size = sectors * SECTOR
        if self._size == 0:
            raise Corrupted("the Parallels header gives a disk size of 0", path)
        self._unit = cs if self._extended else SECTOR  # what a BAT entry counts
        data_start = h["data_off"] * SECTOR if h["data_off"] else align_up(bat_end, SECTOR)
        # Clusters may not overlap the header or the BAT, whatever data_off says.
        self._data_floor = max(data_start, bat_end)
        self.bat = FlatTable(storage, HEADER.size, count, "<u4", "Parallels BAT")
        self._compute_data_end()
        self._trim = False  # set when a crash left leaked space at the end
        self.map = BlockMap(storage, cs, self._size, self._lookup)
        if h["inuse"] == INUSE and self.read_only:
            log.info("%s was not closed cleanly (Parallels in-use flag set); reading it "
                     "without repairing it", path)
        if not self.read_only:
            self._start_writing()

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
        entries = self.bat.entries
        bad = np.flatnonzero(self._bad(entries))
        found = [f"BAT entry {i} pointed to file offset {int(entries[i]) * self._unit:#x}, "
                 f"which {self._why(int(entries[i]) * self._unit)}" for i in bad[:10].tolist()]
        if bad.size > 10:
            found.append(f"... {bad.size - 10} more such entries")
        if bad.size:
            entries[bad] = 0
            self.bat.persist_all()
        used = entries[entries != 0]
        shared = len(used) - len(np.unique(used))
        if shared:
            found.append(f"{shared} cluster(s) are referenced by more than one BAT entry")
        if self._file_size > self._data_end:
            found.append(f"{self._file_size - self._data_end} bytes after the last cluster "
                         f"in use are leaked (they will be reused and trimmed)")
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
        return self.map.block_status(offset, length)

    def read_into(self, offset: int, buf: memoryview) -> None:
        self.map.read_into(offset, buf)

    def write(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        self.map.write(offset, data)

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

    def close(self) -> None:
        try:
            if self.storage.writable:
                self._end_writing()
        finally:
            super().close()

    def set_open_flags(self, flags: OpenFlags) -> None:
        was_writable = self.storage.writable
        if was_writable and flags & OpenFlags.READONLY:
            self._end_writing()
        super().set_open_flags(flags)
        if self.storage.writable and not was_writable:
            try:
                self._start_writing()
            except BaseException:
                super().set_open_flags(flags | OpenFlags.READONLY)
                raise

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
        # qemu divides by 32 sectors per track; when the cluster is small enough to be a
        # real sectors-per-track value (VirtualBox's 63), keep the geometry consistent.
        cylinders = sectors // (16 * (tracks if tracks <= 63 else 32))
        header = HEADER.pack(dict(
            magic=MAGIC_CLASSIC if fmt == "classic" else MAGIC_EXTENDED, version=VERSION,
            heads=16, cylinders=min(cylinders, U32 - 1), tracks=tracks,
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
