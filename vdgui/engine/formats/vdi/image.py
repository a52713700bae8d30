"""VDI: VirtualBox Disk Image.

Little-endian.  A 72-byte pre-header (text, signature 0xBEDA107F, version), a
header (version 0 legacy, 1.1 with 384 or 400 bytes), a block map of 32-bit entries
(0xFFFFFFFF free, 0xFFFFFFFE zero, else the index of a physical block) and the
blocks.  New images are laid out as VirtualBox lays them out: a 400-byte header,
the block map and the data each aligned to 1 MiB.
"""

from __future__ import annotations

import uuid as uuidlib

import numpy as np

from ...blockmap import DATA, FREE, ZERO, BlockMap, FlatTable, unit_runs, zeros
from ...errors import (
    Corrupted,
    InvalidParameter,
    InvalidSize,
    InvalidType,
    NotSupported,
    ShrinkNotSupported,
)
from ...io import Storage, StorageProvider
from ...layout import c_string
from ...progress import Progress, report
from ...sizes import align_up
from ...types import (
    NIL_UUID,
    SECTOR,
    Capability,
    ConfigKey,
    ConfigKeyFlags,
    ConfigValueType,
    DiskType,
    Geometry,
    ImageFlags,
    OpenFlags,
)
from ..base import (
    BackendInfo,
    CreateRequest,
    MappedContent,
    ParentLink,
    SingleFileImage,
    config_int,
    validate_config,
)
from .layout import (
    BLOCK_FREE,
    BLOCK_ZERO,
    COMMENT_SIZE,
    DEFAULT_ALIGNMENT,
    DEFAULT_BLOCK_SIZE,
    HEADER_FLAG_ZERO_EXPAND,
    HEADER_V0,
    HEADER_V1,
    HEADER_V1_SIZE,
    HEADER_V1PLUS_SIZE,
    LCHS,
    LCHS_OFFSET,
    MAX_SIZE,
    MIN_SIZE,
    PRE_HEADER,
    PRE_HEADER_SIZE,
    PRE_HEADER_TEXT,
    SIGNATURE,
    TYPE_DIFF,
    TYPE_FIXED,
    TYPE_NAMES,
    TYPE_NORMAL,
    TYPE_UNDO,
    VERSION_0,
    VERSION_1_1,
    guid,
    invalid_header,
)

#: Bytes of blocks a compaction moves per batch (each batch costs three flushes:
#: the copies, the journal, the block map).
PACK_BATCH = 1 << 30


