"""Two-level cluster tables, shared by the QED and QCOW (version 1) backends.

Both formats map a guest cluster through an L1 table (kept in memory) to an L2
table (loaded on demand through :class:`~vdgui.engine.blockmap.TableCache`) whose
entries give the file offset of the cluster.  They differ in byte order, table
sizes and the meaning of special entry values, which each backend decodes itself.
This module does what is common:

- walking the tables for a range of clusters (vectorised, one numpy slice per L2
  table);
- validating every offset read from the file before it is used, so that a hostile
  or damaged table gives a :class:`~vdgui.engine.errors.Corrupted` error instead of
  a read of the wrong bytes or, worse, an in-place write over the header or a table;
- append-only allocation in crash-safe order: the data is written first, then a
  complete new L2 table where one is needed, then the L2 entries, then the L1
  entry.  A crash in between leaks space at the end of the file but never leaves
  an entry pointing at unwritten data;
- a consistency scan that clears entries pointing outside the file or into
  metadata (QED runs it on images left with its "need check" flag).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from ..blockmap import ALLOCATED_ZERO, DATA, TableCache, FlatTable
from ..errors import Corrupted
from ..io import Storage
from ..sizes import align_up

#: Memory the L2 cache may hold, whatever the table size.
CACHE_BYTES = 32 << 20

#: ``decode(raw entries) -> (states, offsets)``: offsets < 0 are not file offsets
#: (special values such as compressed-cluster descriptors) and are not validated.
Decoder = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def signed(value: int) -> int:
    """A raw u64 entry as the int64 the vectorised checks see (huge values go negative)."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class Region:
    """A byte range of the file that holds metadata (header, L1 table, names)."""

    start: int
    end: int
    what: str


@dataclass
class ScanReport:
    """What :meth:`TwoLevelTable.scan` found (and, when fixing, cleared)."""

    bad_l1: list[tuple[int, int, str]] = field(default_factory=list)
    bad_l2: list[tuple[int, int, str]] = field(default_factory=list)
    #: Clusters referenced by more than one entry (not fixable without losing data).
    shared_clusters: int = 0
    tables: int = 0
    data_clusters: int = 0

    @property
    def fixable(self) -> int:
        return len(self.bad_l1) + len(self.bad_l2)

    def lines(self) -> list[str]:
        out = [f"L1 entry {i} pointed at {o:#x}, which {why}" for i, o, why in self.bad_l1]
        out += [f"the L2 entry of guest cluster {c} pointed at {o:#x}, which {why}"
                for c, o, why in self.bad_l2]
        if self.shared_clusters:
            out.append(f"{self.shared_clusters} cluster(s) are referenced more than once")
        return out


