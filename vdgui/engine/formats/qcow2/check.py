"""QCOW2 check and repair (``VDRepair``), the problems ``qemu-img check`` finds and more.

A :class:`Scan` reads the metadata of the file itself (so it works on images the
normal open refuses) and finds, like qemu: refcount table entries that are
reserved, unaligned or outside the file, refcount blocks shared with something
else, clusters whose refcount is below their number of references (errors) or
above it (leaks), L1 and L2 entries with reserved bits, unaligned, past the end
of the file, compressed entries with the COPIED flag, COPIED flags that disagree
with refcount 1, bad subcluster bitmaps, the dirty and corrupt bits.  On top of
that it finds what qemu only notices as refcount errors, or not at all: tables and
data pointing into other metadata, a cluster used twice by the active disk,
refcounts of clusters beyond the end of the file, zero flags in version 2.

References are counted as qemu counts them: once per path from an L1 table, so
a data cluster under an L2 table a snapshot shares counts twice.

A repair applies exactly the fixes reported, safely for the data: entries that
cannot be trusted are made to read as zeros (never to fall through to a backing
file, which would show stale data), a cluster used twice gets a copy of its data
for the second user, reserved bits and flags are corrected.  New clusters are
written after the end of the file first; then, in one transaction, the entries
are patched, the references are counted again and the refcounts rewritten in
place (or, when the refcount structures themselves are damaged, rebuilt after
the end of the file), COPIED flags set from the final counts, the dirty and
corrupt bits cleared, and the file cut after its last used cluster.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ...errors import Corrupted, VDError
from ...findings import ERROR, LEAK, WARNING, Finding
from ...io import Storage, StorageProvider
from ...io.journal import journal_path
from ...progress import Progress, report
from .header import (AUTOCLEAR_BITMAPS, AUTOCLEAR_OFFSET, FEATURE_INCOMPATIBLE,
                     INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPATIBLE_OFFSET, KNOWN_INCOMPATIBLE,
                     REFCOUNT_TABLE_OFFSET, pack_refcount_table_location, pack_u64,
                     read_header)
from .l1l2 import (COMPRESSED_KIND, COPIED, L1_RESERVED, L2_RESERVED, NORMAL, OFFSET_MASK,
                   SUBCLUSTERS_ALLOCATED, SUBCLUSTERS_ZERO, UNALLOCATED, ZERO_ALLOC, ZERO_FLAG,
                   ZERO_PLAIN, classify, compressed_spans)
from .refcount import TABLE_OFFSET_MASK, decode, encode_block, write_fresh_structures
from .snapshots import Snapshot, read_snapshots

#: What a host cluster was found to hold (the first structure that claimed it).
(FREE, HEADER, REFTABLE, L1, SNAP_TABLE, SNAP_L1, BITMAP, L2, SNAP_L2, DATA, SNAP_DATA,
 COMPRESSED, REFBLOCK) = range(13)
CLAIM_NAMES = {
    HEADER: "the header", REFTABLE: "the refcount table", L1: "the active L1 table",
    SNAP_TABLE: "the snapshot table", SNAP_L1: "the L1 table of a snapshot",
    BITMAP: "the persistent bitmaps", L2: "an L2 table", SNAP_L2: "an L2 table of a snapshot",
    DATA: "the data of another L2 entry", SNAP_DATA: "the data of a snapshot",
    COMPRESSED: "compressed data", REFBLOCK: "a refcount block",
}
#: Structures no data cluster may lie in.
_METADATA = np.zeros(16, dtype=bool)
_METADATA[[HEADER, REFTABLE, L1, SNAP_TABLE, SNAP_L1, BITMAP, L2, SNAP_L2, REFBLOCK]] = True

#: Why a data entry is wrong.
_V2_ZERO, _UNALIGNED, _BEYOND, _INTO, _TWICE = 1, 2, 3, 4, 5

#: Most clusters a check counts in memory (a few bytes each).
MAX_CHECK_CLUSTERS = 1 << 28
#: Findings of one kind listed one by one before the rest are summed up.
LIST_LIMIT = 100
#: Most clusters beyond the end of the file whose stray counts are collected.
MAX_STRAY = 1 << 20

BITMAP_ENTRY = struct.Struct(">QIIBBHI")
MAX_BITMAP_BYTES = 64 << 20

_WORD = struct.Struct(">Q")


@dataclass
class _Action:
    """A fix that needs a new cluster: ``kind`` is "zero_table" (an L2 table of zero
    clusters), "copy_table" (a copy of the L2 table at ``source`` and of its data),
    "copy_data" (a copy of the data cluster at ``source``) or "zero_data" (a cluster
    of zeros); the entry word at ``word`` is then pointed at it."""

    kind: str
    word: int
    source: int = 0


@dataclass
class _Table:
    """A distinct L2 table and how many paths from L1 tables lead to it."""

    offset: int
    active: int = 0
    snapshots: int = 0


@dataclass
class Scan:
    """One read-only pass over the metadata of the QCOW2 image in ``storage``.

    After :meth:`run`: ``findings``; per host cluster ``claim`` (what holds it),
    ``refs`` (references counted) and ``stored`` (its refcount); with
    ``want_index``, ``index`` (the guest cluster of active data, the L1 index of an
    active L2 table, the refcount block index); the fixes a repair would apply.
    """

    storage: Storage
    path: str
    want_index: bool = False
    progress: Progress | None = None
    findings: list[Finding] = field(default_factory=list)
    #: False when the scan stopped early (damage that cannot be interpreted).
    complete: bool = False
    patches: dict[int, int] = field(default_factory=dict)
    actions: list[_Action] = field(default_factory=list)
    #: The refcount structures must be written anew (they are damaged themselves).
    rebuild: bool = False
    #: Incompatible feature bits a repair clears (dirty, corrupt).
    clear_incompatible: int = 0
    #: The bitmaps are damaged: a repair drops them.
    clear_bitmaps: bool = False
    #: The file must be extended to this size (0: it need not).
    extend_to: int = 0
    #: Leaks are freed (a file ending in leaked clusters is cut after the last used one).
    leaks: bool = False

    def __post_init__(self) -> None:
        self._seen: dict[str, list] = {}

    # -- reporting -------------------------------------------------------------------

    def _add(self, kind: str, severity: str, what: str, offset: int | None,
             fix: str | None, leaked: int = 0) -> None:
        """Record a finding; past :data:`LIST_LIMIT` of one ``kind`` only count it."""
        finding = Finding(severity, what, offset, fix, leaked)
        seen = self._seen.setdefault(kind, [0, finding, 0])
        seen[0] += 1
        if seen[0] <= LIST_LIMIT:
            self.findings.append(finding)
        else:
            seen[2] += leaked

    def _count_more(self, kind: str, count: int, leaked: int) -> None:
        """``count`` more findings of ``kind`` that are not listed one by one."""
        if count > 0:
            seen = self._seen[kind]
            seen[0] += count
            seen[2] += leaked

    def _summarise(self) -> None:
        for kind, (count, first, leaked) in self._seen.items():
            if count > LIST_LIMIT:
                self.findings.append(Finding(first.severity, f"{count - LIST_LIMIT} more "
                                                             f"{kind} (not listed one by one)",
                                             None, first.fix, leaked))

    # -- the pass ----------------------------------------------------------------------

    def run(self) -> Scan:
        try:
            self._run()
        except VDError as exc:
            self.findings.append(Finding(ERROR, f"the image cannot be checked further: "
                                                f"{exc.message}", None, None))
        self._summarise()
        return self

    def _run(self) -> None:
        storage, path = self.storage, self.path
        try:
            self.h = h = read_header(storage, path)
        except VDError as exc:
            self.findings.append(Finding(ERROR, exc.message, 0, None))
            return
        unknown = h.incompatible_features & ~KNOWN_INCOMPATIBLE
        if unknown:
            self.findings.append(Finding(
                ERROR, f"the image uses incompatible features this program does not know "
                       f"({h.describe_features(FEATURE_INCOMPATIBLE, unknown)})", 72, None))
            return
        self.cs, self.cb = h.cluster_size, h.cluster_bits
        self.file_size = storage.size()
        self.file_clusters = -(-self.file_size // self.cs)
        if self.file_clusters > MAX_CHECK_CLUSTERS:
            self.findings.append(Finding(ERROR, f"the file has {self.file_clusters} clusters, "
                                                f"too many to check in memory", None, None))
            return
        # One more than the file holds: a structure may end in a last cluster the file
        # only partly contains (qemu's images end inside their L1 table).
        n = self.file_clusters + 1
        self.claim = np.zeros(n, dtype=np.uint8)
        self.refs = np.zeros(n, dtype=np.uint32)
        self.index = np.full(n, -1, dtype=np.int64) if self.want_index else None
        self.refcount_clusters: list[int] = []
        self.needed_end, self.needed_by = self.file_size, ""
        self._check_flags()
        if not self._fixed_metadata():
            return
        self._read_refcounts()
        tables = self._l1_tables()
        self._l2_tables(tables)
        self._claim_refblocks()
        if self.needed_end > self.file_size:
            self.extend_to = -(-self.needed_end // self.cs) * self.cs
            self._add("a file cut short", ERROR,
                      f"the file is cut short: it ends at {self.file_size} bytes, inside "
                      f"{self.needed_by}, which needs it to reach {self.needed_end}",
                      self.file_size, f"extend the file with zeros to {self.extend_to} bytes "
                                      f"(what qemu reads there)")
        self._compare()
        self.copied(self.stored, report_only=True)
        self.complete = True

    # -- header bits -------------------------------------------------------------------

    def _check_flags(self) -> None:
        h = self.h
        if h.incompatible_features & INCOMPAT_DIRTY:
            self._add("dirty bit", WARNING, "the image is marked dirty: it was written with lazy "
                                        "refcounts and not closed, so its refcounts may be "
                                        "stale", INCOMPATIBLE_OFFSET,
                      "count every reference, rewrite the refcounts and clear the dirty bit")
            self.clear_incompatible |= INCOMPAT_DIRTY
        if h.incompatible_features & INCOMPAT_CORRUPT:
            self._add("corrupt bit", ERROR, "the image is marked corrupt (qemu found an "
                                        "inconsistency and stopped writing it)",
                      INCOMPATIBLE_OFFSET, "clear the corrupt bit once the image is consistent")
            self.clear_incompatible |= INCOMPAT_CORRUPT

    # -- claims --------------------------------------------------------------------------

    def _read(self, offset: int, length: int) -> bytes:
        """Bytes of a structure; the part past the end of the file reads as zeros."""
        return self.storage.read_at(offset, length).ljust(length, b"\0")

    def _reach(self, end: int, what: str) -> None:
        """A structure or data cluster ends at ``end``: the file must reach that far
        (qemu reads zeros past its end, this program calls the file cut short)."""
        if end > self.needed_end:
            self.needed_end, self.needed_by = end, what

    def _span(self, offset: int, length: int) -> np.ndarray:
        return np.arange(offset >> self.cb, (offset + length - 1 >> self.cb) + 1,
                         dtype=np.int64)

    def _beyond(self, offset: int, length: int) -> bool:
        """qemu's rule: a structure may run past the end of the file by less than a
        cluster (the last cluster may be partly written)."""
        return offset + length - self.file_size >= self.cs

    def _claim_fixed(self, offset: int, length: int, kind: int, what: str,
                     share: bool = False) -> bool:
        """Count and claim a structure the header (or snapshot table) places.

        Two such structures overlapping cannot be told apart: that ends the check.
        """
        if not length:
            return True
        if self._beyond(offset, length):
            self.findings.append(Finding(ERROR, f"the {what} ({length} bytes at {offset:#x}) "
                                                f"lies beyond the end of the file "
                                                f"({self.file_size} bytes)", offset, None))
            return False
        clusters = self._span(offset, length)
        self.refs[clusters] += 1
        held = self.claim[clusters]
        clash = (held != FREE) & ~((held == kind) & share)
        if clash.any():
            other = CLAIM_NAMES[int(held[np.flatnonzero(clash)[0]])]
            self.findings.append(Finding(ERROR, f"the {what} (at {offset:#x}) overlaps "
                                                f"{other}; the image cannot be repaired",
                                         offset, None))
            return False
        self.claim[clusters] = kind
        self._reach(offset + length, what)
        return True

    def _fixed_metadata(self) -> bool:
        h, cs = self.h, self.cs
        self.snapshots: list[Snapshot] = []
        table_bytes = 0
        if h.nb_snapshots:
            try:
                self.snapshots, table_bytes = read_snapshots(
                    self.storage, h.snapshots_offset, h.nb_snapshots, cs, self.path)
            except VDError as exc:
                self.findings.append(Finding(ERROR, f"the snapshot table is damaged: "
                                                    f"{exc.message}", h.snapshots_offset,
                                             None))
                return False
        ok = (self._claim_fixed(0, cs, HEADER, "header")
              and self._claim_fixed(h.refcount_table_offset, h.refcount_table_clusters * cs,
                                    REFTABLE, "refcount table")
              and self._claim_fixed(h.l1_table_offset, h.l1_size * 8, L1, "L1 table")
              and self._claim_fixed(h.snapshots_offset, table_bytes, SNAP_TABLE,
                                    "snapshot table"))
        if ok:
            self.refcount_clusters += self._span(h.refcount_table_offset,
                                                 h.refcount_table_clusters * cs).tolist()
        for snap in self.snapshots if ok else ():
            ok = self._claim_fixed(snap.l1_table_offset, snap.l1_size * 8, SNAP_L1,
                                   f"L1 table of snapshot {snap.id!r}", share=True)
            if not ok:
                break
        return ok and self._bitmaps()

    def _bitmaps(self) -> bool:
        """Count the persistent bitmaps' clusters (qemu does while they are valid)."""
        h = self.h
        info = h.bitmaps()
        if info is None or not h.autoclear_features & AUTOCLEAR_BITMAPS:
            return True
        problem = self._read_bitmaps(info)
        if problem:
            self._add("bitmap problems", ERROR, f"the persistent bitmaps are damaged: {problem}",
                      info["directory_offset"], "drop the bitmaps (clear their autoclear bit; "
                                                "their clusters are freed)")
            self.clear_bitmaps = True
        return True

    def _read_bitmaps(self, info: dict) -> str | None:
        cs = self.cs
        offset, size = info["directory_offset"], info["directory_size"]
        if not info["nb_bitmaps"]:
            return None
        if size > MAX_BITMAP_BYTES or offset % cs or offset < cs or self._beyond(offset, size):
            return f"the directory ({size} bytes at {offset:#x}) is invalid"
        raw = self.storage.read_at(offset, size)
        regions = [(offset, size)]
        pos = 0
        for _ in range(info["nb_bitmaps"]):
            if pos + BITMAP_ENTRY.size > len(raw):
                return "the directory is cut short"
            table, entries, _flags, _type, _gran, name, extra = BITMAP_ENTRY.unpack_from(raw, pos)
            pos += (BITMAP_ENTRY.size + extra + name + 7) // 8 * 8
            if table % cs or table < cs or entries * 8 > MAX_BITMAP_BYTES \
                    or self._beyond(table, entries * 8):
                return f"a bitmap table ({entries} entries at {table:#x}) is invalid"
            regions.append((table, entries * 8))
            words = np.frombuffer(self.storage.read_at(table, entries * 8), dtype=">u8")
            data = (words & np.uint64(OFFSET_MASK)).astype(np.int64)
            for place in data[data != 0].tolist():
                if place % cs or self._beyond(place, cs):
                    return f"a bitmap data cluster offset {place:#x} is invalid"
                regions.append((place, cs))
        spans = [self._span(a, b) for a, b in regions]
        clusters = np.concatenate(spans)
        if (self.claim[clusters] != FREE).any():
            return "its clusters overlap other metadata"
        np.add.at(self.refs, clusters, 1)
        self.claim[clusters] = BITMAP
        for start, length in regions:
            self._reach(start + length, "the persistent bitmaps")
        return None

    # -- refcounts on disk ---------------------------------------------------------------

    def _read_refcounts(self) -> None:
        """Decode the refcount blocks into ``stored`` (0 where none), as qemu reads
        them through the table; keep the valid, distinct ones as ``blocks``."""
        h, cs = self.h, self.cs
        table = np.frombuffer(self._read(h.refcount_table_offset,
                                         h.refcount_table_clusters * cs), dtype=">u8")
        self.bits = h.refcount_bits
        self.per_block = per = cs * 8 // self.bits
        n = len(self.refs)
        self.stored = np.zeros(n, dtype=decode(np.zeros(cs, np.uint8), self.bits, 0, 1).dtype)
        self.blocks: dict[int, int] = {}
        indices = np.flatnonzero(table)
        entries = table[indices].astype(np.uint64)
        masked = entries & np.uint64(TABLE_OFFSET_MASK)
        reserved = (entries & np.uint64(~TABLE_OFFSET_MASK & 0xFFFFFFFFFFFFFFFF)) != 0
        unaligned = masked % np.uint64(cs) != 0
        outside = ~unaligned & (masked >= np.uint64(self.file_size))
        offsets = np.where(outside, 0, masked).astype(np.int64)
        readable = ~unaligned & ~outside
        _, first_use = np.unique(offsets[readable], return_index=True)
        shared = readable.copy()
        shared[np.flatnonzero(readable)[first_use]] = False

        def bad(mask: np.ndarray, text) -> None:
            chosen = np.flatnonzero(mask)
            for k in chosen[:LIST_LIMIT].tolist():
                self._bad_block(int(indices[k]), text(int(indices[k]), int(entries[k]),
                                                      int(offsets[k])))
            if chosen.size:
                self._count_more("refcount table problems", chosen.size - LIST_LIMIT, 0)

        bad(reserved, lambda i, e, o: f"refcount table entry {i} ({e:#x}) has reserved bits "
                                      f"set")
        bad(unaligned, lambda i, e, o: f"refcount block {i} is at {e & TABLE_OFFSET_MASK:#x}, "
                                       f"which is not aligned to a cluster")
        bad(outside, lambda i, e, o: f"refcount block {i} (at {e & TABLE_OFFSET_MASK:#x}) "
                                     f"lies outside the file ({self.file_size} bytes)")
        bad(shared, lambda i, e, o: f"refcount block {i} (at {o:#x}) is also another entry's "
                                    f"refcount block")
        for k in np.flatnonzero(readable & ~reserved & ~shared).tolist():
            self.blocks[int(indices[k])] = int(offsets[k])
            self._reach(int(offsets[k]) + cs, "a refcount block")
        # A block two entries name is counted twice, as qemu counts it.
        self.shared_blocks = (offsets[shared & ~reserved] >> self.cb).tolist()
        # Counts of clusters beyond the file should all be zero; each distinct block
        # is read once, and only so many stray clusters are listed.
        stray: list[np.ndarray] = []
        nonzero: dict[int, np.ndarray] = {}  # block offset -> slots with a count
        listed = 0
        for k in np.flatnonzero(readable).tolist():
            index, offset = int(indices[k]), int(offsets[k])
            first = index * per
            take = max(0, min(per, n - first))
            if take or offset not in nonzero:
                counts = decode(np.frombuffer(self._read(offset, cs), dtype=np.uint8),
                                self.bits, 0, per)
                nonzero.setdefault(offset, np.flatnonzero(counts))
                self.stored[first:first + take] = counts[:take]
            if listed < MAX_STRAY:
                slots = nonzero[offset]
                beyond = first + slots[np.searchsorted(slots, take):]
                listed += beyond.size
                stray.append(beyond)
        #: Clusters beyond the file that have a count.
        self.stray_clusters = np.unique(np.concatenate(stray)) if stray else \
            np.zeros(0, dtype=np.int64)
        if self.stray_clusters.size:
            clusters = self.stray_clusters
            self._add("counts beyond the end", LEAK,
                      f"{_clusters(clusters.size)} beyond the end of the file "
                      f"{'has a refcount' if clusters.size == 1 else 'have refcounts'} (from "
                      f"cluster {int(clusters[0])} on)", int(clusters[0]) * cs,
                      f"set {'its refcount' if clusters.size == 1 else 'their refcounts'} "
                      f"to zero")
            self.leaks = True

    def _bad_block(self, index: int, what: str) -> None:
        self._add("refcount table problems", ERROR, what,
                  self.h.refcount_table_offset + 8 * index, "rebuild the refcount structures")
        self.rebuild = True

    def _claim_refblocks(self) -> None:
        """Claim the refcount blocks last: damaged refcounts never outrank data."""
        for c in self.shared_blocks:
            self.refs[c] += 1
            self.refcount_clusters.append(c)
        for i, offset in self.blocks.items():
            c = offset >> self.cb
            self.refs[c] += 1
            self.refcount_clusters.append(c)
            held = int(self.claim[c])
            if held != FREE:
                other = "another refcount block" if held == REFBLOCK else CLAIM_NAMES[held]
                self._bad_block(i, f"refcount block {i} (at {offset:#x}) lies in {other}")
                continue
            self.claim[c] = REFBLOCK
            if self.index is not None:
                self.index[c] = i
            if self.refs[c] > 1:  # damaged entries point there too (reported above)
                self._add("refcount table problems", ERROR,
                          f"refcount block {i} (at {offset:#x}) is referenced "
                          f"{int(self.refs[c])} times", offset,
                          "fix the other references (the entries found pointing there)")

    # -- L1 tables -----------------------------------------------------------------------

    def _l1_tables(self) -> dict[int, _Table]:
        """Validate the L1 entries (active first, then snapshots); claim L2 tables."""
        h = self.h
        tables: dict[int, _Table] = {}
        active = np.frombuffer(self._read(h.l1_table_offset, h.l1_size * 8), dtype=">u8")
        self._l1_entries(active, h.l1_table_offset, tables, None)
        for snap in self.snapshots:
            raw = self._read(snap.l1_table_offset, snap.l1_size * 8)
            self._l1_entries(np.frombuffer(raw, dtype=">u8"), snap.l1_table_offset, tables,
                             snap)
        return tables

    def _zero_range_fix(self) -> str:
        if self.h.version >= 3:
            return "point the entry at a new L2 table whose clusters read as zeros"
        if self.h.backing_file:  # version 2 has no zero clusters: zero-filled ones
            return "point the entry at a new L2 table of zero-filled clusters"
        return "clear the entry (the range then reads as zeros)"

    def _l1_entries(self, entries: np.ndarray, table_offset: int,
                    tables: dict[int, _Table], snap: Snapshot | None) -> None:
        cs = self.cs
        whose = f" of snapshot {snap.id!r}" if snap else ""
        for i in np.flatnonzero(entries).tolist():
            entry = int(entries[i])
            word = table_offset + 8 * i
            name = f"L1 entry {i}{whose} ({entry:#x})"
            if entry & L1_RESERVED:
                self._add("L1 entries with reserved bits set", ERROR,
                          f"{name} has reserved bits set", word, "clear the reserved bits")
                self.patches[word] = entry & ~L1_RESERVED
            offset = entry & OFFSET_MASK
            if not offset:
                self._add("L1 entries without a table", ERROR,
                          f"{name} has flags but no L2 table", word, "clear the entry")
                self.patches[word] = 0
                continue
            if offset < self.file_size:
                self.refs[self._span(offset, cs)[:2]] += 1
            problem = None
            if offset % cs:
                problem = f"to {offset:#x}, which is not aligned to a cluster"
            elif offset >= self.file_size:
                problem = f"to {offset:#x}, beyond the end of the file ({self.file_size} bytes)"
            else:
                held = int(self.claim[offset >> self.cb])
                if _METADATA[held] and held not in (L2, SNAP_L2):
                    problem = f"to {offset:#x}, into {CLAIM_NAMES[held]}"
                elif held == L2 and snap is None:
                    self._add("L2 tables used twice", ERROR,
                              f"{name} points to the L2 table at {offset:#x}, which another "
                              f"active L1 entry uses", word,
                              "give this range its own copy of the L2 table and its data")
                    self.actions.append(_Action("copy_table", word, offset))
                    tables[offset].active += 1
                    continue
            if problem:
                if snap is None:
                    fix = self._zero_range_fix()
                    if self.h.version >= 3 or self.h.backing_file:
                        self.actions.append(_Action("zero_table", word))
                    else:
                        self.patches[word] = 0
                else:
                    fix = ("clear the entry (that range of the snapshot then reads from the "
                           "backing file, or zeros)")
                    self.patches[word] = 0
                self._add("L1 entries pointing outside the image or into metadata", ERROR,
                          f"{name} points {problem}", word, fix)
                continue
            self._reach(offset + cs, "an L2 table")
            table = tables.setdefault(offset, _Table(offset))
            c = offset >> self.cb
            if snap is None:
                table.active += 1
                self.claim[c] = L2
                if self.index is not None:
                    self.index[c] = i
            else:
                table.snapshots += 1
                if self.claim[c] == FREE:
                    self.claim[c] = SNAP_L2

    # -- L2 tables -----------------------------------------------------------------------

    def _read_l2(self, offset: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Entries (and subcluster bitmaps) of the L2 table at ``offset``, patched."""
        raw = bytearray(self._read(offset, self.cs))
        for word, value in self.patches.items():
            if offset <= word < offset + self.cs:
                _WORD.pack_into(raw, word - offset, value)
        words = np.frombuffer(bytes(raw), dtype=">u8").astype(np.uint64)
        if self.h.extended_l2:
            return words[0::2].copy(), words[1::2].copy()
        return words, None

    def _entry_word(self, table: int, slot: int) -> int:
        return table + slot * (16 if self.h.extended_l2 else 8)

    def _l2_tables(self, tables: dict[int, _Table]) -> None:
        ordered = sorted(tables.values(), key=lambda t: (not t.active, t.offset))
        for done, table in enumerate(ordered):
            report(self.progress, done, len(ordered), "checking L2 tables")
            self._l2_table(table)

    def _zero_fix(self, word: int) -> None:
        """Make the entry at ``word`` read as zeros, the way this image can say so."""
        h = self.h
        if h.extended_l2:
            self.patches[word] = 0
            self.patches[word + 8] = SUBCLUSTERS_ZERO
        elif h.version >= 3:
            self.patches[word] = ZERO_FLAG
        elif h.backing_file:
            self.actions.append(_Action("zero_data", word))
        else:
            self.patches[word] = 0

    def _coffset(self, entry: int) -> int:
        return int(entry) & ((1 << (62 - (self.cb - 8))) - 1)

    def _kinds(self, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entry kinds and host offsets; with subclusters the whole-cluster zero flag
        means nothing (the bitmap says what reads as zeros)."""
        kinds, host = classify(entries)
        if self.h.extended_l2:
            kinds = np.where(kinds == ZERO_ALLOC, NORMAL,
                             np.where(kinds == ZERO_PLAIN, UNALLOCATED, kinds)).astype(np.uint8)
        return kinds, host

    def _l2_table(self, table: _Table) -> None:
        entries, bitmaps = self._read_l2(table.offset)
        kinds, host = self._kinds(entries)
        where = f"the L2 table at {table.offset:#x}"

        def name(slot: int) -> str:
            return f"L2 entry {slot} of {where} ({int(entries[slot]):#x})"

        def word(slot: int) -> int:
            return self._entry_word(table.offset, slot)

        self._entry_bits(entries, kinds, bitmaps, name, word)
        self._data_entries(table, kinds, host, name, word)
        self._compressed(table, entries, np.flatnonzero(kinds == COMPRESSED_KIND), name, word)

    def _entry_bits(self, entries: np.ndarray, kinds: np.ndarray, bitmaps: np.ndarray | None,
                    name, word) -> None:
        """Reserved bits, COPIED on compressed entries, subcluster bitmaps."""
        standard = kinds != COMPRESSED_KIND
        for slot in np.flatnonzero(standard & ((entries & np.uint64(L2_RESERVED)) != 0)).tolist():
            self._add("L2 entries with reserved bits set", ERROR,
                      f"{name(slot)} has reserved bits set", word(slot), "clear the reserved bits")
            self.patches[word(slot)] = int(entries[slot]) & ~L2_RESERVED
        flagged = ~standard & ((entries & np.uint64(COPIED)) != 0)
        for slot in np.flatnonzero(flagged).tolist():
            self._add("compressed entries with the COPIED flag", ERROR,
                      f"{name(slot)} is compressed (data at {self._coffset(entries[slot]):#x}) "
                      f"but has the COPIED flag", word(slot),
                      "clear the COPIED flag")
            self.patches[word(slot)] = int(entries[slot]) & ~COPIED
        if bitmaps is None:
            return
        alloc = bitmaps & np.uint64(SUBCLUSTERS_ALLOCATED)
        zero = bitmaps >> np.uint64(32)
        hosted = kinds == NORMAL
        for slot in np.flatnonzero(~standard & (bitmaps != 0)).tolist():
            self._add("bad subcluster bitmaps", ERROR,
                      f"{name(slot)} is compressed but has a subcluster bitmap", word(slot) + 8,
                      "clear the bitmap")
            self.patches[word(slot) + 8] = 0
        for slot in np.flatnonzero(hosted & ((alloc & zero) != 0)).tolist():
            self._add("bad subcluster bitmaps", ERROR,
                      f"{name(slot)} marks subclusters both allocated and zero", word(slot) + 8,
                      "make those subclusters read as zeros")
            b = int(bitmaps[slot])
            self.patches[word(slot) + 8] = b & ~(b >> 32)
        for slot in np.flatnonzero(standard & ~hosted & (alloc != 0)).tolist():
            self._add("bad subcluster bitmaps", ERROR,
                      f"{name(slot)} has no cluster but marks subclusters allocated",
                      word(slot) + 8, "make those subclusters read as zeros")
            b = int(bitmaps[slot])
            self.patches[word(slot) + 8] = (b | b << 32) & SUBCLUSTERS_ZERO

    def _data_entries(self, table: _Table, kinds: np.ndarray, host: np.ndarray,
                      name, word) -> None:
        """Data clusters: aligned, inside the file, not in metadata or compressed data,
        and (for the active disk) used by one entry only; counted once per path."""
        h, cs, cb = self.h, self.cs, self.cb
        paths = table.active + table.snapshots
        v2_zero = np.zeros(len(kinds), dtype=bool)
        if h.version < 3:  # version 2 has no zero flag: the reader refuses it
            v2_zero = (kinds == ZERO_PLAIN) | (kinds == ZERO_ALLOC)
        hosted = (kinds == NORMAL) | (kinds == ZERO_ALLOC)
        slots = np.flatnonzero(hosted)
        offsets = host[slots]
        clusters = offsets >> cb
        inside = offsets < self.file_size
        # Counted as qemu counts them (an unaligned one touches two clusters).
        np.add.at(self.refs, clusters[inside], paths)
        split = inside & ((offsets & (cs - 1)) != 0)
        np.add.at(self.refs, clusters[split] + 1, paths)
        held = np.where(inside, self.claim[np.minimum(clusters, len(self.claim) - 1)], FREE)
        problem = np.zeros(len(slots), dtype=np.uint8)
        problem[v2_zero[slots]] = _V2_ZERO
        problem[(problem == 0) & ((offsets & (cs - 1)) != 0)] = _UNALIGNED
        problem[(problem == 0) & ~inside] = _BEYOND
        problem[(problem == 0) & (_METADATA[held] | (held == COMPRESSED))] = _INTO
        if table.active:
            # The first active user keeps a cluster; any later one gets a copy.
            ok = np.flatnonzero(problem == 0)
            again = held[ok] == DATA
            _, first = np.unique(clusters[ok], return_index=True)
            repeat = np.ones(len(ok), dtype=bool)
            repeat[first] = False
            problem[ok[again | repeat]] = _TWICE
        for k in np.flatnonzero(problem).tolist():
            self._bad_data(int(slots[k]), int(offsets[k]), int(problem[k]), int(held[k]),
                           kinds[slots[k]] == ZERO_ALLOC and h.version >= 3, name, word)
        for slot in np.flatnonzero(v2_zero & ~hosted).tolist():
            self._add("version 2 zero flags", ERROR,
                      f"{name(slot)} has the zero flag, which version 2 images do not have",
                      word(slot), "make the cluster read as zeros")
            self._zero_fix(word(slot))
        good = problem == 0
        mine = clusters[good]
        if mine.size:
            self._reach((int(mine.max()) + 1) * cs, "a data cluster")
        if table.active:
            self.claim[mine] = DATA
            if self.index is not None:
                l1_index = int(self.index[table.offset >> cb])
                self.index[mine] = l1_index * h.l2_entries + slots[good]
        else:
            self.claim[mine[self.claim[mine] == FREE]] = SNAP_DATA

    def _bad_data(self, slot: int, offset: int, problem: int, held: int, preallocated: bool,
                  name, word) -> None:
        if problem == _TWICE:
            self._add("clusters used twice", ERROR,
                      f"{name(slot)} uses the cluster at {offset:#x}, which another active "
                      f"entry uses too", word(slot),
                      "make it a zero cluster without storage" if preallocated
                      else "give the entry its own copy of the data")
            if preallocated:
                self.patches[word(slot)] = ZERO_FLAG
            else:
                self.actions.append(_Action("copy_data", word(slot), offset))
            return
        into = CLAIM_NAMES.get(held, "metadata")
        what = {_V2_ZERO: "has the zero flag, which version 2 images do not have",
                _UNALIGNED: f"points to {offset:#x}, which is not aligned to a cluster",
                _BEYOND: f"points to {offset:#x}, beyond the end of the file "
                         f"({self.file_size} bytes)",
                _INTO: f"points to {offset:#x}, into {into}",
                }[problem]
        self._add("L2 entries pointing outside the image or into metadata", ERROR,
                  f"{name(slot)} {what}", word(slot),
                  "make it a zero cluster without storage" if preallocated
                  else "make the cluster read as zeros")
        if preallocated:
            self.patches[word(slot)] = ZERO_FLAG
        else:
            self._zero_fix(word(slot))

    def _compressed(self, table: _Table, entries: np.ndarray, slots: np.ndarray,
                    name, word) -> None:
        """Compressed streams: inside the file, after the header, sharing host
        clusters only with other streams; each touched cluster counts once per
        stream and path."""
        if not slots.size:
            return
        cs, cb = self.cs, self.cb
        paths = table.active + table.snapshots
        start, length = compressed_spans(entries[slots], cb)
        offsets = np.array([self._coffset(e) for e in entries[slots]], dtype=np.int64)
        beyond = start + length - self.file_size >= cs
        first, last = start >> cb, (start + length - 1) >> cb
        clash = offsets < cs
        steps = range(int((last - first).max(initial=0)) + 1)
        for k in steps:
            sel = ~beyond & (first + k <= last)
            held = self.claim[first[sel] + k]
            clash[np.flatnonzero(sel)[(held != FREE) & (held != COMPRESSED)]] = True
            np.add.at(self.refs, first[sel] + k, paths)
        for k in steps:
            sel = ~beyond & ~clash & (first + k <= last)
            self.claim[first[sel] + k] = COMPRESSED
        for k in np.flatnonzero(beyond | clash).tolist():
            slot = int(slots[k])
            where = ("beyond the end of the file" if beyond[k] else "in the header"
                     if offsets[k] < cs else "in other metadata or data")
            self._add("compressed clusters outside the image or in other data", ERROR,
                      f"{name(slot)}: its compressed data ({int(length[k])} bytes at "
                      f"{int(offsets[k]):#x}) lies {where}", word(slot),
                      "make the cluster read as zeros")
            self._zero_fix(word(slot))

    # -- comparing -------------------------------------------------------------------------

    def _compare(self) -> None:
        """Refcounts against references, cluster by cluster (qemu's main check)."""
        cs = self.cs
        refs, stored = self.refs, self.stored.astype(np.uint64)
        limit = (1 << self.bits) - 1
        over = np.flatnonzero(refs > limit)
        for c in over[:LIST_LIMIT].tolist():
            self.findings.append(Finding(ERROR, f"cluster {c} has {int(refs[c])} references, "
                                                f"more than {self.bits}-bit refcounts can "
                                                f"count", c * cs, None))
        low = np.flatnonzero(stored < refs)
        for c in low[:LIST_LIMIT].tolist():
            self._add("refcounts below the references", ERROR,
                      f"cluster {c} (at {c * cs:#x}) has refcount {int(stored[c])} but "
                      f"{_references(int(refs[c]))}", c * cs,
                      f"set its refcount to {int(refs[c])}")
        high = np.flatnonzero(stored > refs)
        for c in high[:LIST_LIMIT].tolist():
            self._add("leaked clusters", LEAK,
                      f"cluster {c} (at {c * cs:#x}) is leaked: refcount {int(stored[c])}, "
                      f"{_references(int(refs[c]))}", c * cs,
                      "free it" if not refs[c] else f"set its refcount to {int(refs[c])}",
                      cs if not refs[c] else 0)
        # Beyond the listed ones only the count matters (a dirty image has many).
        self._count_more("refcounts below the references", low.size - LIST_LIMIT, 0)
        unreferenced = int(np.count_nonzero(refs[high[LIST_LIMIT:]] == 0)) if high.size else 0
        self._count_more("leaked clusters", high.size - LIST_LIMIT, unreferenced * cs)
        self.leaks = self.leaks or bool(high.size)

    # -- COPIED flags ----------------------------------------------------------------------

    def copied(self, counts: np.ndarray, report_only: bool = False) -> dict[int, int]:
        """Entries of the active tables whose COPIED flag disagrees with ``counts``
        (set exactly where the count is 1); reported, or returned as patches."""
        h, cb = self.h, self.cb
        patches: dict[int, int] = {}
        l1 = np.frombuffer(self._read(h.l1_table_offset, h.l1_size * 8), dtype=">u8")
        seen: set[int] = set()
        n = len(counts)
        fixed = set(self.patches) | {action.word for action in self.actions}

        def count(offset: int) -> int:
            c = offset >> cb
            return int(counts[c]) if c < n else 0

        for i in np.flatnonzero(l1).tolist():
            entry = int(l1[i])
            offset = entry & OFFSET_MASK
            word = h.l1_table_offset + 8 * i
            if word in fixed or offset >= self.file_size or self.claim[offset >> cb] != L2:
                continue  # a bad entry, fixed otherwise
            single = count(offset) == 1
            if single != bool(entry & COPIED):
                if report_only:
                    self._add("COPIED flags that disagree with the refcounts", ERROR,
                              f"L1 entry {i} ({entry:#x}): the COPIED flag is "
                              f"{'clear' if single else 'set'} but the L2 table's refcount "
                              f"is {count(offset)}", word,
                              self._copied_fix(offset, bool(entry & COPIED)))
                patches[word] = entry ^ COPIED
            if offset in seen:
                continue
            seen.add(offset)
            entries, _ = self._read_l2(offset)
            kinds, host = self._kinds(entries)
            hosted = np.flatnonzero((kinds == NORMAL) | (kinds == ZERO_ALLOC))
            clusters = host[hosted] >> cb
            inside = clusters < n
            ones = np.zeros(len(hosted), dtype=bool)
            ones[inside] = counts[clusters[inside]] == 1
            flagged = (entries[hosted] & np.uint64(COPIED)) != 0
            for k in np.flatnonzero(ones != flagged).tolist():
                slot = int(hosted[k])
                value = int(entries[slot])
                w = self._entry_word(offset, slot)
                if w in fixed:
                    continue
                if report_only:
                    self._add("COPIED flags that disagree with the refcounts", ERROR,
                              f"L2 entry {slot} of the L2 table at {offset:#x} ({value:#x}): "
                              f"the COPIED flag is {'clear' if ones[k] else 'set'} but the "
                              f"refcount of its cluster is "
                              f"{int(counts[clusters[k]]) if inside[k] else 0}", w,
                              self._copied_fix(int(host[slot]), bool(flagged[k])))
                patches[w] = value ^ COPIED
        return patches

    def _copied_fix(self, offset: int, flagged: bool) -> str:
        """What a repair does about a COPIED flag: it follows the corrected refcount,
        which is the number of references."""
        single = self.refs[offset >> self.cb] == 1
        if single == flagged:
            return "keep the flag (the refcount is corrected instead)"
        return f"{'set' if single else 'clear'} the COPIED flag"

    # -- what a repair can do --------------------------------------------------------------

    @property
    def fixable(self) -> bool:
        return self.complete and any(f.fix for f in self.findings)


def _clusters(count: int) -> str:
    return f"{count} cluster{'s' if count != 1 else ''}"


def _references(count: int) -> str:
    return f"{count} reference{'s' if count != 1 else ''}"


def check(io: StorageProvider, path: str, repair: bool,
          progress: Progress | None = None) -> list[Finding]:
    """The findings for the QCOW2 image at ``path``; with ``repair``, fix them first."""
    pending = []
    if io.exists(journal_path(path)):
        pending.append(Finding(WARNING, "an operation was interrupted; its journal is still "
                                        "pending", None, "complete the interrupted operation"))
    with io.open(path, writable=repair) as storage:  # a writable open completes it
        scan = Scan(storage, path, progress=progress).run()
        if repair and scan.fixable:
            repair_scanned(scan)
    return pending + scan.findings


def repair_storage(storage: Storage, path: str) -> None:
    """Check the image in ``storage`` and apply every fix (a dirty image's open)."""
    scan = Scan(storage, path).run()
    if scan.fixable:
        repair_scanned(scan)


def repair_scanned(scan: Scan) -> None:
    """Apply the fixes a complete scan found (see the module notes for the order)."""
    storage, h = scan.storage, scan.h
    cs = h.cluster_size
    if scan.extend_to > storage.size():
        storage.set_size(scan.extend_to)
    _write_new_clusters(scan)
    storage.flush()
    with storage.transaction():
        _write_words(storage, scan.patches)
        if scan.clear_bitmaps:
            h.autoclear_features &= ~AUTOCLEAR_BITMAPS
            storage.write_at(AUTOCLEAR_OFFSET, pack_u64(h.autoclear_features))
        final = Scan(storage, scan.path).run()
        if not final.complete or final.patches or final.actions:
            raise Corrupted(f"the repair could not make the image consistent "
                            f"({final.findings[0].what if final.findings else 'unknown'}); "
                            f"nothing was changed", scan.path)
        counts = _write_refcounts(final, scan.rebuild or final.rebuild)
        _write_words(storage, final.copied(counts))
        clear = scan.clear_incompatible & h.incompatible_features
        if clear and h.version >= 3:
            storage.write_at(INCOMPATIBLE_OFFSET, pack_u64(h.incompatible_features & ~clear))
        used = np.flatnonzero(counts)
        end = (int(used[-1]) + 1) * cs
        if scan.leaks and storage.size() > end:
            storage.set_size(end)


def _write_words(storage: Storage, patches: dict[int, int]) -> None:
    """Write 64-bit entries, one write per run of adjacent words."""
    run: list[int] = []
    start = None
    for word in sorted(patches):
        if start is not None and word == start + 8 * len(run):
            run.append(patches[word])
            continue
        if run:
            storage.write_at(start, np.array(run, dtype=">u8").tobytes())
        start, run = word, [patches[word]]
    if run:
        storage.write_at(start, np.array(run, dtype=">u8").tobytes())


def _write_new_clusters(scan: Scan) -> None:
    """Carry out the fixes that need new clusters, after the end of the file."""
    storage, h = scan.storage, scan.h
    cs, cb = h.cluster_size, h.cluster_bits
    nxt = max(scan.file_clusters + (1 if scan.refs[-1] else 0), scan.extend_to >> cb)

    def take() -> int:
        nonlocal nxt
        nxt += 1
        return (nxt - 1) << cb

    # Entries a version 2 image can only make read as zeros with a zero-filled cluster
    # (new clusters past the end of the file read as zeros once it is extended).
    zeroed = {action.word for action in scan.actions if action.kind == "zero_data"}
    for action in scan.actions:
        if action.kind == "zero_table":
            place = take()
            if h.extended_l2:
                table = np.tile(np.array([0, SUBCLUSTERS_ZERO], dtype=">u8"), cs // 16)
            elif h.version >= 3:
                table = np.full(cs // 8, ZERO_FLAG, dtype=">u8")
            else:
                per = cs // 8
                first = (action.word - h.l1_table_offset) // 8 * per
                count = min(per, -(-h.size // cs) - first)
                table = np.zeros(per, dtype=">u8")
                table[:count] = [take() | COPIED for _ in range(count)]
            storage.write_at(place, table.tobytes())
        elif action.kind == "zero_data":
            place = take()
        elif action.kind == "copy_data":
            place = take()
            storage.write_at(place, scan._read(action.source, cs))
        else:  # copy_table: the table (with its own fixes) and its data clusters
            place = take()
            entries, bitmaps = scan._read_l2(action.source)
            kinds, host = scan._kinds(entries)
            for slot in np.flatnonzero(kinds == NORMAL).tolist():
                data = take()
                if scan._entry_word(action.source, slot) not in zeroed:
                    storage.write_at(data, scan._read(int(host[slot]), cs))
                entries[slot] = np.uint64(data | COPIED)
            prealloc = kinds == ZERO_ALLOC
            entries[prealloc] = np.uint64(ZERO_FLAG)
            if bitmaps is not None:
                words = np.empty(cs // 8, dtype=np.uint64)
                words[0::2], words[1::2] = entries, bitmaps
                entries = words
            storage.write_at(place, entries.astype(">u8").tobytes())
        scan.patches[action.word] = place | COPIED
    if storage.size() < nxt << cb:
        storage.set_size(nxt << cb)


def _write_refcounts(scan: Scan, rebuild: bool) -> np.ndarray:
    """Make the refcounts equal the references ``scan`` counted; returns the counts."""
    storage, h = scan.storage, scan.h
    cs, cb, bits = h.cluster_size, h.cluster_bits, h.refcount_bits
    refs = scan.refs.astype(np.uint64)
    per = scan.per_block
    used = np.flatnonzero(refs)
    table_entries = h.refcount_table_clusters * cs // 8
    if not rebuild and used.size:
        covered = np.isin(used // per, np.fromiter(scan.blocks, dtype=np.int64))
        rebuild = not covered.all() or int(used[-1]) // per >= table_entries
    if refs.max() > (1 << bits) - 1:
        raise Corrupted(f"a cluster has more references than {bits}-bit refcounts can count; "
                        f"the refcounts cannot be repaired", scan.path)
    if rebuild:
        counts = refs.copy()
        np.subtract.at(counts, np.array(scan.refcount_clusters, dtype=np.int64), 1)
        last = np.flatnonzero(counts)
        counts = counts[:max(scan.file_clusters, int(last[-1]) + 1 if last.size else 1)]
        offset, clusters, counts = write_fresh_structures(storage, counts, cb,
                                                          h.refcount_order)
        storage.write_at(REFCOUNT_TABLE_OFFSET, pack_refcount_table_location(offset, clusters))
        return counts
    for index, offset in scan.blocks.items():
        new = encode_block(refs[index * per:(index + 1) * per], bits, cs)
        if storage.read_at(offset, cs) != new:
            storage.write_at(offset, new)
    return refs


__all__ = ["Scan", "check", "repair_storage", "CLAIM_NAMES"]
