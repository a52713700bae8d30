"""The VHDX metadata region: its table and the system metadata items.

The region starts with a 64 KiB table (``metadata`` signature, entry count,
32-byte entries naming each item by GUID with its offset in the region, length and
flags).  Items: file parameters (block size, LeaveBlockAllocated, HasParent),
virtual disk size, page 83 data (the virtual disk id), logical and physical
sector size, and for differencing images the parent locator, a list of UTF-16LE
key/value pairs (MS-VHDX section 2.6).
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass, field

from ...errors import Corrupted, NotSupported
from ...io import Storage
from ...layout import Layout
from .headers import KiB, MiB, guid

SIGNATURE = b"metadata"
TABLE_SIZE = 64 * KiB
MAX_ENTRIES = 2047
#: MS-VHDX limits each metadata item to 1 MiB.
MAX_ITEM = 1 * MiB
ITEM_AREA_START = TABLE_SIZE

FILE_PARAMETERS = uuidlib.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuidlib.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_DATA = uuidlib.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = uuidlib.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = uuidlib.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = uuidlib.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")

ITEM_NAMES = {
    FILE_PARAMETERS: "file parameters", VIRTUAL_DISK_SIZE: "virtual disk size",
    PAGE83_DATA: "page 83 data", LOGICAL_SECTOR_SIZE: "logical sector size",
    PHYSICAL_SECTOR_SIZE: "physical sector size", PARENT_LOCATOR: "parent locator",
}

#: The only parent locator type MS-VHDX defines: a VHDX parent.
VHDX_LOCATOR_TYPE = uuidlib.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
LOCATOR_KEYS = ("parent_linkage", "parent_linkage2", "relative_path", "volume_path",
                "absolute_win32_path")

FLAG_USER = 0x1
FLAG_VIRTUAL_DISK = 0x2
FLAG_REQUIRED = 0x4

FILE_LEAVE_BLOCKS_ALLOCATED = 0x1
FILE_HAS_PARENT = 0x2

MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 256 * MiB
#: MS-VHDX caps the virtual disk at 64 TiB.
MAX_DISK_SIZE = 64 << 40
SECTOR_SIZES = (512, 4096)

TABLE_HEADER = Layout("VHDX metadata table header", "<", [
    ("signature", "8s"), ("reserved", "H"), ("entry_count", "H"), ("reserved2", "20s")])

TABLE_ENTRY = Layout("VHDX metadata table entry", "<", [
    ("guid", "16s"), ("offset", "I"), ("length", "I"), ("flags", "I"), ("reserved", "I")])

LOCATOR_HEADER = Layout("VHDX parent locator header", "<", [
    ("locator_type", "16s"), ("reserved", "H"), ("count", "H")])

LOCATOR_ENTRY = Layout("VHDX parent locator entry", "<", [
    ("key_offset", "I"), ("value_offset", "I"), ("key_length", "H"), ("value_length", "H")])

#: Item flags as written at creation (and by qemu-img).
ITEM_FLAGS = {
    FILE_PARAMETERS: FLAG_REQUIRED,
    VIRTUAL_DISK_SIZE: FLAG_VIRTUAL_DISK | FLAG_REQUIRED,
    PAGE83_DATA: FLAG_VIRTUAL_DISK | FLAG_REQUIRED,
    LOGICAL_SECTOR_SIZE: FLAG_VIRTUAL_DISK | FLAG_REQUIRED,
    PHYSICAL_SECTOR_SIZE: FLAG_VIRTUAL_DISK | FLAG_REQUIRED,
    PARENT_LOCATOR: FLAG_REQUIRED,
}


@dataclass
class ParentLocator:
    """A parent locator: its type and key/value pairs in stored order."""

    locator_type: uuidlib.UUID
    entries: dict[str, str] = field(default_factory=dict)

    def pack(self) -> bytes:
        header = LOCATOR_HEADER.pack(dict(locator_type=self.locator_type.bytes_le,
                                          reserved=0, count=len(self.entries)))
        table = b""
        strings = b""
        pos = LOCATOR_HEADER.size + LOCATOR_ENTRY.size * len(self.entries)
        for key, value in self.entries.items():
            k = key.encode("utf-16-le")
            v = value.encode("utf-16-le")
            if len(k) > 0xFFFF or len(v) > 0xFFFF:
                raise NotSupported(f"the parent locator value of {key} is too long")
            table += LOCATOR_ENTRY.pack(dict(key_offset=pos, value_offset=pos + len(k),
                                             key_length=len(k), value_length=len(v)))
            strings += k + v
            pos += len(k) + len(v)
        return header + table + strings

    @classmethod
    def parse(cls, raw: bytes, path: str) -> ParentLocator:
        h = LOCATOR_HEADER.unpack(raw, 0, path)
        locator = cls(guid(h["locator_type"]))
        for i in range(h["count"]):
            e = LOCATOR_ENTRY.unpack(raw, LOCATOR_HEADER.size + i * LOCATOR_ENTRY.size, path)
            key = _utf16(raw, e["key_offset"], e["key_length"], path)
            value = _utf16(raw, e["value_offset"], e["value_length"], path)
            if key in locator.entries:
                raise Corrupted(f"the VHDX parent locator has the key {key!r} twice", path)
            locator.entries[key] = value
        return locator

    def linkage(self, key: str = "parent_linkage") -> uuidlib.UUID | None:
        """A linkage GUID (stored as ``{xxxxxxxx-...}``), None if absent or unreadable."""
        text = self.entries.get(key)
        if text is None:
            return None
        try:
            return uuidlib.UUID(text.strip().strip("{}"))
        except ValueError:
            return None

    @property
    def path(self) -> str | None:
        """The parent path to follow: relative first, then absolute, then volume."""
        for key in ("relative_path", "absolute_win32_path", "volume_path"):
            if self.entries.get(key):
                return self.entries[key]
        return None


def _utf16(raw: bytes, offset: int, length: int, path: str) -> str:
    if offset + length > len(raw) or length % 2:
        raise Corrupted(f"a VHDX parent locator string (offset {offset}, length {length}) "
                        f"lies outside the locator of {len(raw)} bytes", path)
    return raw[offset:offset + length].decode("utf-16-le", errors="replace")


def linkage_text(value: uuidlib.UUID) -> str:
    """A GUID as parent locators store it: lowercase, in braces."""
    return "{" + str(value) + "}"


@dataclass
class Item:
    """One metadata table entry."""

    guid: uuidlib.UUID
    index: int  # position in the table
    offset: int  # from the start of the region
    length: int
    flags: int

    @property
    def name(self) -> str:
        return ITEM_NAMES.get(self.guid, str(self.guid))


@dataclass
class Metadata:
    """The system metadata of a VHDX image."""

    region_offset: int
    region_length: int
    #: Every table entry in stored order (user and unknown items included).
    entries: list[Item]
    block_size: int
    leave_blocks_allocated: bool
    has_parent: bool
    virtual_size: int
    disk_id: uuidlib.UUID
    logical_sector_size: int
    physical_sector_size: int
    locator: ParentLocator | None

    @property
    def items(self) -> dict[uuidlib.UUID, Item]:
        """The system items by GUID."""
        return {e.guid: e for e in self.entries if not e.flags & FLAG_USER}

    def _table_patch(self, slots: int) -> tuple[int, bytes]:
        """The table header and ``slots`` entry slots (unused ones zeroed)."""
        raw = TABLE_HEADER.pack(dict(signature=SIGNATURE, reserved=0,
                                     entry_count=len(self.entries), reserved2=bytes(20)))
        raw += b"".join(_pack_entry(e) for e in self.entries)
        return self.region_offset, raw.ljust(TABLE_HEADER.size + slots * TABLE_ENTRY.size,
                                              b"\0")

    def set_item(self, item: uuidlib.UUID, value: bytes, path: str) -> list[tuple[int, bytes]]:
        """File writes that store ``value`` as ``item``: ``(file offset, bytes)`` pairs.

        The item is rewritten in place when it fits, otherwise placed after the last
        item; the table is rewritten when an entry is added or moves.
        """
        entry = self.items.get(item)
        if entry is not None and len(value) <= entry.length:
            offset = entry.offset
        else:
            offset = -(-max([ITEM_AREA_START, *(e.offset + e.length for e in self.entries)])
                       // 8) * 8
            if offset + len(value) > self.region_length:
                raise NotSupported(f"the VHDX metadata region has no room for a "
                                   f"{len(value)}-byte {ITEM_NAMES.get(item, item)}", path)
        patches = [(self.region_offset + offset, value)]
        if entry is None:
            if len(self.entries) >= MAX_ENTRIES:
                raise NotSupported("the VHDX metadata table is full", path)
            self.entries.append(Item(item, len(self.entries), offset, len(value),
                                     ITEM_FLAGS[item]))
        elif (offset, len(value)) != (entry.offset, entry.length):
            entry.offset, entry.length = offset, len(value)
        else:
            return patches
        patches.append(self._table_patch(len(self.entries)))
        return patches

    def remove_item(self, item: uuidlib.UUID) -> list[tuple[int, bytes]]:
        """File writes that drop ``item`` from the table (its bytes stay, unused)."""
        slots = len(self.entries)
        self.entries = [e for e in self.entries if e.guid != item or e.flags & FLAG_USER]
        for i, e in enumerate(self.entries):
            e.index = i
        return [self._table_patch(slots)]


def pack_file_parameters(block_size: int, leave_blocks_allocated: bool,
                         has_parent: bool) -> bytes:
    flags = (FILE_LEAVE_BLOCKS_ALLOCATED if leave_blocks_allocated else 0) | \
        (FILE_HAS_PARENT if has_parent else 0)
    return struct.pack("<II", block_size, flags)


def _pack_entry(item: Item) -> bytes:
    return TABLE_ENTRY.pack(dict(guid=item.guid.bytes_le, offset=item.offset,
                                 length=item.length, flags=item.flags, reserved=0))


def read_metadata(storage: Storage, offset: int, length: int, path: str) -> Metadata:
    """Parse and validate the metadata region at ``offset``."""
    table = storage.read_exact(offset, TABLE_SIZE, "the VHDX metadata table")
    h = TABLE_HEADER.unpack(table, 0, path)
    if h["signature"] != SIGNATURE:
        raise Corrupted("the VHDX metadata region has no 'metadata' signature", path)
    if h["entry_count"] > MAX_ENTRIES:
        raise Corrupted(f"the VHDX metadata table has {h['entry_count']} entries (at most "
                        f"{MAX_ENTRIES})", path)
    entries: list[Item] = []
    items: dict[uuidlib.UUID, Item] = {}
    for i in range(h["entry_count"]):
        e = TABLE_ENTRY.unpack(table, TABLE_HEADER.size + i * TABLE_ENTRY.size, path)
        item = Item(guid(e["guid"]), i, e["offset"], e["length"], e["flags"])
        if item.guid in items and not item.flags & FLAG_USER:
            raise Corrupted(f"the VHDX metadata table lists the {item.name} item twice", path)
        if item.length and (item.offset < ITEM_AREA_START or item.length > MAX_ITEM
                            or item.offset + item.length > length):
            raise Corrupted(f"the VHDX {item.name} metadata item (offset {item.offset}, "
                            f"length {item.length}) lies outside the metadata region of "
                            f"{length} bytes", path)
        entries.append(item)
        if item.flags & FLAG_USER:
            continue  # user metadata is not ours to interpret
        if item.guid not in ITEM_NAMES and item.flags & FLAG_REQUIRED:
            raise NotSupported(f"the VHDX image needs an unknown metadata item {item.guid} "
                               f"that this program cannot interpret", path)
        items[item.guid] = item

    def value(item_guid: uuidlib.UUID, size: int | None) -> bytes:
        item = items.get(item_guid)
        if item is None:
            raise Corrupted(f"the VHDX metadata has no {ITEM_NAMES[item_guid]} item", path)
        if size is not None and item.length != size:
            raise Corrupted(f"the VHDX {item.name} metadata item is {item.length} bytes long "
                            f"(expected {size})", path)
        return storage.read_exact(offset + item.offset, item.length, f"the VHDX {item.name}")

    block_size, file_flags = struct.unpack("<II", value(FILE_PARAMETERS, 8))
    (virtual_size,) = struct.unpack("<Q", value(VIRTUAL_DISK_SIZE, 8))
    disk_id = guid(value(PAGE83_DATA, 16))
    (logical,) = struct.unpack("<I", value(LOGICAL_SECTOR_SIZE, 4))
    (physical,) = struct.unpack("<I", value(PHYSICAL_SECTOR_SIZE, 4))
    has_parent = bool(file_flags & FILE_HAS_PARENT)
    locator = None
    if has_parent:
        locator = ParentLocator.parse(value(PARENT_LOCATOR, None), path)
    if (block_size & (block_size - 1) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE):
        raise Corrupted(f"the VHDX block size {block_size} is not a power of two between "
                        f"1 MiB and 256 MiB", path)
    if logical not in SECTOR_SIZES or physical not in SECTOR_SIZES:
        raise Corrupted(f"the VHDX sector sizes ({logical} logical, {physical} physical) "
                        f"are not 512 or 4096", path)
    if virtual_size == 0 or virtual_size % logical or virtual_size > MAX_DISK_SIZE:
        raise Corrupted(f"the VHDX virtual disk size {virtual_size} is not a multiple of "
                        f"the {logical}-byte sector size between 1 sector and 64 TiB", path)
    return Metadata(
        region_offset=offset, region_length=length, entries=entries, block_size=block_size,
        leave_blocks_allocated=bool(file_flags & FILE_LEAVE_BLOCKS_ALLOCATED),
        has_parent=has_parent, virtual_size=virtual_size, disk_id=disk_id,
        logical_sector_size=logical, physical_sector_size=physical, locator=locator)


def pack_region(block_size: int, leave_blocks_allocated: bool, virtual_size: int,
                disk_id: uuidlib.UUID, logical: int, physical: int,
                locator: ParentLocator | None) -> bytes:
    """The used part of a new metadata region: the table and the items after it."""
    values = [
        (FILE_PARAMETERS, pack_file_parameters(block_size, leave_blocks_allocated,
                                               locator is not None)),
        (VIRTUAL_DISK_SIZE, struct.pack("<Q", virtual_size)),
        (PAGE83_DATA, disk_id.bytes_le),
        (LOGICAL_SECTOR_SIZE, struct.pack("<I", logical)),
        (PHYSICAL_SECTOR_SIZE, struct.pack("<I", physical)),
    ]
    if locator is not None:
        values.append((PARENT_LOCATOR, locator.pack()))
    table = TABLE_HEADER.pack(dict(signature=SIGNATURE, reserved=0, entry_count=len(values),
                                   reserved2=bytes(20)))
    data = b""
    for i, (item_guid, raw) in enumerate(values):
        table += _pack_entry(Item(item_guid, i, ITEM_AREA_START + len(data), len(raw),
                                  ITEM_FLAGS[item_guid]))
        data += raw.ljust(-(-len(raw) // 8) * 8, b"\0")
    return table.ljust(TABLE_SIZE, b"\0") + data
