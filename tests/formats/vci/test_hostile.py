"""Damaged and hostile VCI files: always a VDError (InvalidHeader for foreign files,
Corrupted for damaged ones), never another exception, a hang or a write."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from vdgui.engine import VDError, errors
from vdgui.engine.formats.vci import VciCache
from vdgui.engine.formats.vci.bitmap import MAP_HEADER
from vdgui.engine.formats.vci.header import BLOCK, HEADER
from vdgui.engine.formats.vci.tree import INTERNAL_ENTRY, LEAF_ENTRY, NODE_BYTES
from vdgui.engine.io import MemoryProvider
from vdgui.engine.registry import probe_cache
from vdgui.engine.types import OpenFlags

from .helpers import MiB, header, leaf_entries, new_cache, pattern

PATH = "/h.vci"
EXTENTS = 300  # one-block extents at every other block: an internal root over leaves


@pytest.fixture(scope="module")
def good() -> bytes:
    io = MemoryProvider()
    cache = new_cache(io, PATH, 2 * MiB)
    block = pattern(1, BLOCK)
    for i in range(EXTENTS):
        cache.store(2 * i * BLOCK, memoryview(block))
    cache.close()
    return io.get(PATH)


def attempt(raw: bytes, flags: OpenFlags = OpenFlags.READONLY) -> VDError | None:
    """Open ``raw`` and use it; the error raised, or None.  Asserts nothing else
    goes wrong and (read-only) that no byte is written."""
    io = MemoryProvider()
    io.put(PATH, raw)
    start = time.monotonic()
    try:
        cache = VciCache.open(io, PATH, flags)
        try:
            pos, end = 0, 4 * EXTENTS * BLOCK
            while pos < end:
                hit, run = cache.lookup(pos, end - pos)
                if hit:
                    cache.read_into(pos, memoryview(bytearray(run)))
                pos += run
        finally:
            cache.close()
    except VDError as exc:
        assert str(exc)
        return exc
    finally:
        assert time.monotonic() - start < 5
        if flags & OpenFlags.READONLY:
            assert io.get(PATH) == raw
    return None


def patched(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def root_children(raw: bytes) -> list[int]:
    root = header(raw)["root"] * BLOCK
    assert raw[root] == 1
    entries = np.frombuffer(raw, INTERNAL_ENTRY, 204, root + 1)
    return entries[entries["count"] != 0]["child"].tolist()


def test_the_sample_is_sound(good):
    assert attempt(good) is None
    assert len(root_children(good)) > 2


@pytest.mark.parametrize("raw, error", [
    (b"", errors.InvalidHeader),
    (b"VCI\0\1\0\0\0", errors.InvalidHeader),
    (bytes(1024), errors.InvalidHeader),
    (b"VHDX" + bytes(1020), errors.InvalidHeader),
])
def test_foreign_files_are_not_vci(raw, error):
    exc = attempt(raw)
    assert isinstance(exc, error) and exc.status == "VERR_VD_GEN_INVALID_HEADER"
    io = MemoryProvider()
    io.put(PATH, raw)
    with pytest.raises(errors.NotSupported):
        probe_cache(PATH, io)


@pytest.mark.parametrize("field, fmt, value, error", [
    ("version", "<I", 2, errors.NotSupported),
    ("type", "<I", 3, errors.Corrupted),
    ("cache_blocks", "<Q", 0, errors.Corrupted),
    ("cache_blocks", "<Q", 1 << 62, errors.Corrupted),
    ("cache_blocks", "<Q", 8192, errors.Corrupted),  # the map would need more blocks
    ("map_blocks", "<I", 1, errors.Corrupted),
    ("map_offset", "<Q", 0, errors.Corrupted),
    ("map_offset", "<Q", 4095, errors.Corrupted),
    ("root", "<Q", 1, errors.Corrupted),
    ("root", "<Q", 4090, errors.Corrupted),
    ("root", "<Q", 2, errors.Corrupted),  # the map is no tree node
])
def test_damaged_headers(good, field, fmt, value, error):
    assert isinstance(attempt(patched(good, HEADER.offset_of(field), fmt, value)), error)


@pytest.mark.parametrize("field, delta", [("magic", 1), ("version", 1), ("managed", 1),
                                          ("free", 1), ("metadata", -8), ("data", 1)])
def test_damaged_map_headers(good, field, delta):
    offset = 2 * BLOCK + MAP_HEADER.offset_of(field)
    fmt = "<I" if field in ("magic", "version") else "<Q"
    value = struct.unpack_from(fmt, good, offset)[0] + delta
    assert isinstance(attempt(patched(good, offset, fmt, value)), errors.Corrupted)


@pytest.mark.parametrize("block", [0, 5, 100, 4000])
def test_a_bitmap_that_disagrees_with_the_tree(good, block):
    out = bytearray(good)
    out[3 * BLOCK + block // 8] ^= 1 << (block % 8)
    exc = attempt(bytes(out))
    assert isinstance(exc, errors.Corrupted) and "map" in exc.message


def test_tree_nodes_referring_back_or_too_deep(good):
    root = header(good)["root"]
    # The root's first child entry points at the root itself.
    cyclic = patched(good, root * BLOCK + 1 + INTERNAL_ENTRY.fields["child"][1], "<Q", root)
    assert "twice" in attempt(cyclic).message
    # A chain of 14 one-entry internal nodes in otherwise free blocks.
    out = bytearray(good.ljust(2 * MiB, b"\0"))
    first_free = 2000
    chain = [first_free + 8 * i for i in range(14)]
    for addr, child in zip(chain, chain[1:] + [root]):
        node = bytearray(NODE_BYTES)
        node[0] = 1
        struct.pack_into("<QIQ", node, 1, 0, 0xFFFFFFFF, child)
        out[addr * BLOCK:addr * BLOCK + NODE_BYTES] = node
    struct.pack_into("<Q", out, HEADER.offset_of("root"), chain[0])
    exc = attempt(bytes(out))
    assert isinstance(exc, errors.Corrupted) and "more nodes" in exc.message
    for field, delta in (("metadata", 8 * 14), ("free", -8 * 14)):  # counted as in use
        offset = 2 * BLOCK + MAP_HEADER.offset_of(field)
        struct.pack_into("<Q", out, offset, struct.unpack_from("<Q", out, offset)[0] + delta)
    exc = attempt(bytes(out))
    assert isinstance(exc, errors.Corrupted) and "deeper" in exc.message


def test_damaged_leaves(good):
    leaf = root_children(good)[1]
    base = leaf * BLOCK + 1
    size = LEAF_ENTRY.itemsize
    first_off = LEAF_ENTRY.fields["first"][1]
    data_off = LEAF_ENTRY.fields["data"][1]
    entries = leaf_entries(good, leaf)
    cases = {
        "unknown type": patched(good, leaf * BLOCK, "<B", 9),
        "unsorted": patched(good, base + size + first_off, "<Q", int(entries["first"][0])),
        "outside its parent's range": patched(good, base + first_off, "<Q", 0),
        "flags": patched(good, base + LEAF_ENTRY.fields["flags"][1], "<B", 1),
        "data in the header": patched(good, base + data_off, "<Q", 1),
        "data in the map": patched(good, base + data_off, "<Q", 3),
        "data past the cache": patched(good, base + data_off, "<Q", 4096),
        "two extents, one block": patched(good, base + size + data_off, "<Q",
                                          int(entries["data"][0])),
        "a huge extent": patched(good, base + LEAF_ENTRY.fields["count"][1], "<I",
                                 0xFFFFFFFF),
        "broken LRU link": patched(good, base + LEAF_ENTRY.fields["next"][1], "<Q", 12345),
        "two LRU starts": patched(good, base + LEAF_ENTRY.fields["prev"][1], "<Q", 0),
    }
    for what, raw in cases.items():
        exc = attempt(raw)
        assert isinstance(exc, errors.Corrupted), what


def test_an_emptied_leaf_is_refused(good):
    out = bytearray(good)
    leaf = root_children(good)[0]
    out[leaf * BLOCK + 1:(leaf + 8) * BLOCK] = bytes(NODE_BYTES - 1)
    assert isinstance(attempt(bytes(out)), errors.Corrupted)


def test_truncated_files(good):
    for length in (1023, 1024, 2 * BLOCK + 100, 5 * BLOCK, 12 * BLOCK, len(good) - 1):
        assert isinstance(attempt(good[:length]), VDError), length


def test_random_damage_to_the_metadata(good):
    """Random bytes of header, map and tree overwritten: a VDError or a cache that
    works; writable opens of the same bytes never fail otherwise either."""
    rng = np.random.default_rng(7)
    nodes = [header(good)["root"]] + root_children(good)
    spans = [(0, 80), (2 * BLOCK, 2 * BLOCK + 48), (3 * BLOCK, 3 * BLOCK + 200)] + [
        (n * BLOCK, n * BLOCK + 1 + 38 * 30) for n in nodes]
    outcomes = set()
    for i in range(400):
        out = bytearray(good)
        lo, hi = spans[rng.integers(len(spans))]
        for _ in range(rng.integers(1, 4)):
            out[rng.integers(lo, hi)] = rng.integers(256)
        flags = OpenFlags.NORMAL if i % 4 == 0 else OpenFlags.READONLY
        exc = attempt(bytes(out), flags)
        outcomes.add(type(exc).__name__ if exc else "ok")
    assert {"Corrupted", "ok"} <= outcomes


def test_a_huge_claimed_size_allocates_nothing_big(good):
    import tracemalloc
    raw = patched(good, HEADER.offset_of("cache_blocks"), "<Q", 1 << 29)
    raw = patched(raw, HEADER.offset_of("map_blocks"), "<I", 1 + (1 << 29) // 4096)
    tracemalloc.start()
    try:
        exc = attempt(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(exc, errors.Corrupted) and "truncated" in exc.message
    assert peak < 8 << 20
