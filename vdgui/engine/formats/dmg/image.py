"""The DMG backend: reading Apple UDIF disk images.

Read-only, as in VirtualBox and qemu: a read/write open is turned into a read-only
one (like an optical RAW image), so writes fail with ``VERR_VD_IMAGE_READ_ONLY``
and the file is never modified.

Device type: VirtualBox probes DMG files as optical discs, and its open ignores the
container's type.  We do the same for probing (``dvd``), and also accept an HDD
container explicitly — many DMGs are images of Mac hard disks and qemu reads them
as such — but refuse floppies.  The virtual size is the trailer's sector count,
as in qemu.

Zero-fill and ignore chunks (and gaps between chunks) report ZERO, every other
chunk DATA.  Raw chunks are read in place; compressed chunks are decoded whole
(bounded to their declared size) and kept in a small LRU cache so that sequential
reads decode each chunk once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from ...blockmap import fill_zero
from ...errors import Corrupted, InvalidParameter, InvalidType, NotSupported
from ...io import StorageProvider
from ...types import SECTOR, Capability, DiskType, ImageFlags, OpenFlags, Status
from ..base import BackendInfo, SingleFileImage
from . import trailer
from .chunks import RAW, TYPE_NAMES, ZERO_FILL, build_map, type_name
from .decompress import ChunkError, ChunkUnsupported, decode
from .plist import entries_from_resource_fork, entries_from_xml, read_metadata

#: Decoded chunks kept per image (the most recent one is always kept).
CACHE_BYTES = 32 << 20

#: Block tables listed one by one in ``describe()``.
MAX_DESCRIBED_TABLES = 64


class _ChunkCache:
    """Decoded chunks by extent number, least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._items: OrderedDict[int, bytes] = OrderedDict()

    def get(self, key: int) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: int, data: bytes) -> None:
        self._items[key] = data
        self.bytes += len(data)
        while self.bytes > self.limit and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.bytes -= len(old)


def _device_type(wanted: DiskType, path: str) -> DiskType:
    if wanted in (DiskType.INVALID, DiskType.DVD):
        return DiskType.DVD
    if wanted == DiskType.HDD:
        return DiskType.HDD
    raise InvalidType("DMG images are disc or hard disk images, not floppies", path)


class DmgImage(SingleFileImage):
    """An opened DMG (UDIF) image."""

    info = BackendInfo(
        name="DMG",
        description="Apple disk image (UDIF), read-only",
        capabilities=Capability.FILE | Capability.VFS,
        extensions=(("dmg", DiskType.DVD),),
        image_flags_mask=ImageFlags.NONE,
    )

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            trailer.read_trailer(storage, path)
        return _device_type(disk_type, path)

    @classmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags,
             disk_type: DiskType = DiskType.DVD,
             config: Mapping[str, str] | None = None) -> DmgImage:
        image = cls(io, path, flags | OpenFlags.READONLY, _device_type(disk_type, path))
        try:
            image._load()
        except BaseException:
            image.storage.close()
            raise
        return image

    def _load(self) -> None:
        storage, path = self.storage, self.path
        fields, trailer_offset = trailer.read_trailer(storage, path)
        if fields["xml_length"]:
            self._source = "XML property list"
            raw = read_metadata(storage, fields["xml_offset"], fields["xml_length"],
                                self._source)
            entries = entries_from_xml(raw, path)
        else:
            self._source = "resource fork"
            raw = read_metadata(storage, fields["rsrc_fork_offset"],
                                fields["rsrc_fork_length"], self._source)
            entries = entries_from_resource_fork(raw, path)
        self._trailer = fields
        self._tables, self._map = build_map(entries, fields["data_fork_offset"],
                                            trailer_offset, fields["sector_count"], path)
        self._size = fields["sector_count"] * SECTOR
        self._cache = _ChunkCache(CACHE_BYTES)

    def set_open_flags(self, flags: OpenFlags) -> None:
        """DMG images stay read-only whatever is asked."""
        super().set_open_flags(flags | OpenFlags.READONLY)

    # -- content ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        chunks = self._map
        i = chunks.index(offset // SECTOR)
        stop = min(int(chunks.run_ends[i]) * SECTOR, offset + length, self._size)
        return (Status.DATA if chunks.data[i] else Status.ZERO), stop - offset

    def read_into(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        if offset < 0 or end > self._size:
            raise InvalidParameter(f"a read of {len(buf)} bytes at {offset} is outside the "
                                   f"{self._size}-byte disk", self.path)
        chunks = self._map
        pos = offset
        i = chunks.index(pos // SECTOR)
        while pos < end:
            start = int(chunks.starts[i]) * SECTOR
            stop = min(int(chunks.ends[i]) * SECTOR, end)
            kind = int(chunks.kinds[i])
            if kind == ZERO_FILL:
                fill_zero(buf, pos - offset, stop - offset)
            elif kind == RAW:
                view = buf[pos - offset:stop - offset]
                where = int(chunks.offsets[i]) + pos - start
                got = self.storage.readinto_at(where, view)
                if got != len(view):
                    raise Corrupted(f"the data of virtual offset {pos + got} should be at file "
                                    f"offset {where + got}, beyond the end of the file",
                                    self.path)
            else:
                data = memoryview(self._decoded(i))
                buf[pos - offset:stop - offset] = data[pos - start:stop - start]
            pos = stop
            i += 1

    def _decoded(self, i: int) -> bytes:
        """The content of compressed extent ``i``, from the cache or decoded now."""
        data = self._cache.get(i)
        if data is not None:
            return data
        chunks = self._map
        kind = int(chunks.kinds[i])
        first, end = int(chunks.starts[i]), int(chunks.ends[i])
        what = f"the {TYPE_NAMES.get(kind, 'unknown')} chunk at sectors {first}-{end - 1}"
        payload = self.storage.read_exact(int(chunks.offsets[i]), int(chunks.lengths[i]), what)
        try:
            data = decode(kind, payload, (end - first) * SECTOR)
        except ChunkError as exc:
            raise Corrupted(f"{what} is damaged: {exc}", self.path) from None
        except ChunkUnsupported as exc:
            raise NotSupported(f"cannot read sectors {first}-{end - 1}: {exc}",
                               self.path) from None
        self._cache.put(i, data)
        return data

    # -- metadata --------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._trailer["version"]

    def describe(self) -> list[tuple[str, str]]:
        counts = ", ".join(f"{TYPE_NAMES.get(kind) or type_name(kind)}: {n}"
                           for kind, n in sorted(self._map.type_counts.items()))
        lines = [("device type", self.disk_type.label), ("disk size", f"{self._size} bytes"),
                 *trailer.describe(self._trailer),
                 ("block tables from", self._source),
                 ("blkx entries", str(len(self._tables))),
                 ("chunks by type", counts or "none")]
        for n, table in enumerate(self._tables[:MAX_DESCRIBED_TABLES]):
            h, entry = table.header, table.entry
            lines.append((f"blkx {n}", f"{entry.name!r} (ID {entry.ident or '-'}): sectors "
                                       f"{h['first_sector']}+{h['sector_count']}, data offset "
                                       f"{h['data_offset']:#x}, {table.chunks} chunks"))
        if len(self._tables) > MAX_DESCRIBED_TABLES:
            lines.append(("more blkx entries", str(len(self._tables) - MAX_DESCRIBED_TABLES)))
        return lines
