"""QCOW2 address translation: the L1 table, L2 tables and what their entries mean.

A guest cluster ``c`` is found through ``L1[c // l2_entries]`` (the offset of an
L2 table, bit 63 "copied") and entry ``c % l2_entries`` of that table.  A standard
L2 entry holds a host cluster offset (bits 9-55), the ZERO flag (bit 0, version 3),
COMPRESSED (bit 62) and COPIED (bit 63, refcount exactly 1: writable in place).
Compressed entries hold a byte offset and a sector count instead.  With extended
L2 entries (incompatible bit 4) every entry has a second word: a bitmap of 32
subclusters "allocated here" (bits 0-31) and "reads as zeros" (bits 32-63).

:class:`ClusterMap` classifies ranges of allocation units (clusters, or subclusters
with extended L2) into kinds, vectorised with numpy, for the block map machinery.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...blockmap import DATA, ZERO, FlatTable, TableCache, frozen
from ...errors import Corrupted
from ...io import Storage
from .header import Header

OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO_FLAG = 1
#: Bits an L1 entry and a standard L2 entry must leave clear.
L1_RESERVED = 0x7F000000000001FF
L2_RESERVED = 0x3F000000000001FE
#: A subcluster bitmap word: "allocated" in the low half, "reads as zeros" above.
SUBCLUSTERS_ALLOCATED = 0x00000000FFFFFFFF
SUBCLUSTERS_ZERO = 0xFFFFFFFF00000000

_U = np.uint64
_OFFSET_MASK = _U(OFFSET_MASK)
_COPIED = _U(COPIED)
_COMPRESSED = _U(COMPRESSED)

# Kinds of allocation units; 0..3 equal the block map states FREE, ZERO, DATA,
# ALLOCATED_ZERO.
UNALLOCATED, ZERO_PLAIN, NORMAL, ZERO_ALLOC, COMPRESSED_KIND = 0, 1, 2, 3, 4

SUBCLUSTERS = 32
#: Bytes of L2 tables kept in memory.
L2_CACHE_BYTES = 32 << 20


def classify(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kinds and host byte offsets of standard L2 entries (offset -1 where none)."""
    compressed = (entries & _COMPRESSED) != 0
    offsets = (entries & _OFFSET_MASK).astype(np.int64)
    has_offset = (offsets != 0) & ~compressed
    zero = ((entries & _U(ZERO_FLAG)) != 0) & ~compressed
    kinds = np.where(compressed, COMPRESSED_KIND,
                     np.where(zero, np.where(has_offset, ZERO_ALLOC, ZERO_PLAIN),
                              np.where(has_offset, NORMAL, UNALLOCATED))).astype(np.uint8)
    return kinds, np.where(has_offset, offsets, -1)