class TwoLevelTable:
    """An L1 table in memory plus cached L2 tables, with validation and allocation.

    ``reserved`` lists the metadata regions other than L2 tables (header, backing
    name, L1 table); no data cluster or L2 table may overlap them.  Offsets of L2
    tables must be multiples of ``table_align`` and data offsets multiples of
    ``data_align``.
    """

    def __init__(self, storage: Storage, *, cluster_size: int, l2_entries: int, dtype: str,
                 l1_offset: int, l1_count: int, reserved: Sequence[Region],
                 table_align: int, data_align: int, decode: Decoder) -> None:
        self.storage = storage
        self.path = storage.path
        self.cluster_size = cluster_size
        self.l2_entries = l2_entries
        self.reserved = tuple(reserved)
        self.table_align = table_align
        self.data_align = data_align
        self.decode = decode
        self.table_bytes = l2_entries * 8
        #: Space a new L2 table takes: whole clusters, like every allocation.
        self.table_span = align_up(self.table_bytes, cluster_size)
        self.file_size = storage.size()
        #: Where the next allocation goes: the end of the file, cluster aligned.
        self.end = align_up(self.file_size, cluster_size)
        self.l1 = FlatTable(storage, l1_offset, l1_count, dtype, "L1 table")
        capacity = max(4, min(256, CACHE_BYTES // self.table_bytes))
        self.cache = TableCache(storage, l2_entries, dtype, capacity, "L2 table")
        self._refresh_l1()

    # -- validation ------------------------------------------------------------------

    def _refresh_l1(self) -> None:
        """Recompute which L1 entries are unusable and where the valid L2 tables are."""
        offsets = self.l1.entries.astype(np.int64)
        self._bad_l1 = (offsets != 0) & self._invalid(offsets, self.table_bytes,
                                                      self.table_align, tables=False)
        valid = offsets[(offsets != 0) & ~self._bad_l1]
        self._starts = np.unique(valid)

    def _invalid(self, offsets: np.ndarray, length: int, align: int,
                 tables: bool = True) -> np.ndarray:
        """Mask of offsets whose ``length`` bytes are unusable (misaligned, outside the
        file, or overlapping metadata; with ``tables``, overlapping an L2 table too)."""
        bad = (offsets <= 0) | (offsets % align != 0) | (offsets > self.file_size - length)
        for region in self.reserved:
            bad |= (offsets < region.end) & (offsets + length > region.start)
        if tables and self._starts.size:
            idx = np.searchsorted(self._starts, offsets + length, side="left") - 1
            before = self._starts[np.maximum(idx, 0)]
            bad |= (idx >= 0) & (before + self.table_bytes > offsets)
        return bad

    def why(self, offset: int, length: int, align: int, tables: bool = True) -> str:
        """Words for what is wrong with one offset :meth:`_invalid` rejected."""
        if offset <= 0 or offset % align:
            return f"is not a multiple of {align}"
        if offset > self.file_size - length:
            return f"lies beyond the end of the file ({self.file_size} bytes)"
        for region in self.reserved:
            if offset < region.end and offset + length > region.start:
                return f"overlaps the {region.what}"
        if tables:
            return "overlaps an L2 table"
        return "is invalid"

    def invalid_data(self, offsets: np.ndarray) -> np.ndarray:
        """Mask of data cluster offsets that must not be read or written."""
        return self._invalid(offsets, self.cluster_size, self.data_align)

    def _l2_offset(self, index: int) -> int:
        """The L2 table of L1 entry ``index`` (0 for none); Corrupted when unusable."""
        offset = int(self.l1.entries[index])
        if offset and self._bad_l1[index]:
            why = self.why(signed(offset), self.table_bytes, self.table_align, tables=False)
            raise Corrupted(f"L1 entry {index} points to an L2 table at file offset "
                            f"{offset:#x}, which {why}", self.path)
        return offset

    # -- lookups ---------------------------------------------------------------------

    def entries(self, first: int, count: int) -> np.ndarray:
        """The raw L2 entries of clusters ``first .. first+count-1`` (0 where no table)."""
        out = np.zeros(count, dtype=np.uint64)
        n = self.l2_entries
        pos, stop = first, first + count
        while pos < stop:
            index, slot = divmod(pos, n)
            take = min(n - slot, stop - pos)
            if index < len(self.l1):
                table_offset = self._l2_offset(index)
                if table_offset:
                    out[pos - first:pos - first + take] = \
                        self.cache.get(table_offset)[slot:slot + take]
            pos += take
        return out

    def lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``BlockMap`` lookup: decoded states and validated file offsets."""
        states, offsets = self.decode(self.entries(first, count))
        allocated = ((states == DATA) | (states == ALLOCATED_ZERO)) & (offsets >= 0)
        if allocated.any():
            bad = allocated & self.invalid_data(offsets)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                offset = int(offsets[i])
                why = self.why(offset, self.cluster_size, self.data_align)
                raise Corrupted(f"the L2 entry of guest offset "
                                f"{(first + i) * self.cluster_size} points to file offset "
                                f"{offset:#x}, which {why}", self.path)
        return states, offsets

    # -- allocation ------------------------------------------------------------------

    def reserve(self, length: int) -> int:
        """Claim ``length`` bytes (rounded up to clusters) at the end of the file."""
        offset = self.end
        self.end = align_up(offset + length, self.cluster_size)
        return offset

    def append(self, data: memoryview | bytes | None, length: int) -> int:
        """Write ``data`` (None: ``length`` zero bytes) in newly claimed clusters."""
        offset = self.reserve(length)
        if data is None:
            # Past the end of the file: growing the file gives zeros without writing.
            if self.storage.size() < offset + length:
                self.storage.set_size(offset + length)
        else:
            self.storage.write_at(offset, data)
        self.file_size = max(self.file_size, offset + length)
        return offset

    def set_entries(self, first: int, values: np.ndarray) -> None:
        """Point clusters ``first ..`` at ``values`` (raw L2 entries).

        Missing L2 tables are allocated at the end of the file and written whole
        before the L1 entry that links them; the caller has already written the data.
        """
        n = self.l2_entries
        values = np.asarray(values, dtype=np.uint64)
        done = 0
        while done < len(values):
            index, slot = divmod(first + done, n)
            take = min(n - slot, len(values) - done)
            if index >= len(self.l1):
                raise Corrupted(f"guest cluster {first + done} lies beyond the L1 table",
                                self.path)
            table_offset = self._l2_offset(index)
            new = not table_offset
            if new:
                table_offset = self.reserve(self.table_span)
                table = self.cache.new(table_offset)
                self.file_size = max(self.file_size, table_offset + self.table_bytes)
            else:
                table = self.cache.get(table_offset)
            table[slot:slot + take] = values[done:done + take]
            self.cache.persist(table_offset, slot, take)
            if new:
                self.l1.entries[index] = table_offset
                self.l1.persist(index, 1)
                self._bad_l1[index] = False
                self._starts = np.insert(
                    self._starts, np.searchsorted(self._starts, table_offset), table_offset)
            done += take

    # -- consistency scan ------------------------------------------------------------

    def tables(self) -> Iterator[tuple[int, int]]:
        """``(L1 index, L2 offset)`` of every usable L2 table."""
        for index in np.flatnonzero((self.l1.entries != 0) & ~self._bad_l1).tolist():
            yield index, int(self.l1.entries[index])

    def scan(self, fix: bool) -> ScanReport:
        """Check every table; with ``fix``, clear the entries that point outside the
        file or into metadata (qemu's QED check does the same)."""
        report = ScanReport()
        for index in np.flatnonzero(self._bad_l1).tolist():
            offset = int(self.l1.entries[index])
            report.bad_l1.append((index, offset, self.why(
                signed(offset), self.table_bytes, self.table_align, tables=False)))
            if fix:
                self.l1.entries[index] = 0
                self.l1.persist(index, 1)
        if fix and report.bad_l1:
            self._refresh_l1()
        used = [self._starts // self.cluster_size + k
                for k in range(self.table_span // self.cluster_size)]
        for index, table_offset in self.tables():
            report.tables += 1
            table = self.cache.get(table_offset)
            states, offsets = self.decode(table.astype(np.uint64))
            allocated = ((states == DATA) | (states == ALLOCATED_ZERO)) & (offsets >= 0)
            bad = allocated & self.invalid_data(offsets)
            for slot in np.flatnonzero(bad).tolist():
                offset = int(offsets[slot])
                report.bad_l2.append((index * self.l2_entries + slot, offset & (2**64 - 1),
                                      self.why(offset, self.cluster_size, self.data_align)))
            if fix and bad.any():
                table[bad] = 0
                self.cache.persist(table_offset, 0, self.l2_entries)
            good = offsets[allocated & ~bad]
            report.data_clusters += len(good)
            used.append(good // self.cluster_size)
        clusters = np.concatenate(used) if used else np.zeros(0, dtype=np.int64)
        report.shared_clusters = len(clusters) - len(np.unique(clusters))
        return report
