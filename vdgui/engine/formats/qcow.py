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

New images have 4 KiB clusters and one-cluster L2 tables (512 entries), as qemu
and VirtualBox create base images (option ``cluster_size``: 512 bytes to 64 KiB;
L2 tables are one cluster but at least 4 KiB).  qemu itself makes differencing
images with 512-byte clusters; this backend keeps 4 KiB unless told otherwise.
The backing file format is not recorded: readers probe it.
"""

from __future__ import annotations

import os
import zlib
from typing import Iterator, Mapping

import numpy as np

from ..blockmap import DATA, FREE, BlockMap, unit_runs
from ..errors import Corrupted, InvalidHeader, InvalidParameter, InvalidSize, InvalidType, \
    NotSupported
from ..io import StorageProvider
from ..layout import Layout
from ..sizes import align_up
from ..types import (SECTOR, Capability, ConfigKey, ConfigKeyFlags, ConfigValueType, DiskType,
                     ImageFlags, OpenFlags, Status)
from ._twolevel import Region, TwoLevelTable
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
                      | Capability.ASYNC | Capability.VFS),
        extensions=(("qcow", DiskType.HDD),),
        variants=("standard",),
        config_keys=(ConfigKey("cluster_size", str(DEFAULT_CLUSTER), ConfigValueType.INTEGER,
                               ConfigKeyFlags.CREATE_ONLY),),
        image_flags_mask=ImageFlags.DIFF,
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

    @classmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags,
             disk_type: DiskType = DiskType.HDD,
             config: Mapping[str, str] | None = None) -> QcowImage:
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("QCOW images are hard disks", path)
        image = cls(io, path, flags)
        try:
            image._load()
        except BaseException:
            image.storage.close()
            raise
        return image

    def _load(self) -> None:
        storage, path = self.storage, self.path
        h = self._h = self._parse_header(storage.read_at(0, HEADER.size), storage.size(), path)
        self._bits = cb = h["cluster_bits"]
        self._cluster = cs = 1 << cb
        entries = 1 << h["l2_bits"]
        # qemu counts whole sectors only.
        self._size = h["size"] // SECTOR * SECTOR
        reserved = [Region(0, HEADER.size, "header")]
        self._backing: str | None = None
        if h["backing_file_offset"]:
            start, length = h["backing_file_offset"], h["backing_file_size"]
            self._backing = os.fsdecode(storage.read_exact(start, length,
                                                           "QCOW backing file name"))
            reserved.append(Region(start, start + length, "backing file name"))
        l1_offset = h["l1_table_offset"]
        l1_count = -(-h["size"] // (entries * cs))
        reserved.append(Region(l1_offset, l1_offset + 8 * l1_count, "L1 table"))
        self._meta_end = max(r.end for r in reserved)
        self.tables = TwoLevelTable(
            storage, cluster_size=cs, l2_entries=entries, dtype=">u8", l1_offset=l1_offset,
            l1_count=l1_count, reserved=reserved, table_align=SECTOR, data_align=SECTOR,
            decode=_decode)
        self.map = BlockMap(storage, cs, self._size, self.tables.lookup)

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
        if length == 0 or start < self._meta_end or start + length > self.tables.file_size:
            raise Corrupted(f"{where} lies outside the file or overlaps the header", self.path)
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
        h = self._h
        name = os.fsencode(relative_parent_path(self.path, link.path)) if link else b""
        # Only qemu's layout (name at 48, L1 right after it) has room known to be free.
        qemu_layout = h["backing_file_offset"] in (0, HEADER.size) and \
            h["l1_table_offset"] <= align_up(HEADER.size + MAX_BACKING_NAME, 8)
        room = h["l1_table_offset"] - HEADER.size if qemu_layout else 0
        if len(name) > min(room, MAX_BACKING_NAME):
            raise NotSupported(f"the new backing file name ({len(name)} bytes) does not fit "
                               f"in the {room} bytes a QCOW version 1 image has for it",
                               self.path)
        return name

    def check_parent(self, link: ParentLink | None) -> None:
        self._backing_name(link)

    def set_parent(self, link: ParentLink | None) -> None:
        """Record a new backing file (merge, rebase), or none.

        The name lives between the header and the L1 table, which never moves: a new
        name must fit in the room the old one left (qemu cannot change it at all).
        """
        self.check_writable()
        h = self._h
        name = self._backing_name(link)
        h["backing_file_offset"] = HEADER.size if name else 0
        h["backing_file_size"] = len(name)
        with self.transaction():  # name and header change together or not at all
            self.storage.write_at(0, HEADER.pack(h) + name)
        self._backing = os.fsdecode(name) if name else None

    def describe(self) -> list[tuple[str, str]]:
        h = self._h
        return [
            ("version", str(h["version"])),
            ("disk size", str(h["size"])),
            ("cluster size", f"{self._cluster} (cluster_bits {h['cluster_bits']})"),
            ("L2 table entries", f"{1 << h['l2_bits']} (l2_bits {h['l2_bits']})"),
            ("L1 table offset", f"{h['l1_table_offset']:#x}"),
            ("L1 entries", str(len(self.tables.l1))),
            ("L2 tables", str(sum(1 for _ in self.tables.tables()))),
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