def compressed_spans(entries: np.ndarray, cluster_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first byte, byte count)`` of the sectors compressed entries occupy.

    The stream starts at the entry's byte offset; the host clusters it touches
    run from the sector holding that offset to the last sector counted.
    """
    x = 62 - (cluster_bits - 8)
    entries = np.asarray(entries, dtype=np.uint64)
    offsets = (entries & _U((1 << x) - 1)).astype(np.int64)
    sectors = ((entries >> _U(x)) & _U((1 << (cluster_bits - 8)) - 1)).astype(np.int64) + 1
    start = offsets & ~511
    return start, sectors * 512


def span_clusters(start: np.ndarray, length: np.ndarray, cluster_bits: int) -> np.ndarray:
    """Every cluster the byte ranges touch (with repeats), for ranges of any length."""
    first = start >> cluster_bits
    last = (start + length - 1) >> cluster_bits
    spans = [first + k for k in range(int((last - first).max(initial=0)) + 1)]
    return np.concatenate([s[s <= last] for s in spans]) if spans else first


class Intervals:
    """Sorted, merged ranges of host clusters with labels (metadata in the file)."""

    def __init__(self, ranges: list[tuple[int, int, str]]) -> None:
        self.labelled = sorted((a, b, what) for a, b, what in ranges if b > a)
        starts: list[int] = []
        ends: list[int] = []
        for a, b, _ in self.labelled:
            if starts and a <= ends[-1]:
                ends[-1] = max(ends[-1], b)
            else:
                starts.append(a)
                ends.append(b)
        self.starts = np.array(starts, dtype=np.int64)
        self.ends = np.array(ends, dtype=np.int64)

    def contains(self, clusters: np.ndarray) -> np.ndarray:
        """Which of ``clusters`` fall in a range."""
        clusters = np.asarray(clusters, dtype=np.int64)
        i = np.searchsorted(self.starts, clusters, side="right") - 1
        return (i >= 0) & (clusters < self.ends[np.maximum(i, 0)]) if self.starts.size \
            else np.zeros(clusters.shape, dtype=bool)

    def overlap(self, first: int, count: int) -> str | None:
        """What clusters ``first .. first+count-1`` overlap, or None."""
        i = int(np.searchsorted(self.starts, first + count, side="left")) - 1
        if i < 0 or self.ends[i] <= first:
            return None
        for a, b, what in self.labelled:
            if a < first + count and first < b:
                return what
        return "metadata"  # pragma: no cover - merged ranges always have a label

    def label(self, cluster: int) -> str:
        return self.overlap(cluster, 1) or "metadata"


class Units(NamedTuple):
    """What :meth:`ClusterMap.lookup` says about a range of allocation units."""

    kinds: np.ndarray
    offsets: np.ndarray   # host byte offset of each unit's data, -1 where none
    writable: np.ndarray  # may be written in place (COPIED in L1 and L2)
    entries: np.ndarray   # the raw L2 entries (for compressed units)


class _Decoded(NamedTuple):
    """One L2 table of standard entries as lookups need it, derived once."""

    entries: np.ndarray
    kinds: np.ndarray
    offsets: np.ndarray
    copied: np.ndarray
    status: np.ndarray    # block map states, compressed units as DATA
    read: np.ndarray      # block map states, compressed units as ZERO
    suspect: bool         # some entry fails the checks a lookup makes


class ClusterMap:
    """The L1 table (in memory) and an LRU of L2 tables of one image.

    With standard L2 entries every table is classified once, when it is loaded
    (or changed), and lookups slice the result.
    """

    def __init__(self, storage: Storage, header: Header, path: str,
                 static_metadata: Intervals) -> None:
        self.storage = storage
        self.path = path
        self.cluster_bits = header.cluster_bits
        self.cluster_size = header.cluster_size
        self.version = header.version
        self.extended = header.extended_l2
        self.l2_entries = header.l2_entries
        #: Allocation units are subclusters with extended L2 entries.
        self.unit_shift = 5 if self.extended else 0
        self.unit_size = self.cluster_size >> self.unit_shift
        self._static_metadata = static_metadata
        self.l1 = FlatTable(storage, header.l1_table_offset, header.l1_size, ">u8",
                            "QCOW2 L1 table")
        self.l2 = TableCache(storage, self.cluster_size // 8, ">u8",
                             capacity=max(16, L2_CACHE_BYTES // self.cluster_size),
                             what="QCOW2 L2 table",
                             decode=None if self.extended else self._decode)
        self._compressed_shift = 62 - (self.cluster_bits - 8)
        self._checked_l2: set[int] = set()
        #: What lookups see where an L1 entry has no L2 table.
        self._no_table = self._decode(frozen(np.zeros(self.l2_entries, dtype=">u8")))

    @property
    def static_metadata(self) -> Intervals:
        """Fixed structures no L2 entry may point into."""
        return self._static_metadata

    @static_metadata.setter
    def static_metadata(self, value: Intervals) -> None:
        self._static_metadata = value
        self.l2.drop_decoded()  # which entries are suspect may have changed

    # -- tables ------------------------------------------------------------------------

    def l2_table_offset(self, l1_index: int) -> int:
        """Offset of the L2 table of ``l1_index`` (0: none), validated."""
        if l1_index >= len(self.l1):
            return 0
        offset = int(self.l1.entries[l1_index]) & OFFSET_MASK
        if offset and offset not in self._checked_l2:
            if offset % self.cluster_size:
                raise Corrupted(f"L1 entry {l1_index} points to {offset:#x}, which is not "
                                f"aligned to a cluster", self.path)
            clash = self.static_metadata.overlap(offset >> self.cluster_bits, 1)
            if clash:
                raise Corrupted(f"L1 entry {l1_index} points into the {clash} ({offset:#x})",
                                self.path)
            self._checked_l2.add(offset)
        return offset

    def forget_checked(self, offset: int) -> None:
        """The L2 table at ``offset`` moved away: validate whatever comes there anew."""
        self._checked_l2.discard(offset)

    def l1_copied(self, l1_index: int) -> bool:
        return bool(int(self.l1.entries[l1_index]) & COPIED)

    def set_l1(self, l1_index: int, value: int) -> None:
        self.l1.entries[l1_index] = value
        self.l1.persist(l1_index, 1)

    def active_l2_clusters(self) -> np.ndarray:
        offsets = self.l1.entries & _OFFSET_MASK
        return (offsets[offsets != 0] >> _U(self.cluster_bits)).astype(np.int64)

    def _cluster_entries(self, first: int, count: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw extended L2 entries and subcluster bitmaps of clusters ``first..``, and
        the COPIED flag of the L1 entry above each."""
        entries = np.zeros(count, dtype=np.uint64)
        bitmaps = np.zeros(count, dtype=np.uint64)
        l1_copied = np.zeros(count, dtype=bool)
        per = self.l2_entries
        pos = first
        while pos < first + count:
            index, slot = divmod(pos, per)
            take = min(first + count - pos, per - slot)
            offset = self.l2_table_offset(index)
            if offset:
                table = self.l2.get(offset)
                at = pos - first
                entries[at:at + take] = table[2 * slot:2 * (slot + take):2]
                bitmaps[at:at + take] = table[2 * slot + 1:2 * (slot + take):2]
                l1_copied[at:at + take] = self.l1_copied(index)
            pos += take
        return entries, bitmaps, l1_copied

    # -- classification ----------------------------------------------------------------

    @staticmethod
    def classify(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kinds and host byte offsets of standard L2 entries (offset -1 where none)."""
        return classify(entries)

    def _decode(self, entries: np.ndarray) -> _Decoded:
        kinds, offsets = classify(entries)
        compressed = kinds == COMPRESSED_KIND
        try:
            self._check_units(kinds, offsets)
            suspect = False
        except Corrupted:
            suspect = True  # lookups of this table check their range and say what is wrong
        return _Decoded(entries, frozen(kinds), frozen(offsets),
                        frozen((entries & _COPIED) != 0),
                        frozen(np.where(compressed, DATA, kinds).astype(np.uint8)),
                        frozen(np.where(compressed, ZERO, kinds).astype(np.uint8)), suspect)

    def _tables(self, first: int, count: int) -> list[tuple[_Decoded, int, int, bool]]:
        """``(table, first slot, slots, L1 COPIED)`` per L2 table clusters ``first..``
        touch (standard entries)."""
        per = self.l2_entries
        pieces = []
        pos, end = first, first + count
        while pos < end:
            index, slot = divmod(pos, per)
            take = min(end - pos, per - slot)
            offset = self.l2_table_offset(index)
            if offset:
                pieces.append((self.l2.decoded(offset), slot, take, self.l1_copied(index)))
            else:
                pieces.append((self._no_table, slot, take, False))
            pos += take
        return pieces

    @staticmethod
    def _field(pieces: list[tuple[_Decoded, int, int, bool]], name: str) -> np.ndarray:
        parts = [getattr(table, name)[slot:slot + take] for table, slot, take, _ in pieces]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _standard(self, first: int, count: int, names: tuple[str, ...]
                  ) -> tuple[list[tuple[_Decoded, int, int, bool]], list[np.ndarray]]:
        """The tables clusters ``first..`` touch and the named fields of their range,
        checked as every lookup is."""
        pieces = self._tables(first, count)
        fields = [self._field(pieces, name) for name in names]
        if any(table.suspect for table, _, _, _ in pieces):
            self._check_units(self._field(pieces, "kinds"), self._field(pieces, "offsets"))
        return pieces, fields

    def lookup(self, first: int, count: int) -> Units:
        """``(kinds, offsets, writable, entries)`` of allocation units ``first..``.

        ``offsets`` are host byte offsets of each unit's data (-1 where none);
        ``writable`` says the unit may be written in place (COPIED in L1 and L2);
        ``entries`` are the raw L2 entries (for compressed units).
        """
        if self.unit_shift:
            return self._lookup_extended(first, count)
        pieces, (kinds, offsets, entries) = self._standard(
            first, count, ("kinds", "offsets", "entries"))
        copied = [table.copied[slot:slot + take] if l1_copied else np.zeros(take, dtype=bool)
                  for table, slot, take, l1_copied in pieces]
        writable = copied[0] if len(copied) == 1 else np.concatenate(copied)
        return Units(kinds, offsets, writable, entries)

    def states(self, first: int, count: int, reading: bool) -> tuple[np.ndarray, np.ndarray]:
        """Block map states and offsets of units ``first..``: compressed units count
        as DATA, or as ZERO when ``reading`` (their content is inflated separately)."""
        if self.unit_shift:
            kinds, offsets, _, _ = self._lookup_extended(first, count)
            return np.where(kinds == COMPRESSED_KIND, ZERO if reading else DATA,
                            kinds).astype(np.uint8), offsets
        _, (states, offsets) = self._standard(first, count,
                                              ("read" if reading else "status", "offsets"))
        return states, offsets

    def _lookup_extended(self, first: int, count: int) -> Units:
        """:meth:`lookup` for extended L2 entries, where units are subclusters."""
        shift = self.unit_shift
        c0 = first >> shift
        c1 = (first + count - 1) >> shift
        entries, bitmaps, l1_copied = self._cluster_entries(c0, c1 - c0 + 1)
        units = np.arange(first, first + count, dtype=np.int64)
        at = (units >> shift) - c0
        sub = (units & (SUBCLUSTERS - 1)).astype(np.uint64)
        entries, bitmaps, l1_copied = entries[at], bitmaps[at], l1_copied[at]
        kinds, offsets = self._subclusters(*self.classify(entries), bitmaps, sub)
        self._check_offsets(kinds, offsets)
        writable = ((entries & _COPIED) != 0) & l1_copied
        return Units(kinds, offsets, writable, entries)

    def _subclusters(self, kinds: np.ndarray, offsets: np.ndarray, bitmaps: np.ndarray,
                     sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        allocated = ((bitmaps >> sub) & _U(1)) != 0
        zero = ((bitmaps >> (sub + _U(SUBCLUSTERS))) & _U(1)) != 0
        compressed = kinds == COMPRESSED_KIND
        standard = ~compressed
        if np.any(standard & allocated & zero):
            raise Corrupted("an extended L2 entry marks a subcluster both allocated and zero",
                            self.path)
        if np.any(standard & allocated & (offsets < 0)):
            raise Corrupted("an extended L2 entry marks a subcluster allocated but has no "
                            "host cluster", self.path)
        # The whole-cluster ZERO flag means nothing with extended entries.
        out = np.where(compressed, COMPRESSED_KIND,
                       np.where(allocated, NORMAL,
                                np.where(zero, ZERO_PLAIN, UNALLOCATED))).astype(np.uint8)
        offsets = np.where(out == NORMAL, offsets + sub.astype(np.int64) * self.unit_size, -1)
        return out, offsets

    def _check_units(self, kinds: np.ndarray, offsets: np.ndarray) -> None:
        """The checks every lookup of standard entries makes (Corrupted on failure)."""
        if self.version < 3 and np.any((kinds == ZERO_PLAIN) | (kinds == ZERO_ALLOC)):
            raise Corrupted("an L2 entry of this version 2 image has the zero flag, which only "
                            "version 3 defines", self.path)
        self._check_offsets(kinds, offsets)

    def _check_offsets(self, kinds: np.ndarray, offsets: np.ndarray) -> None:
        hosted = (kinds == NORMAL) | (kinds == ZERO_ALLOC)
        if not hosted.any():
            return
        host = offsets[hosted]
        clusters = host >> self.cluster_bits
        if not self.extended and np.any(host & (self.cluster_size - 1)):
            bad = int(host[np.flatnonzero(host & (self.cluster_size - 1))[0]])
            raise Corrupted(f"an L2 entry points to {bad:#x}, which is not aligned to a "
                            f"cluster", self.path)
        inside = self.static_metadata.contains(clusters)
        if inside.any():
            cluster = int(clusters[np.flatnonzero(inside)[0]])
            raise Corrupted(f"an L2 entry points to guest data inside the "
                            f"{self.static_metadata.label(cluster)} "
                            f"(cluster {cluster})", self.path)

    # -- compressed entries --------------------------------------------------------------

    def compressed_location(self, entry: int) -> tuple[int, int]:
        """``(byte offset, bytes to read)`` of a compressed cluster's stream."""
        x = self._compressed_shift
        offset = entry & ((1 << x) - 1)
        sectors = ((entry >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return offset, sectors * 512 - (offset & 511)

    def compressed_entry(self, offset: int, length: int) -> int:
        """The L2 entry for a stream of ``length`` bytes at byte ``offset``."""
        sectors = ((offset & 511) + length + 511) // 512
        return COMPRESSED | ((sectors - 1) << self._compressed_shift) | offset

    def compressed_clusters(self, entries: np.ndarray) -> np.ndarray:
        """Host clusters touched by the given compressed entries (with repeats)."""
        start, length = compressed_spans(entries, self.cluster_bits)
        return span_clusters(start, length, self.cluster_bits)
