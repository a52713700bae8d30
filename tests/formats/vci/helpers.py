"""Helpers shared by the VCI tests: making caches, patterned data, reading the file."""

from __future__ import annotations

import uuid

import numpy as np

from vdgui.engine.formats.base import CacheRequest
from vdgui.engine.formats.vci import VciCache
from vdgui.engine.formats.vci.header import BLOCK, HEADER
from vdgui.engine.formats.vci.tree import LEAF_CAPACITY, LEAF_ENTRY, NODE_BYTES
from vdgui.engine.io import StorageProvider

KiB = 1024
MiB = 1 << 20


def new_cache(io: StorageProvider, path: str, size: int = 2 * MiB, **config: str) -> VciCache:
    return VciCache.create(io, CacheRequest(str(path), size, uuid.uuid4(), config=config))


def pattern(seed: int, length: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()


def cached(cache: VciCache, offset: int, length: int) -> bytes | None:
    """The bytes the cache returns for the whole range, or None if any is a miss."""
    hit, run = cache.lookup(offset, length)
    if not hit or run != length:
        return None
    buf = bytearray(length)
    cache.read_into(offset, memoryview(buf))
    return bytes(buf)


def header(raw: bytes) -> dict:
    return HEADER.unpack(raw)


def leaf_entries(raw: bytes, addr: int) -> np.ndarray:
    """The used entries of the leaf node at block ``addr``."""
    node = raw[addr * BLOCK:addr * BLOCK + NODE_BYTES]
    assert node[0] == 2
    entries = np.frombuffer(node, dtype=LEAF_ENTRY, count=LEAF_CAPACITY, offset=1)
    return entries[entries["count"] != 0]
