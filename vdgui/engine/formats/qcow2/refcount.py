"""QCOW2 reference counts: the refcount table, refcount blocks and cluster allocation.

Every host cluster in use has a count of the references to it.  The counts live in
refcount blocks (one cluster each, ``cluster_size * 8 / refcount_bits`` counts of
1 to 64 bits, big-endian; widths under 8 bits fill each byte from its least
significant bits), found through the refcount table (u64 offsets, 0 = no block:
all its counts are 0).

Allocation finds free clusters (count 0) from a moving hint, creates refcount
blocks where none count the chosen clusters yet (a new block may count itself) and
grows the table when it is too short: the new table and the blocks that count it
go to the end of the file, the header is switched to it in one write, and the old
table is freed.  Clusters freed during a session are not handed out again before
the image is reopened (or a compaction made their release durable), so that a crash
can never leave an old reference pointing at reused data.

Compaction moves the table and the blocks themselves (copy, count, repoint, uncount)
and drops blocks that count nothing any more.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...blockmap import FlatTable
from ...errors import Corrupted
from ...io import Storage
from ...types import SECTOR

#: Bits 9-63 of a refcount table entry hold the block offset; bits 0-8 are reserved.
TABLE_OFFSET_MASK = 0xFFFFFFFFFFFFFE00

_WIDE_DTYPES = {8: np.dtype("u1"), 16: np.dtype(">u2"), 32: np.dtype(">u4"), 64: np.dtype(">u8")}

#: Bytes of refcount blocks kept in memory.
CACHE_BYTES = 64 << 20


def decode(raw: np.ndarray, bits: int, start: int, count: int) -> np.ndarray:
    """Counts ``start .. start+count-1`` of a refcount block, as native unsigned
    integers no wider than the counts (a whole block of 1-bit counts in 2 MiB
    clusters is 16 million of them)."""
    if bits >= 8:
        wide = _WIDE_DTYPES[bits]
        return raw.view(wide)[start:start + count].astype(wide.newbyteorder("="))
    per = 8 // bits
    b0, b1 = start // per, (start + count - 1) // per + 1
    shifts = (np.arange(per, dtype=np.uint8) * bits)
    values = (raw[b0:b1, None] >> shifts) & np.uint8((1 << bits) - 1)
    skip = start - b0 * per
    return values.ravel()[skip:skip + count]


def encode(raw: np.ndarray, bits: int, start: int, values: np.ndarray) -> tuple[int, int]:
    """Store counts from ``start``; returns the byte range of ``raw`` that changed."""
    count = len(values)
    if bits >= 8:
        item = bits // 8
        raw.view(_WIDE_DTYPES[bits])[start:start + count] = values
        return start * item, (start + count) * item
    per = 8 // bits
    b0, b1 = start // per, (start + count - 1) // per + 1
    full = decode(raw, bits, b0 * per, (b1 - b0) * per)
    skip = start - b0 * per
    full[skip:skip + count] = values
    shifts = (np.arange(per, dtype=np.uint8) * bits)
    raw[b0:b1] = np.bitwise_or.reduce(full.reshape(-1, per) << shifts, axis=1)
    return b0, b1


def encode_block(counts: np.ndarray, bits: int, cluster_size: int) -> bytes:
    """A whole refcount block holding ``counts`` (padded with zeros)."""
    raw = np.zeros(cluster_size, dtype=np.uint8)
    if len(counts):
        encode(raw, bits, 0, counts)
    return raw.tobytes()


def plan_area(first: int, covered_before: Callable[[int], bool], table_entries: int,
              cluster_size: int, per_block: int) -> tuple[int, int, int]:
    """Size a run of new refcount blocks followed by a new refcount table at ``first``.

    The new blocks must count every block index of the area that has no block yet
    (``covered_before(index)`` says which do) and the table must hold at least
    ``table_entries`` entries and every block index up to the area's end.  Returns
    ``(blocks, table_clusters, table_entries)``; the blocks are the missing indices
    of the area's range, in order.
    """
    blocks = 0
    table_clusters = -(-max(table_entries, 1) * 8 // cluster_size)
    while True:
        end = first + blocks + table_clusters
        indices = range(first // per_block, (end - 1) // per_block + 1)
        need_blocks = sum(1 for b in indices if not covered_before(b))
        entries = max(table_entries, indices[-1] + 1)
        need_table = -(-entries * 8 // cluster_size)
        if (need_blocks, need_table) == (blocks, table_clusters):
            return blocks, table_clusters, entries
        blocks, table_clusters = max(blocks, need_blocks), max(table_clusters, need_table)


class Refcounts:
    """The refcount structures of an image opened for writing.

    ``on_table_moved(offset, clusters)`` must record a new table location in the
    header; ``in_use(first, count)`` names metadata overlapping clusters (or returns
    None) and guards allocation against damaged refcounts.
    """

    def __init__(self, storage: Storage, cluster_bits: int, refcount_order: int,
                 table_offset: int, table_clusters: int,
                 on_table_moved: Callable[[int, int], None],
                 in_use: Callable[[int, int], str | None]) -> None:
        self.storage = storage
        self.path = storage.path
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.bits = 1 << refcount_order
        self.max_count = (1 << self.bits) - 1
        self.per_block = self.cluster_size * 8 // self.bits
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        self.table = FlatTable(storage, table_offset, table_clusters * self.cluster_size // 8,
                               ">u8", "QCOW2 refcount table")
        self._on_table_moved = on_table_moved
        self._in_use = in_use
        self._blocks: dict[int, np.ndarray] = {}
        self._capacity = max(16, CACHE_BYTES // self.cluster_size)
        self._hint = 1
        self._validate_table()

    def _validate_table(self) -> None:
        offsets = self.table.entries & np.uint64(TABLE_OFFSET_MASK)
        bad = np.flatnonzero((self.table.entries & np.uint64(0x1FF))
                             | (offsets % np.uint64(self.cluster_size)))
        if bad.size:
            raise Corrupted(f"refcount table entry {int(bad[0])} "
                            f"({int(self.table.entries[bad[0]]):#x}) is not a cluster-aligned "
                            f"offset", self.path)

    # -- blocks ------------------------------------------------------------------------

    def block_offset(self, index: int) -> int:
        """File offset of refcount block ``index``; 0 when it does not exist."""
        if index >= len(self.table):
            return 0
        return int(self.table.entries[index]) & TABLE_OFFSET_MASK

    def block_clusters(self) -> np.ndarray:
        """Cluster indices of every refcount block."""
        offsets = self.table.entries & np.uint64(TABLE_OFFSET_MASK)
        return (offsets[offsets != 0] >> np.uint64(self.cluster_bits)).astype(np.int64)

    def _block(self, index: int) -> np.ndarray:
        block = self._blocks.pop(index, None)
        if block is None:
            offset = self.block_offset(index)
            if offset < self.cluster_size:
                raise Corrupted(f"refcount block {index} is at offset {offset:#x}, inside the "
                                f"header", self.path)
            raw = self.storage.read_exact(offset, self.cluster_size, "a QCOW2 refcount block")
            block = np.frombuffer(raw, dtype=np.uint8).copy()
            if len(self._blocks) >= self._capacity:
                self._blocks.pop(next(iter(self._blocks)))
        self._blocks[index] = block
        return block

    def _persist(self, index: int, start: int, stop: int) -> None:
        """Write the sectors of block ``index`` holding bytes ``start .. stop-1``."""
        a = start // SECTOR * SECTOR
        b = min(-(-stop // SECTOR) * SECTOR, self.cluster_size)
        self.storage.write_at(self.block_offset(index) + a, self._blocks[index][a:b].tobytes())

    # -- queries -----------------------------------------------------------------------

    def get(self, cluster: int) -> int:
        return int(self.get_many(np.array([cluster], dtype=np.int64))[0])

    def get_many(self, clusters: np.ndarray) -> np.ndarray:
        """Counts of the given clusters (any order)."""
        clusters = np.asarray(clusters, dtype=np.int64)
        out = np.zeros(len(clusters), dtype=np.uint64)
        blocks = clusters // self.per_block
        for b in np.unique(blocks).tolist():
            if not self.block_offset(b):
                continue
            where = np.flatnonzero(blocks == b)
            slots = clusters[where] - b * self.per_block
            lo = int(slots.min())
            counts = decode(self._block(b), self.bits, lo, int(slots.max()) + 1 - lo)
            out[where] = counts[slots - lo]
        return out

    def last_used(self) -> int:
        """The last cluster with a non-zero count (0 when none has one)."""
        for b in range(len(self.table) - 1, -1, -1):
            if self.block_offset(b):
                nonzero = np.flatnonzero(decode(self._block(b), self.bits, 0, self.per_block))
                if nonzero.size:
                    return b * self.per_block + int(nonzero[-1])
        return 0

    def end_cluster(self) -> int:
        """First cluster from which on every cluster is free and beyond the file."""
        end = -(-self.storage.size() // self.cluster_size)
        for b in range(len(self.table) - 1, -1, -1):
            if not self.block_offset(b):
                continue
            nonzero = np.flatnonzero(decode(self._block(b), self.bits, 0, self.per_block))
            if nonzero.size:
                return max(end, b * self.per_block + int(nonzero[-1]) + 1)
        return end

    # -- changing counts ---------------------------------------------------------------

    def adjust(self, clusters: np.ndarray, delta: int) -> None:
        """Add ``delta`` to the count of each listed cluster (repeats add up).

        Every block involved must exist (clusters handed out by :meth:`reserve`, or
        clusters that already have a count).
        """
        clusters = np.asarray(clusters, dtype=np.int64)
        if not clusters.size:
            return
        unique, repeats = np.unique(clusters, return_counts=True)
        blocks = unique // self.per_block
        for b in np.unique(blocks).tolist():
            sel = blocks == b
            slots = unique[sel] - b * self.per_block
            if not self.block_offset(b):
                raise Corrupted(f"cluster {int(unique[sel][0])} has no refcount block", self.path)
            raw = self._block(b)
            lo, hi = int(slots[0]), int(slots[-1]) + 1
            counts = decode(raw, self.bits, lo, hi - lo).astype(np.int64)
            new = counts[slots - lo] + delta * repeats[sel].astype(np.int64)
            if new.min() < 0 or new.max() > self.max_count:
                what = "below zero" if new.min() < 0 else f"above {self.max_count}"
                raise Corrupted(f"the refcount of a cluster in block {b} would go {what}; "
                                f"the refcounts are damaged (qemu-img check -r all repairs "
                                f"them)", self.path)
            counts[slots - lo] = new
            start, stop = encode(raw, self.bits, lo, counts.astype(np.uint64))
            self._persist(b, start, stop)
            freed = unique[sel][new == 0]
            if delta < 0 and freed.size:
                # Freed clusters are reused only after a reopen (see the module notes).
                self._hint = max(self._hint, int(freed[-1]) + 1)

    def clear(self, clusters: np.ndarray) -> None:
        """Set the counts of clusters nothing refers to (leaks) to zero."""
        clusters = np.unique(np.asarray(clusters, dtype=np.int64))
        blocks = clusters // self.per_block
        for b in np.unique(blocks).tolist():
            if not self.block_offset(b):
                continue
            slots = clusters[blocks == b] - b * self.per_block
            raw = self._block(b)
            lo, hi = int(slots[0]), int(slots[-1]) + 1
            counts = decode(raw, self.bits, lo, hi - lo).astype(np.uint64)
            counts[slots - lo] = 0
            start, stop = encode(raw, self.bits, lo, counts)
            self._persist(b, start, stop)
        if clusters.size:
            self._hint = max(self._hint, int(clusters[-1]) + 1)

    def increment(self, first: int, count: int) -> None:
        self.adjust(np.arange(first, first + count, dtype=np.int64), 1)

    # -- allocation --------------------------------------------------------------------

    def forget_freed(self) -> None:
        """Allow reusing every free cluster again: the caller made durable that nothing
        refers to the clusters freed so far (see the module notes)."""
        self._hint = 1

    def reserve(self, count: int) -> int:
        """First of ``count`` contiguous free clusters whose refcount blocks exist.

        The clusters are not counted yet: write them, then :meth:`increment`, before
        reserving anything else.
        """
        while True:
            start = self._find_free(count)
            missing = next((b for b in range(start // self.per_block,
                                             (start + count - 1) // self.per_block + 1)
                            if not self.block_offset(b)), None)
            if missing is None:
                self._hint = start
                return start
            self._add_block(missing)

    def _find_free(self, count: int) -> int:
        """Start of the first run of ``count`` clusters with count 0 from the hint."""
        per = self.per_block
        pos = self._hint
        run_start, run_len = pos, 0
        while run_len < count:
            b = pos // per
            block_end = (b + 1) * per
            if not self.block_offset(b):
                if not run_len:
                    run_start = pos
                run_len += block_end - pos
            else:
                free = decode(self._block(b), self.bits, pos - b * per, block_end - pos) == 0
                edges = np.diff(np.concatenate(([0], free.view(np.int8), [0])))
                starts = np.flatnonzero(edges == 1)
                lengths = np.flatnonzero(edges == -1) - starts
                starts += pos
                if run_len and starts.size and starts[0] == pos:
                    starts[0], lengths[0] = run_start, lengths[0] + run_len
                fits = np.flatnonzero(lengths >= count)
                if fits.size:
                    run_start, run_len = int(starts[fits[0]]), count
                elif starts.size and starts[-1] + lengths[-1] == block_end:
                    run_start, run_len = int(starts[-1]), int(lengths[-1])
                else:
                    run_len = 0
            pos = block_end
        clash = self._in_use(run_start, count)
        if clash:
            raise Corrupted(f"the refcounts say clusters {run_start}...{run_start + count - 1} "
                            f"are free, but they hold {clash}; the refcounts are damaged "
                            f"(qemu-img check -r all repairs them)", self.path)
        return run_start

    def _add_block(self, index: int) -> None:
        """Create refcount block ``index`` (or grow the table so it can have one)."""
        if index >= len(self.table):
            self._grow_table(index + 1)
            return
        cluster = self._find_free(1)
        home = cluster // self.per_block
        offset = cluster << self.cluster_bits
        if home == index:
            # The new block counts itself.
            raw = np.zeros(self.cluster_size, dtype=np.uint8)
            encode(raw, self.bits, cluster - index * self.per_block,
                   np.ones(1, dtype=np.uint64))
            self.storage.write_at(offset, raw.tobytes())
        elif not self.block_offset(home):
            self._add_block(home)  # the caller retries with the block that counts it
            return
        else:
            raw = np.zeros(self.cluster_size, dtype=np.uint8)
            self.storage.write_at(offset, raw.tobytes())
            self.increment(cluster, 1)
        self._blocks[index] = raw
        self.table.entries[index] = offset
        self.table.persist(index, 1)

    def _grow_table(self, min_entries: int) -> None:
        """Move the table to the end of the file with room for ``min_entries``."""
        cs, per = self.cluster_size, self.per_block
        old_len = len(self.table)
        first = self.end_cluster()
        wanted = max(min_entries, 2 * old_len)
        n_blocks, n_table, entries = plan_area(first, lambda b: bool(self.block_offset(b)),
                                               wanted, cs, per)
        area_end = first + n_blocks + n_table
        table_cluster = first + n_blocks
        entries = n_table * cs // 8
        new_table = np.zeros(entries, dtype=">u8")
        new_table[:old_len] = self.table.entries
        # New blocks, in index order, each counting the area clusters it covers.
        indices = [b for b in range(first // per, (area_end - 1) // per + 1)
                   if not self.block_offset(b)]
        existing = []
        for i, b in enumerate(indices):
            cluster = first + i
            lo, hi = max(first, b * per), min(area_end, (b + 1) * per)
            counts = np.zeros(per, dtype=np.uint64)
            counts[lo - b * per:hi - b * per] = 1
            raw = np.frombuffer(encode_block(counts, self.bits, cs), dtype=np.uint8).copy()
            self.storage.write_at(cluster * cs, raw.tobytes())
            new_table[b] = cluster * cs
        for b in range(first // per, (area_end - 1) // per + 1):
            if b not in indices:
                existing.extend(range(max(first, b * per), min(area_end, (b + 1) * per)))
        self.storage.write_at(table_cluster * cs, new_table.tobytes())
        if existing:
            self.adjust(np.array(existing, dtype=np.int64), 1)
        # Switch the header to the new table, then free the old one (a crash in
        # between leaks the old table, never loses a count).
        old_first = self.table_offset // cs
        old_clusters = self.table_clusters
        self._on_table_moved(table_cluster * cs, n_table)
        self.table = FlatTable.new(self.storage, table_cluster * cs, entries, ">u8", 0,
                                   "QCOW2 refcount table")
        self.table.entries[:] = new_table
        self.table_offset, self.table_clusters = table_cluster * cs, n_table
        self.adjust(np.arange(old_first, old_first + old_clusters, dtype=np.int64), -1)
        self._hint = max(self._hint, area_end)

    # -- moving the structures (compaction) ----------------------------------------------

    def move_table(self, first: int) -> None:
        """Move the table to the free clusters from ``first`` on, which existing blocks
        count: copy, count, switch the header, uncount the old place (a crash in
        between leaks one copy, never loses the table)."""
        cs = self.cluster_size
        old_first, clusters = self.table_offset // cs, self.table_clusters
        self.storage.write_at(first * cs, self.table.tobytes())
        self.increment(first, clusters)
        self.storage.flush()
        self._on_table_moved(first * cs, clusters)
        self.storage.flush()
        self.table.offset = self.table_offset = first * cs
        self.adjust(np.arange(old_first, old_first + clusters, dtype=np.int64), -1)

    def move_block(self, index: int, cluster: int) -> None:
        """Move block ``index`` to the free ``cluster`` the same way."""
        cs, per = self.cluster_size, self.per_block
        old = self.block_offset(index) >> self.cluster_bits
        block = self._block(index).copy()
        if cluster // per == index:  # the copy counts itself
            encode(block, self.bits, cluster - index * per, np.ones(1, dtype=np.uint64))
        self.storage.write_at(cluster * cs, block.tobytes())
        if cluster // per != index:
            self.increment(cluster, 1)
        self.storage.flush()
        self._blocks[index] = block
        self.table.entries[index] = cluster * cs
        self.table.persist(index, 1)
        self.storage.flush()
        self.adjust(np.array([old], dtype=np.int64), -1)

    def drop_blocks(self, indices: list[int]) -> None:
        """Remove the last blocks of the table, which count nothing any more but
        themselves and each other.

        Their entries are cleared in one write: cleared one by one, a remaining block
        could lose the count of its own cluster.  Those lying where a kept block
        counts them are uncounted afterwards (a crash in between leaks them).
        """
        per = self.per_block
        first, last = min(indices), max(indices)
        clusters = np.array([self.block_offset(i) >> self.cluster_bits for i in indices],
                            dtype=np.int64)
        for index in range(first, last + 1):
            if not self.block_offset(index):
                continue
            counted = np.flatnonzero(decode(self._block(index), self.bits, 0, per)) + index * per
            if index not in indices or np.setdiff1d(counted, clusters).size:
                raise Corrupted(f"refcount block {index} still counts clusters in use",
                                self.path)
        self.table.entries[first:last + 1] = 0
        self.storage.write_at(self.table_offset + 8 * first, bytes(8 * (last + 1 - first)))
        for index in indices:
            self._blocks.pop(index, None)
        self.storage.flush()
        kept = clusters[clusters // per < first]
        if kept.size:
            self.adjust(kept, -1)


def write_fresh_structures(storage: Storage, counts: np.ndarray, cluster_bits: int,
                           refcount_order: int) -> tuple[int, int, np.ndarray]:
    """Write refcount blocks and a table for ``counts`` after the end of the file.

    Returns the table's offset, its size in clusters and the counts including the
    new structures themselves.
    """
    cs, order = 1 << cluster_bits, refcount_order
    per_block = cs * 8 >> order
    if counts.size and counts.max() > (1 << (1 << order)) - 1:
        cluster = int(np.argmax(counts))
        raise Corrupted(f"cluster {cluster} is referenced {int(counts[cluster])} times, more "
                        f"than {1 << order}-bit refcounts can count", storage.path)
    first = len(counts)
    blocks = table_clusters = 1
    while True:
        total = first + blocks + table_clusters
        need_blocks = -(-total // per_block)
        need_table = -(-need_blocks * 8 // cs)
        if (need_blocks, need_table) == (blocks, table_clusters):
            break
        blocks, table_clusters = max(blocks, need_blocks), max(table_clusters, need_table)
    full = np.zeros(total, dtype=counts.dtype)
    full[:first] = counts
    full[first:] = 1
    storage.write_at(first * cs, b"".join(
        encode_block(full[b * per_block:(b + 1) * per_block], 1 << order, cs)
        for b in range(blocks)))
    table = np.zeros(table_clusters * cs // 8, dtype=">u8")
    table[:blocks] = np.arange(first, first + blocks, dtype=np.uint64) * cs
    storage.write_at((first + blocks) * cs, table.tobytes())
    return (first + blocks) * cs, table_clusters, full
