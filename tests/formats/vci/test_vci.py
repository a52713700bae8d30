"""The VCI backend on its own: layout pinned byte by byte, storing, looking up,
updating, eviction, the B+-tree over many leaves, clean and unclean reopening."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from vdgui.engine import errors
from vdgui.engine.formats.base import CacheRequest
from vdgui.engine.formats.vci import VciCache
from vdgui.engine.formats.vci.bitmap import MAP_HEADER
from vdgui.engine.formats.vci.header import BLOCK
from vdgui.engine.formats.vci.tree import Internal
from vdgui.engine.io import FileProvider, MemoryProvider
from vdgui.engine.types import OpenFlags

from .helpers import KiB, MiB, cached, header, leaf_entries, new_cache, pattern

io = FileProvider()


def test_new_cache_is_laid_out_as_the_format_says(tmp_path):
    path = tmp_path / "c.vci"
    image_uuid = uuid.UUID("5c8cdb2a-44e4-44e2-acba-2e678ca2e6d2")
    cache = VciCache.create(io, CacheRequest(str(path), 3 * MiB, image_uuid))
    h = header(path.read_bytes())
    assert h["unclean"] == 1  # open for writing: marked at once
    cache.close()
    raw = path.read_bytes()
    h = header(raw)
    assert raw[:4] == b"VCI\0" and h["version"] == 1
    # 3 MiB rounds up to whole bitmap blocks: 8192 blocks (4 MiB), a 2-block bitmap.
    assert (h["cache_blocks"], h["unclean"], h["type"]) == (8192, 0, 1)
    assert (h["map_offset"], h["map_blocks"], h["root"]) == (2, 3, 5)
    assert h["uuid"] == bytes.fromhex("2adb8c5ce444e244acba2e678ca2e6d2")
    assert h["modification_uuid"] == bytes(16)
    assert raw[73:1024] == bytes(951)
    m = MAP_HEADER.unpack(raw, 2 * BLOCK)
    assert raw[1024:1028] == b"VBLK" and m["version"] == 1
    assert (m["managed"], m["free"], m["metadata"], m["data"]) == (8192, 8179, 13, 0)
    bitmap = raw[3 * BLOCK:5 * BLOCK]
    assert bitmap[:2] == b"\xff\x1f" and not any(bitmap[2:])  # blocks 0..12, LSB first
    assert raw[5 * BLOCK] == 2 and not any(raw[5 * BLOCK + 1:])  # an empty root leaf
    assert len(raw) == 13 * BLOCK  # dynamic: nothing past the metadata yet


def test_fixed_cache_is_preallocated(tmp_path):
    path = tmp_path / "f.vci"
    new_cache(io, path, 2 * MiB, Type="fixed").close()
    assert header(path.read_bytes())["type"] == 2
    assert path.stat().st_size == 2 * MiB
    cache = VciCache.open(io, str(path), OpenFlags.READONLY)
    assert (cache.cache_type, cache.max_size) == ("fixed", 2 * MiB)
    cache.close()


def test_a_cancelled_fixed_creation_leaves_no_file(tmp_path):
    from vdgui.engine import Progress
    progress = Progress()
    progress.cancel()
    with pytest.raises(errors.Cancelled):
        VciCache.create(io, CacheRequest(str(tmp_path / "f.vci"), 2 * MiB, uuid.uuid4(),
                                         config={"Type": "fixed"}, progress=progress))
    assert not (tmp_path / "f.vci").exists()


@pytest.mark.parametrize("size, config, error", [
    (2 * MiB, {"Type": "sparse"}, errors.InvalidParameter),
    (2 * MiB, {"BlockSize": "4096"}, errors.InvalidParameter),
    (257 << 30, {}, errors.InvalidSize),
])
def test_bad_creation_requests_are_refused(tmp_path, size, config, error):
    with pytest.raises(error):
        VciCache.create(io, CacheRequest(str(tmp_path / "c.vci"), size, uuid.uuid4(),
                                         config=config))
    assert not (tmp_path / "c.vci").exists()


def test_store_keeps_whole_blocks_and_a_hit_returns_them_exactly(tmp_path):
    path = tmp_path / "c.vci"
    cache = new_cache(io, path)
    data = pattern(1, 64 * KiB)
    cache.store(4096 + 100, memoryview(data))  # blocks 9..135 are whole
    assert cache.lookup(4096, 1024) == (False, 512)
    assert cache.lookup(4608, MiB) == (True, 69632 - 4608)
    assert cache.lookup(69632, 512) == (False, 512)
    assert cached(cache, 4608, 69632 - 4608) == data[4608 - 4196:69632 - 4196]
    assert cached(cache, 5000, 7) == data[5000 - 4196:5007 - 4196]  # any alignment inside
    cache.store(0, memoryview(bytes(100)))  # no whole block: nothing kept
    assert cache.lookup(0, 100) == (False, 100)
    cache.close()
    cache = VciCache.open(io, str(path), OpenFlags.NORMAL)
    assert cached(cache, 4608, 69632 - 4608) == data[4608 - 4196:69632 - 4196]
    cache.close()


def test_sequential_stores_grow_one_extent_up_to_1_mib(tmp_path):
    path = tmp_path / "c.vci"
    cache = new_cache(io, path, 4 * MiB)
    data = pattern(2, 3 * MiB)
    for pos in range(0, len(data), 64 * KiB):
        cache.store(pos, memoryview(data)[pos:pos + 64 * KiB])
    cache.close()
    raw = path.read_bytes()
    entries = leaf_entries(raw, header(raw)["root"])
    assert entries["first"].tolist() == [0, 2048, 4096]
    assert entries["count"].tolist() == [2048] * 3
    root_end = header(raw)["root"] + 8
    assert entries["data"].tolist() == [root_end, root_end + 2048, root_end + 4096]
    cache = VciCache.open(io, str(path), OpenFlags.READONLY)
    assert cache.lookup(0, 3 * MiB) == (True, 3 * MiB)
    assert cached(cache, 0, 3 * MiB) == data
    cache.close()


def test_update_rewrites_whole_blocks_and_forgets_partial_ones(tmp_path):
    cache = new_cache(io, tmp_path / "c.vci")
    old = pattern(3, 8 * BLOCK)
    cache.store(0, memoryview(old))
    new = pattern(4, 1000)
    cache.update(100, memoryview(new), 1000)  # block 0 and 2 partly, block 1 whole
    assert cache.lookup(0, 8 * BLOCK) == (False, BLOCK)
    assert cached(cache, BLOCK, BLOCK) == new[412:924]
    assert cache.lookup(2 * BLOCK, BLOCK) == (False, BLOCK)
    assert cached(cache, 3 * BLOCK, 5 * BLOCK) == old[3 * BLOCK:]
    cache.update(3 * BLOCK + 1, memoryview(b"x"), 1)  # inside one block
    assert cache.lookup(3 * BLOCK, BLOCK) == (False, BLOCK)
    cache.update(5 * BLOCK, None, 2 * BLOCK)  # discarded: forgotten
    assert cache.lookup(5 * BLOCK, 2 * BLOCK) == (False, 2 * BLOCK)
    assert cached(cache, 4 * BLOCK, BLOCK) == old[4 * BLOCK:5 * BLOCK]
    assert cached(cache, 7 * BLOCK, BLOCK) == old[7 * BLOCK:]
    free = cache._map.free
    cache.close()
    cache = VciCache.open(io, str(tmp_path / "c.vci"), OpenFlags.READONLY)
    assert cache._map.free == free
    assert cached(cache, BLOCK, BLOCK) == new[412:924]
    assert cached(cache, 7 * BLOCK, BLOCK) == old[7 * BLOCK:]
    assert cache.lookup(0, 8 * BLOCK) == (False, BLOCK)
    cache.close()


def test_full_cache_evicts_the_least_recently_used_extent_across_a_reopen(tmp_path):
    path = tmp_path / "c.vci"
    cache = new_cache(io, path, 2 * MiB)  # 4096 blocks, 12 of them metadata
    a, b, c = (pattern(i, 1000 * BLOCK) for i in (5, 6, 7))
    for i, data in enumerate((a, b, c)):
        cache.store(i * MiB, memoryview(data))
    cached(cache, 0, BLOCK)  # reading a makes it the most recent: b is the oldest
    cache.close()
    raw = path.read_bytes()
    entries = leaf_entries(raw, header(raw)["root"])
    by_first = {int(e["first"]): e for e in entries}
    ea, eb, ec = by_first[0], by_first[2048], by_first[4096]
    # The LRU list links data addresses: oldest b -> c -> a newest.
    assert (eb["prev"], eb["next"]) == (0, ec["data"])
    assert (ec["prev"], ec["next"]) == (eb["data"], ea["data"])
    assert (ea["prev"], ea["next"]) == (ec["data"], 0)
    cache = VciCache.open(io, str(path), OpenFlags.NORMAL)
    d = pattern(8, 2000 * BLOCK)
    cache.store(3 * MiB, memoryview(d))
    assert cache.lookup(MiB, BLOCK) == (False, BLOCK)
    assert cached(cache, 0, len(a)) == a
    assert cached(cache, 2 * MiB, len(c)) == c
    assert cached(cache, 3 * MiB, len(d)) == d
    counts = cache._map.counts
    assert counts["metadata"] + counts["data"] + cache._map.free == 4096
    cache.close()


def test_a_store_larger_than_the_cache_keeps_its_end(tmp_path):
    cache = new_cache(io, tmp_path / "c.vci", 2 * MiB)
    data = pattern(9, 5 * MiB)
    cache.store(0, memoryview(data))
    assert cache.lookup(5 * MiB - BLOCK, BLOCK) == (True, BLOCK)
    kept = 5 * MiB - cache.lookup(0, 5 * MiB)[1]
    assert MiB < kept <= 2 * MiB
    assert cached(cache, 5 * MiB - kept, kept) == data[-kept:]
    cache.close()


def _depth(cache: VciCache) -> int:
    node, depth = cache._tree.root, 0
    while isinstance(node, Internal):
        node, depth = node.children[0], depth + 1
    return depth


def test_the_tree_grows_over_many_leaves_and_shrinks_back():
    io_mem = MemoryProvider()
    cache = new_cache(io_mem, "/c.vci", 16 * MiB)
    block = pattern(10, BLOCK)
    count = 12000  # one-block extents, every other block: three levels
    for i in range(count):
        cache.store(2 * i * BLOCK, memoryview(block))
    assert _depth(cache) == 2
    cache.close()
    cache = VciCache.open(io_mem, "/c.vci", OpenFlags.NORMAL)
    assert _depth(cache) == 2
    rng = np.random.default_rng(0)
    for i in rng.integers(0, count, 200).tolist():
        assert cache.lookup(2 * i * BLOCK, 2 * BLOCK) == (True, BLOCK)
        assert cache.lookup((2 * i + 1) * BLOCK, BLOCK) == (False, BLOCK)
    assert cached(cache, 2 * 777 * BLOCK, BLOCK) == block
    cache.update(0, None, 2 * (count - 3) * BLOCK)  # forget all but the last three
    assert _depth(cache) == 0
    cache.close()
    cache = VciCache.open(io_mem, "/c.vci", OpenFlags.NORMAL)
    assert [e[0] for e in cache._tree.extents()] == [2 * i for i in range(count - 3, count)]
    assert cache._map.counts["data"] == 3
    cache.close()


def test_read_only_open_changes_no_byte_and_forgets_updates_in_memory():
    io_mem = MemoryProvider()
    cache = new_cache(io_mem, "/c.vci")
    data = pattern(11, 16 * BLOCK)
    cache.store(0, memoryview(data))
    cache.close()
    before = io_mem.get("/c.vci")
    cache = VciCache.open(io_mem, "/c.vci", OpenFlags.READONLY)
    assert cache.read_only
    cache.store(MiB, memoryview(data))
    assert cache.lookup(MiB, BLOCK) == (False, BLOCK)
    cache.update(4 * BLOCK, memoryview(bytes(BLOCK)), BLOCK)  # cannot rewrite: forgets
    assert cache.lookup(4 * BLOCK, BLOCK) == (False, BLOCK)
    assert cached(cache, 5 * BLOCK, BLOCK) == data[5 * BLOCK:6 * BLOCK]
    with pytest.raises(errors.ReadOnly):
        cache.modification_uuid = uuid.uuid4()
    cache.flush()
    cache.close()
    assert io_mem.get("/c.vci") == before


def test_modification_uuid_is_kept():
    io_mem = MemoryProvider()
    cache = new_cache(io_mem, "/c.vci")
    mod = uuid.uuid4()
    cache.modification_uuid = mod
    image_uuid = cache.uuid
    cache.close()
    cache = VciCache.open(io_mem, "/c.vci", OpenFlags.READONLY)
    assert (cache.modification_uuid, cache.uuid) == (mod, image_uuid)
    cache.close()


@pytest.mark.parametrize("flushed", [False, True])
def test_a_cache_left_unclean_is_not_trusted(flushed):
    io_mem = MemoryProvider()
    cache = new_cache(io_mem, "/c.vci", 4 * MiB)
    data = pattern(12, MiB)
    cache.store(0, memoryview(data))
    cache.modification_uuid = mod = uuid.uuid4()
    if flushed:
        cache.flush()
    crashed = io_mem.get("/c.vci")  # the file as a crash would leave it
    cache.close()
    assert header(crashed)["unclean"] == 1

    io_crash = MemoryProvider()
    io_crash.put("/c.vci", crashed)
    cache = VciCache.open(io_crash, "/c.vci", OpenFlags.READONLY)
    assert cache.lookup(0, MiB) == (False, MiB)
    cache.close()
    assert io_crash.get("/c.vci") == crashed  # read-only: no byte changed

    cache = VciCache.open(io_crash, "/c.vci", OpenFlags.NORMAL)  # reset in place
    assert cache.lookup(0, MiB) == (False, MiB)
    assert cache.modification_uuid == mod
    cache.store(0, memoryview(data))
    cache.close()
    cache = VciCache.open(io_crash, "/c.vci", OpenFlags.READONLY)
    assert cached(cache, 0, MiB) == data
    cache.close()


def test_an_error_while_storing_stops_the_cache_without_failing():
    from vdgui.engine.io import Fault, FaultyProvider
    inner = MemoryProvider()
    faulty = FaultyProvider(inner)
    cache = new_cache(faulty, "/c.vci")
    cache.store(0, memoryview(pattern(13, 4 * BLOCK)))
    faulty.fault = Fault(0, "eio")
    cache.store(MiB, memoryview(pattern(14, 4 * BLOCK)))  # no exception
    faulty.fault = None
    assert cache.lookup(0, BLOCK) == (False, BLOCK)  # nothing is served any more
    cache.close()
    assert header(inner.get("/c.vci"))["unclean"] == 1  # emptied when next opened
    cache = VciCache.open(inner, "/c.vci", OpenFlags.NORMAL)
    assert cache.lookup(0, BLOCK) == (False, BLOCK)
    cache.close()
    assert header(inner.get("/c.vci"))["unclean"] == 0
