"""VCI file header: layout, constants and the checks made before anything else is read.

All fields little-endian and packed; sizes and offsets count 512-byte blocks.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass

from ...errors import Corrupted, InvalidHeader, NotSupported
from ...layout import Layout

SIGNATURE = 0x00494356  # "VCI\0"
VERSION = 1

BLOCK = 512
#: The header occupies blocks 0 and 1.
HEADER_BLOCKS = 2
#: B+-tree nodes are 4 KiB: eight blocks.
NODE_BLOCKS = 8
#: One bitmap block manages this many blocks.
BITS_PER_MAP_BLOCK = BLOCK * 8

TYPE_DYNAMIC, TYPE_FIXED = 1, 2
TYPE_NAMES = {TYPE_DYNAMIC: "dynamic", TYPE_FIXED: "fixed"}

#: The largest cache this program creates or opens (its bitmap, 64 MiB, is kept in
#: memory).  The format itself would allow far more.
MAX_BLOCKS = 1 << 29  # 256 GiB

HEADER = Layout("VCI header", "<", [
    ("signature", "I"), ("version", "I"), ("cache_blocks", "Q"), ("unclean", "B"),
    ("type", "I"), ("root", "Q"), ("map_offset", "Q"), ("map_blocks", "I"),
    ("uuid", "16s"), ("modification_uuid", "16s"), ("reserved", "951s")])
assert HEADER.size == HEADER_BLOCKS * BLOCK


def map_blocks_for(cache_blocks: int) -> int:
    """Blocks of the allocation map (its header block plus the bitmap) for a cache."""
    return 1 + -(-cache_blocks // BITS_PER_MAP_BLOCK)


def minimum_blocks(cache_blocks: int) -> int:
    """Metadata of an empty cache: header, map and the root leaf."""
    return HEADER_BLOCKS + map_blocks_for(cache_blocks) + NODE_BLOCKS


@dataclass
class Header:
    """The header fields the backend uses (``reserved`` is written as zeros)."""

    cache_blocks: int
    type: int
    root: int
    map_offset: int
    map_blocks: int
    uuid: uuidlib.UUID
    modification_uuid: uuidlib.UUID
    unclean: bool = False

    @classmethod
    def parse(cls, raw: bytes, path: str) -> Header:
        """Header fields, after the checks every use needs (signature, version,
        type, size); the layout of map and tree is checked by :meth:`check_layout`."""
        if len(raw) < HEADER.size:
            raise InvalidHeader("not a VCI cache image (the file is too short)", path)
        h = HEADER.unpack(raw, 0, path)
        if h["signature"] != SIGNATURE:
            raise InvalidHeader("not a VCI cache image (no VCI signature)", path)
        if h["version"] != VERSION:
            raise NotSupported(f"VCI version {h['version']} is not supported (only "
                               f"version {VERSION})", path)
        if h["type"] not in TYPE_NAMES:
            raise Corrupted(f"the VCI header gives an unknown cache type {h['type']}", path)
        blocks = h["cache_blocks"]
        if not minimum_blocks(blocks) <= blocks <= MAX_BLOCKS:
            raise Corrupted(f"the VCI header gives a cache size of {blocks} blocks, outside "
                            f"{minimum_blocks(1)}..{MAX_BLOCKS}", path)
        return cls(cache_blocks=blocks, type=h["type"], root=h["root"],
                   map_offset=h["map_offset"], map_blocks=h["map_blocks"],
                   # VirtualBox keeps UUIDs in the little-endian GUID layout.
                   uuid=uuidlib.UUID(bytes_le=h["uuid"]),
                   modification_uuid=uuidlib.UUID(bytes_le=h["modification_uuid"]),
                   # Anything but 0 counts as unclean: doubt means discard.
                   unclean=h["unclean"] != 0)

    def check_layout(self, path: str) -> None:
        """Map and root must lie inside the cache, after the header."""
        blocks = self.cache_blocks
        if self.map_blocks != map_blocks_for(blocks):
            raise Corrupted(f"the VCI allocation map has {self.map_blocks} blocks; a cache "
                            f"of {blocks} blocks needs {map_blocks_for(blocks)}", path)
        if not HEADER_BLOCKS <= self.map_offset <= blocks - self.map_blocks:
            raise Corrupted(f"the VCI allocation map (block {self.map_offset}) lies outside "
                            f"the cache", path)
        if not HEADER_BLOCKS <= self.root <= blocks - NODE_BLOCKS:
            raise Corrupted(f"the VCI tree root (block {self.root}) lies outside the cache",
                            path)

    def pack(self) -> bytes:
        return HEADER.pack(dict(
            signature=SIGNATURE, version=VERSION, cache_blocks=self.cache_blocks,
            unclean=int(self.unclean), type=self.type, root=self.root,
            map_offset=self.map_offset, map_blocks=self.map_blocks,
            uuid=self.uuid.bytes_le, modification_uuid=self.modification_uuid.bytes_le,
            reserved=b""))
