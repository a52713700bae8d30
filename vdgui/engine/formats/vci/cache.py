"""The VCI cache backend: :class:`VciCache` (see the package docstring for the rules)."""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections import OrderedDict
from itertools import pairwise

import numpy as np

from ...errors import (Corrupted, InvalidParameter, InvalidSize, InvalidState, ReadOnly,
                       VDError)
from ...io import Storage, StorageProvider
from ...progress import report
from ...sizes import align_up
from ...types import (NIL_UUID, Capability, ConfigKey, ConfigKeyFlags, ConfigValueType,
                      DiskType, OpenFlags)
from ..base import BackendInfo, Cache, CacheRequest, open_storage, validate_config
from .bitmap import DATA, METADATA, AllocationMap
from .header import (BITS_PER_MAP_BLOCK, BLOCK, HEADER, HEADER_BLOCKS, MAX_BLOCKS,
                     NODE_BLOCKS, TYPE_DYNAMIC, TYPE_FIXED, TYPE_NAMES, Header,
                     map_blocks_for)
from .tree import NODE_BYTES, ExtentTree, Leaf, TreeLoader, node_bytes

log = logging.getLogger(__name__)

#: Largest extent a store creates or grows (1 MiB): bounds the data one eviction
#: throws away and keeps free space reusable.
MAX_EXTENT_BLOCKS = 2048