class VdiImage(MappedContent, SingleFileImage):
    """An opened VDI image."""

    info = BackendInfo(
        name="VDI",
        description="VirtualBox Disk Image",
        capabilities=(Capability.UUID | Capability.CREATE_FIXED | Capability.CREATE_DYNAMIC
                      | Capability.DIFF | Capability.FILE | Capability.ASYNC | Capability.VFS
                      | Capability.DISCARD | Capability.PREFERRED),
        extensions=(("vdi", DiskType.HDD),),
        variants=("standard", "fixed", "zero-expand"),
        config_keys=(
            ConfigKey("AllocationBlockSize", str(DEFAULT_BLOCK_SIZE), ConfigValueType.INTEGER,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("DataAlignment", str(DEFAULT_ALIGNMENT), ConfigValueType.INTEGER,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
        ),
        image_flags_mask=ImageFlags.FIXED | ImageFlags.DIFF | ImageFlags.VDI_ZERO_EXPAND,
        stores=frozenset({"uuid", "modification_uuid", "parent_uuid",
                          "parent_modification_uuid", "comment", "lchs"}),
        max_size=MAX_SIZE - 1,
    )

    # -- probing and opening ---------------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            cls._read_pre_header(storage.read_at(0, PRE_HEADER_SIZE), path)
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("VDI images are hard disks", path)
        return DiskType.HDD

    @staticmethod
    def _read_pre_header(raw: bytes, path: str) -> int:
        if len(raw) < PRE_HEADER_SIZE:
            raise invalid_header("not a VDI image (the file is too short)", path)
        pre = PRE_HEADER.unpack(raw)
        if pre["signature"] != SIGNATURE:
            raise invalid_header("not a VDI image (no VDI signature)", path)
        version = pre["version"]
        if version >> 16 != 1 and version != VERSION_0:
            raise NotSupported(f"VDI version {version >> 16}.{version & 0xFFFF} is not "
                               f"supported", path, status="VERR_VD_VDI_UNSUPPORTED_VERSION")
        return version

    def _load(self) -> None:
        storage, path = self.storage, self.path
        self._version = self._read_pre_header(storage.read_at(0, PRE_HEADER_SIZE), path)
        self._header_raw = bytearray(storage.read_at(0, PRE_HEADER_SIZE + HEADER_V1PLUS_SIZE))
        if self._version == VERSION_0:
            self._load_v0()
        else:
            self._load_v1()
        self._validate()
        self.table = FlatTable(storage, self._blocks_offset, self._blocks, "<u4", "VDI block map")
        self._check_table()
        self.map = BlockMap(storage, self._block_size, self._disk_size, self._lookup)

    def _load_v1(self) -> None:
        h = HEADER_V1.unpack(self._header_raw, PRE_HEADER_SIZE, self.path)
        if h["header_size"] < HEADER_V1_SIZE:
            raise Corrupted(f"the VDI header is too small ({h['header_size']} bytes)", self.path)
        self._h = h
        self._header_size = h["header_size"]
        self._blocks_offset = h["blocks_offset"]
        self._data_offset = h["data_offset"]
        self._block_extra = h["block_extra"]
        self._lchs_stored = False
        self._lchs = Geometry()
        if self._header_size >= HEADER_V1PLUS_SIZE:
            g = LCHS.unpack(self._header_raw, LCHS_OFFSET, self.path)
            self._lchs_stored = True
            self._lchs = Geometry(g["cylinders"], g["heads"], g["sectors"])
        self._parent_mod_uuid = guid(h["parent_modification_uuid"])

    def _load_v0(self) -> None:
        h = HEADER_V0.unpack(self._header_raw, PRE_HEADER_SIZE, self.path)
        self._h = h
        self._header_size = HEADER_V0.size
        self._blocks_offset = PRE_HEADER_SIZE + HEADER_V0.size
        self._data_offset = self._blocks_offset + 4 * h["blocks"]
        self._block_extra = 0
        self._lchs_stored = False
        self._lchs = Geometry()
        self._parent_mod_uuid = NIL_UUID
        if not self.read_only:
            raise InvalidParameter("version 0 VDI images can only be opened read-only; "
                                   "convert the image to update it", self.path)

    def _validate(self) -> None:
        h, path = self._h, self.path
        self._type = h["type"]
        if self._type not in TYPE_NAMES:
            raise Corrupted(f"unknown VDI image type {self._type}", path)
        self._flags = h["flags"]
        self._comment = c_string(h["comment"])
        self._disk_size = h["disk_size"]
        self._block_size = h["block_size"]
        self._blocks = h["blocks"]
        self._allocated = h["blocks_allocated"]
        self._uuid = guid(h["uuid"])
        self._mod_uuid = guid(h["modification_uuid"])
        self._parent_uuid = guid(h["parent_uuid"])
        bs = self._block_size
        if self._disk_size == 0:
            raise Corrupted("the VDI header gives a disk size of 0", path)
        if bs == 0 or bs & (bs - 1) or bs < SECTOR:
            raise Corrupted(f"the VDI block size {bs} is not a power of two of at least 512",
                            path)
        extra = self._block_extra
        if extra and (extra & (extra - 1) or extra % SECTOR):
            raise Corrupted(f"the VDI extra block data size {extra} is invalid", path)
        if self._blocks * bs < self._disk_size:
            raise Corrupted(f"{self._blocks} blocks of {bs} bytes cannot hold a disk of "
                            f"{self._disk_size} bytes", path)
        if self._allocated > self._blocks:
            raise Corrupted(f"the header says {self._allocated} blocks are allocated but the "
                            f"disk has only {self._blocks}", path)
        if self._blocks_offset < PRE_HEADER_SIZE + min(self._header_size, HEADER_V1_SIZE):
            raise Corrupted("the VDI block map overlaps the header", path)
        if self._data_offset < self._blocks_offset + 4 * self._blocks:
            raise Corrupted("the VDI data area overlaps the block map", path)
        if self._uuid == NIL_UUID:
            raise Corrupted("the VDI image UUID is empty", path)

    def _check_table(self) -> None:
        """Refuse to write an image whose block map would make writes lose data."""
        entries = self.table.entries
        used = entries[entries < BLOCK_ZERO]
        bad = np.flatnonzero((entries < BLOCK_ZERO) & (entries >= self._allocated))
        self._damaged = bool(bad.size) or len(np.unique(used)) != len(used)
        if self._damaged and not self.read_only:
            detail = (f"block {int(bad[0])} points to physical block {int(entries[bad[0]])} "
                      f"but only {self._allocated} are allocated" if bad.size
                      else "two blocks share one physical block")
            raise Corrupted(f"the VDI block map is damaged ({detail}); it can be read but "
                            f"not written until repaired (vdimg repair)", self.path)

    # -- the block map ---------------------------------------------------------------

    def _slot_offset(self, index: int | np.ndarray) -> int | np.ndarray:
        return self._data_offset + index * (self._block_size + self._block_extra) + \
            self._block_extra

    def _lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        entries = self.table.entries[first:first + count]
        states = np.where(entries == BLOCK_FREE, FREE,
                          np.where(entries == BLOCK_ZERO, ZERO, DATA)).astype(np.uint8)
        offsets = self._slot_offset(entries.astype(np.int64))
        return states, offsets

    # -- geometry of the virtual disk ------------------------------------------------

    @property
    def size(self) -> int:
        return self._disk_size

    @property
    def allocation_unit(self) -> int:
        return self._block_size

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Append new blocks (or mark all-zero ones as zero blocks)."""
        self.check_writable()
        bs = self._block_size
        first = offset // bs
        detect_zero = not self.open_flags & OpenFlags.HONOR_ZEROES
        for start, count, zero in unit_runs(data, bs, detect_zero):
            block = first + start
            if zero:
                self.table.entries[block:block + count] = BLOCK_ZERO
            else:
                self._append(block, data[start * bs:(start + count) * bs])
            self.table.persist(block, count)

    def _append(self, block: int, data: memoryview) -> None:
        """Write blocks at the end of the data area; the map entry is set last."""
        bs, extra = self._block_size, self._block_extra
        count = len(data) // bs
        index = self._allocated
        if extra:
            for i in range(count):
                self.storage.write_at(self._slot_offset(index + i) - extra,
                                      zeros(extra) + data[i * bs:(i + 1) * bs].tobytes())
        else:
            if self._flags & HEADER_FLAG_ZERO_EXPAND:
                self.storage.allocate(self._slot_offset(index), count * bs)
            self.storage.write_at(self._slot_offset(index), data)
        # Crash order: data, then the allocated count, then the map entries.  A crash
        # in between leaks a block at the end but never lets two entries share one.
        self._allocated += count
        self._write_header()
        self.table.entries[block:block + count] = np.arange(index, index + count,
                                                            dtype=np.uint32)

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list:
        """``VDRepair`` for VDI (see :mod:`.check`)."""
        from .check import check
        return check(io, path, repair, progress)

    # -- releasing blocks, compaction, resizing ----------------------------------------

    @property
    def can_mark_zero(self) -> bool:
        return True

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        self.check_writable()
        bs = self._block_size
        first, end = offset // bs, -(-min(offset + length, self._disk_size) // bs)
        self.table.entries[first:end] = BLOCK_ZERO if zero else BLOCK_FREE
        self.table.persist(first, end - first)

    @property
    def _slot(self) -> int:
        return self._block_size + self._block_extra

    def _owners(self) -> np.ndarray:
        """For each physical block, the virtual block using it (-1: a hole)."""
        entries = self.table.entries
        used = np.flatnonzero(entries < BLOCK_ZERO)
        owner = np.full(self._allocated, -1, dtype=np.int64)
        owner[entries[used].astype(np.int64)] = used
        return owner

    def _copy_slot(self, source: int, target: int) -> None:
        self.storage.copy_to(self._slot_offset(source) - self._block_extra, self._slot,
                             self.storage, self._slot_offset(target) - self._block_extra,
                             "a data block")

    def pack(self, progress: Progress | None = None) -> None:
        """Fill holes with the last blocks, then cut the file after the last one.

        Each batch copies data into holes first and only then repoints the map (in
        one transaction), so an interruption leaves every block readable.
        """
        self.check_writable()
        owner = self._owners()
        holes = np.flatnonzero(owner < 0).tolist()
        used = np.flatnonzero(owner >= 0).tolist()
        moves = []
        while holes and used and holes[0] < used[-1]:
            moves.append((used.pop(), holes.pop(0)))
        batch = max(1, PACK_BATCH // self._slot)
        for done in range(0, len(moves), batch):
            report(progress, done, len(moves), "moving blocks")
            part = moves[done:done + batch]
            for source, target in part:
                self._copy_slot(source, target)
            self.storage.flush()
            with self.storage.transaction():
                blocks = owner[[source for source, _ in part]]
                self.table.entries[blocks] = [target for _, target in part]
                self.table.persist_entries(blocks)
        keep = len(used) + len(moves)
        with self.storage.transaction():
            self._allocated = keep
            self._write_header()
            self.storage.set_size(self._data_offset + keep * self._slot)
        report(progress, len(moves), len(moves), "moving blocks")

    def resize(self, size: int, progress: Progress | None = None) -> None:
        self.check_writable()
        if self._version == VERSION_0:
            raise self._unsupported("a new size in version 0 images (convert it first)")
        if not MIN_SIZE <= size < MAX_SIZE:
            raise InvalidSize(f"a VDI image must be at least 1 MiB and smaller than "
                              f"4 PiB - 3 MiB (asked for {size} bytes)", self.path)
        if size < self._disk_size:
            self._shrink(size)
        elif size > self._disk_size:
            self._grow(size, progress)

    def _shrink(self, size: int) -> None:
        bs = self._block_size
        keep = -(-size // bs)
        entries = self.table.entries
        beyond = np.flatnonzero(entries[keep:] < BLOCK_ZERO)
        if self._type == TYPE_FIXED:
            raise ShrinkNotSupported("a fixed VDI image cannot be shrunk (convert it to a "
                                     "dynamic one first)", self.path)
        if beyond.size:
            raise ShrinkNotSupported(f"data is stored beyond the new end (from offset "
                                     f"{(keep + int(beyond[0])) * bs}); shrinking would "
                                     f"lose it", self.path)
        if size % bs and entries[keep - 1] < BLOCK_ZERO:
            tail = bytearray(min(keep * bs, self._disk_size) - size)
            self.map.read_into(size, memoryview(tail))
            if any(tail):
                raise ShrinkNotSupported(f"the last block holds data after offset {size}; "
                                         f"shrinking would lose it", self.path)
        with self.storage.transaction():
            self._disk_size, self._blocks = size, keep
            self._write_header()
        self.table.entries = entries[:keep].copy()
        self.map.size = size

    def _grow(self, size: int, progress: Progress | None) -> None:
        bs, slot = self._block_size, self._slot
        old_blocks = self._blocks
        blocks = -(-size // bs)
        fixed = self._type == TYPE_FIXED
        entries = np.concatenate([self.table.entries,
                                  np.full(blocks - old_blocks, BLOCK_FREE, dtype="<u4")])
        shift = max(0, -(-(self._blocks_offset + 4 * blocks - self._data_offset) // slot))
        allocated = self._allocated
        if shift:
            # The map must grow into the data area: move the first blocks to the end.
            owner = self._owners()
            for physical in range(min(shift, allocated)):
                report(progress, physical, shift, "making room for the block map")
                if owner[physical] >= 0:
                    self._copy_slot(physical, allocated)
                    entries[owner[physical]] = allocated
                    allocated += 1
            self.storage.flush()
            used = entries < BLOCK_ZERO
            entries[used] -= np.uint32(shift)
            allocated -= shift
        if fixed:
            start = self._data_offset + shift * slot + allocated * slot
            try:
                self._reserve(start, (blocks - old_blocks) * slot, progress)
            except BaseException:
                self.storage.set_size(start)  # give back what was reserved
                raise
            entries[old_blocks:] = np.arange(allocated, allocated + blocks - old_blocks,
                                             dtype=np.uint32)
            allocated += blocks - old_blocks
        with self.storage.transaction():
            self.table.entries = entries
            self.table.persist_all()
            self._disk_size, self._blocks, self._allocated = size, blocks, allocated
            self._data_offset += shift * slot
            self._write_header()
        self.map.size = size

    def _reserve(self, start: int, length: int, progress: Progress | None) -> None:
        step = 64 << 20
        for pos in range(0, length, step):
            report(progress, pos, length, "allocating")
            self.storage.allocate(start + pos, min(step, length - pos))

    # -- header ----------------------------------------------------------------------

    def _header_bytes(self) -> bytes:
        h = dict(self._h)
        h.update(
            type=self._type, flags=self._flags, blocks=self._blocks,
            data_offset=self._data_offset,
            comment=self._comment.encode("utf-8")[:COMMENT_SIZE - 1].ljust(COMMENT_SIZE, b"\0"),
            disk_size=self._disk_size, blocks_allocated=self._allocated,
            uuid=self._uuid.bytes_le, modification_uuid=self._mod_uuid.bytes_le,
            parent_uuid=self._parent_uuid.bytes_le)
        if self._version == VERSION_0:
            return HEADER_V0.pack(h)
        h["parent_modification_uuid"] = self._parent_mod_uuid.bytes_le
        raw = HEADER_V1.pack(h)
        if self._lchs_stored:
            g = self._lchs
            raw += LCHS.pack(dict(cylinders=g.cylinders, heads=g.heads, sectors=g.sectors,
                                  sector_size=SECTOR))
        return raw

    def _write_header(self) -> None:
        self.check_writable()
        self.storage.write_at(PRE_HEADER_SIZE, self._header_bytes())

    def _set_field(self, name: str, value: object) -> None:
        self.check_writable()
        old = getattr(self, name)
        setattr(self, name, value)
        try:
            self._write_header()
        except BaseException:
            setattr(self, name, old)
            raise

    # -- metadata ----------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    @property
    def image_flags(self) -> ImageFlags:
        flags = ImageFlags.NONE
        if self._type == TYPE_FIXED:
            flags |= ImageFlags.FIXED
        if self._type in (TYPE_DIFF, TYPE_UNDO):
            flags |= ImageFlags.DIFF
        if self._flags & HEADER_FLAG_ZERO_EXPAND:
            flags |= ImageFlags.VDI_ZERO_EXPAND
        return flags

    @property
    def uuid(self) -> uuidlib.UUID:
        return self._uuid

    @uuid.setter
    def uuid(self, value: uuidlib.UUID) -> None:
        if value == NIL_UUID:
            raise InvalidParameter("a VDI image UUID cannot be empty", self.path)
        self._set_field("_uuid", value)

    @property
    def modification_uuid(self) -> uuidlib.UUID:
        return self._mod_uuid

    @modification_uuid.setter
    def modification_uuid(self, value: uuidlib.UUID) -> None:
        self._set_field("_mod_uuid", value)

    @property
    def parent_uuid(self) -> uuidlib.UUID:
        return self._parent_uuid

    @parent_uuid.setter
    def parent_uuid(self, value: uuidlib.UUID) -> None:
        self._set_field("_parent_uuid", value)

    @property
    def parent_modification_uuid(self) -> uuidlib.UUID:
        return self._parent_mod_uuid

    @parent_modification_uuid.setter
    def parent_modification_uuid(self, value: uuidlib.UUID) -> None:
        if self._version == VERSION_0:
            raise self._unsupported("a parent modification UUID in version 0 headers")
        self._set_field("_parent_mod_uuid", value)

    def set_parent(self, link: ParentLink | None) -> None:
        self.check_writable()
        # The image type says base or differencing; it must follow the link.
        self._type = (TYPE_DIFF if link else
                      TYPE_NORMAL if self._type in (TYPE_DIFF, TYPE_UNDO) else self._type)
        self._parent_uuid = (link.uuid if link and link.uuid else NIL_UUID)
        if self._version != VERSION_0:
            self._parent_mod_uuid = (link.modification_uuid
                                     if link and link.modification_uuid else NIL_UUID)
        self._write_header()

    @property
    def comment(self) -> str:
        return self._comment

    @comment.setter
    def comment(self, value: str) -> None:
        if len(value.encode("utf-8")) >= COMMENT_SIZE:
            raise InvalidParameter(f"a VDI comment holds at most {COMMENT_SIZE - 1} bytes",
                                   self.path)
        self._set_field("_comment", value)

    @property
    def lchs(self) -> Geometry:
        if not self._lchs_stored or not self._lchs.is_set:
            return super().lchs
        return self._lchs

    @lchs.setter
    def lchs(self, value: Geometry) -> None:
        if not self._lchs_stored:
            if self._blocks_offset < LCHS_OFFSET + LCHS.size:
                raise self._unsupported("a logical geometry in this old header layout")
            # The 384-byte header can grow to 400 bytes: the block map starts later.
            self.check_writable()
            self._lchs_stored = True
            self._header_size = HEADER_V1PLUS_SIZE
            self._h["header_size"] = HEADER_V1PLUS_SIZE
        self._set_field("_lchs", value)

    # -- lifetime --------------------------------------------------------------------

    # Every header change is written when it is made, so flush and close have no
    # metadata of their own to write (and a close without changes changes nothing).

    def describe(self) -> list[tuple[str, str]]:
        h = self._h
        return [
            ("version", f"{self._version >> 16}.{self._version & 0xFFFF}"),
            ("header size", str(self._header_size)),
            ("image type", f"{self._type} ({TYPE_NAMES.get(self._type, '?')})"),
            ("header flags", f"{self._flags:#x}"),
            ("comment", repr(self._comment)),
            ("block map offset", f"{self._blocks_offset:#x}"),
            ("data offset", f"{self._data_offset:#x}"),
            ("legacy geometry", f"{h['legacy_cylinders']}/{h['legacy_heads']}/"
                                f"{h['legacy_sectors']} ({h['legacy_sector_size']}-byte sectors)"),
            ("logical geometry", str(self._lchs) if self._lchs_stored else "not stored"),
            ("disk size", str(self._disk_size)),
            ("block size", str(self._block_size)),
            ("extra block data", str(self._block_extra)),
            ("blocks", str(self._blocks)),
            ("blocks allocated", str(self._allocated)),
            ("zero blocks", str(int(np.count_nonzero(self.table.entries == BLOCK_ZERO)))),
            ("UUID", str(self._uuid)),
            ("modification UUID", str(self._mod_uuid)),
            ("parent UUID", str(self._parent_uuid)),
            ("parent modification UUID", str(self._parent_mod_uuid)),
        ]

    # -- creation --------------------------------------------------------------------

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> VdiImage:
        path, size = request.path, request.size
        validate_config(cls.info, request.config, path)
        block_size = config_int(request.config, "AllocationBlockSize", DEFAULT_BLOCK_SIZE, path)
        alignment = config_int(request.config, "DataAlignment", DEFAULT_ALIGNMENT, path)
        if block_size < SECTOR or block_size & (block_size - 1) or block_size > 1 << 31:
            raise InvalidParameter(f"AllocationBlockSize {block_size} must be a power of two "
                                   f"between 512 bytes and 2 GiB", path)
        if alignment < SECTOR or alignment & (alignment - 1) or alignment > 1 << 30:
            raise InvalidParameter(f"DataAlignment {alignment} must be a power of two "
                                   f"between 512 bytes and 1 GiB", path)
        if not MIN_SIZE <= size < MAX_SIZE:
            raise InvalidSize(f"a VDI image must be at least 1 MiB and smaller than "
                              f"4 PiB - 3 MiB (asked for {size} bytes)", path)
        flags = request.image_flags
        fixed = bool(flags & ImageFlags.FIXED)
        diff = request.parent is not None
        blocks = -(-size // block_size)
        blocks_offset = align_up(PRE_HEADER_SIZE + HEADER_V1PLUS_SIZE, alignment)
        data_offset = align_up(blocks_offset + 4 * blocks, alignment)
        if data_offset > 0xFFFFFFFF:
            raise InvalidSize("the block map would not fit in a VDI header's 32-bit offsets; "
                              "choose a larger AllocationBlockSize", path)
        parent = request.parent
        lchs = request.lchs
        header = dict(
            header_size=HEADER_V1PLUS_SIZE,
            type=TYPE_DIFF if diff else TYPE_FIXED if fixed else TYPE_NORMAL,
            flags=HEADER_FLAG_ZERO_EXPAND if flags & ImageFlags.VDI_ZERO_EXPAND else 0,
            comment=b"", blocks_offset=blocks_offset, data_offset=data_offset,
            legacy_cylinders=0, legacy_heads=0, legacy_sectors=0, legacy_sector_size=SECTOR,
            unused=0, disk_size=size, block_size=block_size, block_extra=0,
            blocks=blocks, blocks_allocated=blocks if fixed else 0,
            uuid=request.uuid.bytes_le, modification_uuid=uuidlib.uuid4().bytes_le,
            parent_uuid=(parent.uuid or NIL_UUID).bytes_le if parent else NIL_UUID.bytes_le,
            parent_modification_uuid=(parent.modification_uuid or NIL_UUID).bytes_le
            if parent else NIL_UUID.bytes_le)
        comment = (request.comment or "").encode("utf-8")
        if len(comment) >= COMMENT_SIZE:
            raise InvalidParameter(f"a VDI comment holds at most {COMMENT_SIZE - 1} bytes "
                                   f"(VERR_VD_VDI_COMMENT_TOO_LONG)", path)
        header["comment"] = comment.ljust(COMMENT_SIZE, b"\0")
        pre = PRE_HEADER.pack(dict(text=PRE_HEADER_TEXT.ljust(64, b"\0"),
                                   signature=SIGNATURE, version=VERSION_1_1))
        geometry = LCHS.pack(dict(cylinders=lchs.cylinders, heads=lchs.heads,
                                  sectors=lchs.sectors, sector_size=SECTOR))
        table = (np.arange(blocks, dtype="<u4") if fixed
                 else np.full(blocks, BLOCK_FREE, dtype="<u4")).tobytes()

        storage = io.open(path, create=True)
        try:
            storage.write_at(0, pre + HEADER_V1.pack(header) + geometry)
            storage.write_at(blocks_offset, table)
            end = data_offset + (blocks * block_size if fixed else 0)
            if fixed:
                cls._preallocate(storage, data_offset, blocks * block_size, request)
            if storage.size() < end:
                storage.set_size(end)
            storage.flush()
        finally:
            storage.close()
        return cls.open(io, path, request.open_flags & ~OpenFlags.READONLY)

    @staticmethod
    def _preallocate(storage: Storage, start: int, length: int, request: CreateRequest) -> None:
        """Reserve the data area of a fixed image, reporting progress."""
        step = 64 << 20
        for pos in range(0, length, step):
            report(request.progress, pos, length, "allocating")
            storage.allocate(start + pos, min(step, length - pos))
        report(request.progress, length, length, "allocating")