class VciCache(Cache):
    """An opened VCI cache image."""

    info = BackendInfo(
        name="VCI",
        description="VirtualBox Cache Image",
        capabilities=(Capability.CREATE_DYNAMIC | Capability.CREATE_FIXED | Capability.FILE
                      | Capability.VFS),
        extensions=(("vci", DiskType.HDD),),
        variants=("standard", "fixed"),
        config_keys=(ConfigKey("Type", "dynamic", ConfigValueType.STRING,
                               ConfigKeyFlags.CREATE_ONLY),),
        stores=frozenset({"uuid", "modification_uuid"}),
    )

    def __init__(self, io: StorageProvider, path: str, flags: OpenFlags,
                 storage: Storage) -> None:
        self.io = io
        self.path = path
        self.open_flags = flags
        self.storage = storage
        self._closed = False
        #: Set when the cache stopped serving after an error: nothing is trusted,
        #: and the file is left marked unclean so the next open starts afresh.
        self._broken = False
        self._spares: list[int] = []
        self._hint = 0

    def __repr__(self) -> str:
        return f"<VciCache {self.path!r}>"

    # -- probing, opening, creating -----------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str) -> None:
        with io.open(path) as storage:
            Header.parse(storage.read_at(0, HEADER.size), path)

    @classmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags) -> VciCache:
        storage = open_storage(io, path, flags)
        cache = cls(io, path, flags, storage)
        try:
            cache._load()
        except BaseException:
            storage.close()
            raise
        return cache

    @classmethod
    def create(cls, io: StorageProvider, request: CacheRequest) -> VciCache:
        path = request.path
        validate_config(cls.info, request.config, path)
        kind = next((v for k, v in request.config.items() if k.lower() == "type"), "dynamic")
        types = {name: number for number, name in TYPE_NAMES.items()}
        if kind.lower() not in types:
            raise InvalidParameter(f"option Type={kind!r} must be dynamic or fixed", path)
        # Whole bitmap blocks: every block the map can describe is part of the cache.
        blocks = align_up(max(-(-request.max_size // BLOCK), 1), BITS_PER_MAP_BLOCK)
        if blocks > MAX_BLOCKS:
            raise InvalidSize(f"a VCI cache can be at most {MAX_BLOCKS * BLOCK >> 30} GiB "
                              f"(asked for {request.max_size} bytes)", path)
        header = Header(cache_blocks=blocks, type=types[kind.lower()], root=0,
                        map_offset=HEADER_BLOCKS, map_blocks=map_blocks_for(blocks),
                        uuid=request.uuid, modification_uuid=NIL_UUID)
        storage = io.open(path, create=True)
        try:
            cache = cls(io, path, OpenFlags.NORMAL, storage)
            cache._header = header
            cache._lay_out_empty()
            cache._write_all()
            if header.type == TYPE_FIXED:
                total, step = blocks * BLOCK, 64 << 20
                for pos in range(0, total, step):
                    report(request.progress, pos, total, "allocating")
                    storage.allocate(pos, min(step, total - pos))
                report(request.progress, total, total, "allocating")
            storage.flush()
        except BaseException:
            storage.close()
            io.delete(path)  # ours, half made (no space, cancelled)
            raise
        storage.close()
        return cls.open(io, path, request.open_flags & ~OpenFlags.READONLY)

    # -- loading ----------------------------------------------------------------------

    def _load(self) -> None:
        self._header = Header.parse(self.storage.read_at(0, HEADER.size), self.path)
        if self._header.unclean:
            # Changes since the last clean close may be missing from the metadata:
            # nothing in the file is trusted.
            log.warning("%s: the cache was not closed cleanly; its content is discarded",
                        self.path)
            self._lay_out_empty()
            if not self.read_only:
                self._write_all()
                if self._header.type == TYPE_DYNAMIC:
                    self.storage.set_size(self._metadata_end())
                self.storage.flush()
        else:
            self._load_metadata()
            if not self.read_only:
                # The container tells a cache about a disk write only after the image
                # has it, so the flag must already be set when any write can happen.
                self._header.unclean = True
                self._write_header()
                self.storage.flush()

    def _load_metadata(self) -> None:
        h, path = self._header, self.path
        h.check_layout(path)
        file_size = self.storage.size()
        if (h.map_offset + h.map_blocks) * BLOCK > file_size:  # before allocating for it
            raise Corrupted("the file is truncated: the VCI allocation map lies beyond its "
                            "end", path)
        raw = self.storage.read_exact(h.map_offset * BLOCK, h.map_blocks * BLOCK,
                                      "the VCI allocation map")
        self._map = AllocationMap.parse(raw, h.cache_blocks, path)

        def read_node(addr: int) -> bytes:
            return self.storage.read_exact(addr * BLOCK, NODE_BYTES, "a VCI tree node")

        loader = TreeLoader(read_node, h.cache_blocks,
                            self._map.counts[METADATA] // NODE_BLOCKS, path)
        root = loader.load(h.root)
        self._tree = ExtentTree(root, self._take_spare, self._release_node)
        extents = list(self._tree.extents())
        counts = np.array([e[1] for e in extents], dtype=np.int64)
        datas = np.array([e[2] for e in extents], dtype=np.int64)
        nodes = np.array(sorted(loader.seen), dtype=np.int64)
        self._check_allocation(nodes, datas, counts, file_size)
        self._lru = self._check_lru(loader.links, {d: f for f, _, d in extents})

    def _check_allocation(self, nodes: np.ndarray, datas: np.ndarray, counts: np.ndarray,
                          file_size: int) -> None:
        """Header, map, nodes and data must not overlap, must agree with the map's
        bits and counters, and cached data must be in the file."""
        h, path = self._header, self.path
        if datas.size and int((datas + counts).max()) * BLOCK > file_size:
            raise Corrupted("cached data lies beyond the end of the VCI file", path)
        starts = np.concatenate([[0, h.map_offset], nodes, datas])
        lengths = np.concatenate([[HEADER_BLOCKS, h.map_blocks],
                                  np.full(len(nodes), NODE_BLOCKS), counts])
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], starts[order] + lengths[order]
        clash = np.flatnonzero(starts[1:] < ends[:-1])
        if clash.size:
            raise Corrupted(f"two VCI structures share block {int(starts[clash[0] + 1])}",
                            path)
        metadata = HEADER_BLOCKS + h.map_blocks + NODE_BLOCKS * len(nodes)
        amap = self._map
        if (amap.counts[METADATA], amap.counts[DATA]) != (metadata, int(counts.sum())):
            raise Corrupted(f"the VCI allocation map counts {amap.counts[METADATA]} metadata "
                            f"and {amap.counts[DATA]} data blocks, the tree uses {metadata} "
                            f"and {int(counts.sum())}", path)
        wrong = amap.first_mismatch(starts, ends)
        if wrong is not None:
            raise Corrupted(f"the VCI allocation map disagrees with the tree at block {wrong}",
                            path)

    def _check_lru(self, links: dict[int, tuple[int, int]],
                   first_of: dict[int, int]) -> OrderedDict[int, int]:
        """The LRU order from the stored links: one list through every extent."""
        order: OrderedDict[int, int] = OrderedDict()
        if not links:
            return order
        heads = [d for d, (prev, _) in links.items() if prev == 0]
        if len(heads) != 1:
            raise Corrupted(f"the VCI LRU list has {len(heads)} starts instead of one",
                            self.path)
        prev, key = 0, heads[0]
        while key != 0:
            if key not in links or key in order or links[key][0] != prev:
                raise Corrupted(f"the VCI LRU list is broken at extent {key}", self.path)
            order[key] = first_of[key]
            prev, key = key, links[key][1]
        if len(order) != len(links):
            raise Corrupted(f"the VCI LRU list reaches {len(order)} of {len(links)} extents",
                            self.path)
        return order

    def _lay_out_empty(self) -> None:
        """In-memory state of an empty cache: header, map, then the root leaf."""
        h = self._header
        h.map_offset, h.map_blocks = HEADER_BLOCKS, map_blocks_for(h.cache_blocks)
        h.root = h.map_offset + h.map_blocks
        self._map = AllocationMap.empty(h.cache_blocks, (h.map_blocks - 1) * BLOCK)
        self._map.take(0, h.root + NODE_BLOCKS, METADATA)
        self._tree = ExtentTree(Leaf(h.root), self._take_spare, self._release_node)
        self._lru = OrderedDict()
        self._hint = h.root + NODE_BLOCKS

    def _metadata_end(self) -> int:
        return max(node.addr + NODE_BLOCKS for node in self._tree.nodes()) * BLOCK

    # -- writing metadata --------------------------------------------------------------

    def _write_header(self) -> None:
        self.storage.write_at(0, self._header.pack())

    def _write_all(self) -> None:
        self._map.dirty = (0, len(self._map.bits))
        self._write_metadata()

    def _write_metadata(self) -> None:
        """Write every node, map byte and header field that changed."""
        pairs = list(pairwise(self._lru))
        prev = {newer: older for older, newer in pairs}
        next_ = dict(pairs)
        for node in self._tree.nodes():
            raw = node_bytes(node, prev, next_)
            if raw != node.written:
                self.storage.write_at(node.addr * BLOCK, raw)
                node.written = raw
        amap, h = self._map, self._header
        if amap.dirty is not None:
            lo, hi = amap.dirty
            lo, hi = lo // BLOCK * BLOCK, align_up(hi, BLOCK)
            self.storage.write_at((h.map_offset + 1) * BLOCK + lo, amap.bits[lo:hi].tobytes())
            amap.dirty = None
        self.storage.write_at(h.map_offset * BLOCK, amap.header_bytes())
        h.root = self._tree.root.addr
        self._write_header()

    # -- allocation ----------------------------------------------------------------------

    def _take_spare(self) -> int:
        if not self._spares:
            raise InvalidState("internal error: the VCI tree needs a node that was not "
                               "reserved", self.path)
        return self._spares.pop()

    def _release_node(self, addr: int) -> None:
        self._map.release(addr, NODE_BLOCKS, METADATA)

    def _evict_oldest(self) -> bool:
        """Drop the least recently used extent; False when nothing is cached."""
        if not self._lru:
            return False
        data, first = self._lru.popitem(last=False)
        count, _ = self._tree.remove(first)
        self._map.release(data, count, DATA)
        return True

    def _allocate_data(self, count: int) -> tuple[int, int] | None:
        """Blocks for up to ``count`` blocks of data, evicting old extents when the
        cache is full; None when even an empty cache has no room."""
        while True:
            run = self._map.find(count, self._hint, partial=True)
            if run is not None:
                self._map.take(run[0], run[1], DATA)
                self._hint = run[0] + run[1]
                return run
            if not self._evict_oldest():
                return None

    def _add_extent(self, first: int, count: int, data: int, evict: bool) -> bool:
        """Put an extent whose data is written into the tree and the LRU list (most
        recent).  Reserves the nodes a split needs first, evicting if allowed; when
        that fails the extent's blocks are freed and False returned."""
        try:
            while True:
                needed = self._tree.splits_needed(first)
                while len(self._spares) < needed:
                    slot = self._map.find(NODE_BLOCKS)
                    if slot is None:
                        break
                    self._map.take(slot[0], NODE_BLOCKS, METADATA)
                    self._spares.append(slot[0])
                if len(self._spares) >= needed:
                    break
                if not evict or not self._evict_oldest():
                    self._map.release(data, count, DATA)
                    return False
            self._tree.insert(first, count, data)
            self._lru[data] = first
            return True
        finally:
            while self._spares:
                self._release_node(self._spares.pop())

    def _drop(self, start: int, end: int) -> None:
        """Forget every cached block of ``[start, end)``; parts of extents outside
        it stay (the part after it as a new extent, if the tree has room)."""
        for first, count, data in list(self._tree.overlapping(start, end)):
            cut_from, cut_to = max(first, start), min(first + count, end)
            self._map.release(data + cut_from - first, cut_to - cut_from, DATA)
            if cut_from > first:
                self._tree.set_count(first, cut_from - first)
            else:
                self._tree.remove(first)
                del self._lru[data]
            if cut_to < first + count:
                self._add_extent(cut_to, first + count - cut_to, data + cut_to - first,
                                 evict=False)

    # -- the cache protocol ------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        return bool(self.open_flags & OpenFlags.READONLY)

    def lookup(self, offset: int, length: int) -> tuple[bool, int]:
        end = offset + length
        if self._broken or self._tree.empty:
            return False, length
        block, end_block = offset // BLOCK, -(-end // BLOCK)
        reach = None
        for first, count, _ in self._tree.overlapping(block, end_block):
            if reach is None:
                if first > block:
                    return False, min(length, first * BLOCK - offset)
            elif first != reach:
                break
            reach = first + count
            if reach * BLOCK >= end:
                break
        if reach is None:
            return False, length
        return True, min(end, reach * BLOCK) - offset

    def read_into(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        pos = offset
        for first, count, data in list(self._tree.overlapping(offset // BLOCK,
                                                              -(-end // BLOCK))):
            start, stop = first * BLOCK, min((first + count) * BLOCK, end)
            if start > pos:
                break
            part = buf[pos - offset:stop - offset]
            try:
                got = self.storage.readinto_at(data * BLOCK + pos - start, part)
                if got != len(part):
                    raise Corrupted(f"cached data at block {data} lies beyond the end of "
                                    f"the file", self.path)
            except VDError:
                self._broken = True  # later reads go to the disk itself
                raise
            self._lru.move_to_end(data)
            pos = stop
        if pos < end:
            raise InvalidState(f"internal error: bytes {pos}..{end} are not cached",
                               self.path)

    def store(self, offset: int, data: memoryview) -> None:
        if self.read_only or self._broken:
            return
        start, end = -(-offset // BLOCK), (offset + len(data)) // BLOCK
        if start >= end:
            return  # only whole blocks are kept
        # What exceeds the cache would only evict the start of this very store.
        start = max(start, end - (self._map.managed - self._map.counts[METADATA]))
        try:
            pos = start
            gaps = []
            for first, count, _ in self._tree.overlapping(start, end):
                if first > pos:
                    gaps.append((pos, first))
                pos = max(pos, first + count)
            if pos < end:
                gaps.append((pos, end))
            for gap_start, gap_end in gaps:
                view = data[gap_start * BLOCK - offset:gap_end * BLOCK - offset]
                if not self._fill(gap_start, gap_end, view):
                    return
        except Exception as exc:  # a cache failure must not fail the disk read
            self._fail("storing", exc)

    def _fill(self, start: int, end: int, data: memoryview) -> bool:
        """Cache blocks ``[start, end)`` (none of them cached); False when full."""
        pos = start
        while pos < end:
            at = (pos - start) * BLOCK
            before = self._tree.find(pos - 1) if pos else None
            if before is not None and before[1] < MAX_EXTENT_BLOCKS:
                # Grow the extent that ends here when the blocks after its data are free.
                first, count, where = before
                grow = self._map.free_at(where + count,
                                         min(end - pos, MAX_EXTENT_BLOCKS - count))
                if grow:
                    self._map.take(where + count, grow, DATA)
                    self.storage.write_at((where + count) * BLOCK,
                                          data[at:at + grow * BLOCK])
                    self._tree.set_count(first, count + grow)
                    self._lru.move_to_end(where)
                    self._hint = where + count + grow
                    pos += grow
                    continue
            run = self._allocate_data(min(end - pos, MAX_EXTENT_BLOCKS))
            if run is None:
                return False
            where, count = run
            self.storage.write_at(where * BLOCK, data[at:at + count * BLOCK])
            if not self._add_extent(pos, count, where, evict=True):
                return False
            pos += count
        return True

    def update(self, offset: int, data: memoryview | None, length: int) -> None:
        if length <= 0 or self._broken or self._tree.empty:
            return
        end = offset + length
        try:
            if data is None or self.read_only:
                self._drop(offset // BLOCK, -(-end // BLOCK))
                return
            # Blocks only partly rewritten are forgotten; whole ones are rewritten.
            whole_start, whole_end = -(-offset // BLOCK), end // BLOCK
            if offset % BLOCK:
                self._drop(offset // BLOCK, offset // BLOCK + 1)
            if end % BLOCK and end // BLOCK >= whole_start:
                self._drop(end // BLOCK, end // BLOCK + 1)
            for first, count, where in list(self._tree.overlapping(whole_start, whole_end)):
                lo, hi = max(first, whole_start), min(first + count, whole_end)
                self.storage.write_at((where + lo - first) * BLOCK,
                                      data[lo * BLOCK - offset:hi * BLOCK - offset])
                self._lru.move_to_end(where)
        except Exception as exc:  # the disk write succeeded: never fail it here
            self._fail("updating", exc)

    def _fail(self, what: str, exc: Exception) -> None:
        """Stop using the cache after an error (it may now be inconsistent)."""
        self._broken = True
        log.warning("%s: %s the cache failed (%s); the cache is no longer used and will "
                    "be emptied when next opened", self.path, what, exc)

    # -- identity and lifetime ------------------------------------------------------------

    @property
    def uuid(self) -> uuidlib.UUID:
        return self._header.uuid

    @property
    def modification_uuid(self) -> uuidlib.UUID:
        return self._header.modification_uuid

    @modification_uuid.setter
    def modification_uuid(self, value: uuidlib.UUID) -> None:
        if self.read_only:
            raise ReadOnly("the cache is opened read-only", self.path)
        self._header.modification_uuid = value
        self._write_header()

    @property
    def cache_type(self) -> str:
        """``"dynamic"`` or ``"fixed"``."""
        return TYPE_NAMES[self._header.type]

    @property
    def max_size(self) -> int:
        """The cache's size limit in bytes, metadata included."""
        return self._header.cache_blocks * BLOCK

    def flush(self) -> None:
        if self.read_only or self._closed:
            return
        if not self._broken:
            self._write_metadata()
        self.storage.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.read_only:
                if not self._broken:
                    self._write_metadata()
                    self.storage.flush()
                    # Only now does the file describe its content completely.
                    self._header.unclean = False
                self._write_header()
                self.storage.flush()
        finally:
            self.storage.close()
