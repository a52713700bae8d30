"""Cluster-mapped image files: two-level tables (QED, QCOW version 1), and the
packing and checking that QED, QCOW and Parallels share.

QED and QCOW map a guest cluster through an L1 table (kept in memory) to an L2
table (loaded on demand through :class:`~vdgui.engine.blockmap.TableCache`) whose
entries give the file offset of the cluster.  They differ in byte order, table
sizes and the meaning of special entry values, which each backend describes in a
:class:`TableLayout`.  :class:`TwoLevelTable` does what is common:

- walking the tables for a range of clusters (vectorised, one numpy slice per L2
  table);
- validating every offset read from the file before it is used, so that a hostile
  or damaged table gives a :class:`~vdgui.engine.errors.Corrupted` error instead of
  a read of the wrong bytes or, worse, an in-place write over the header or a table;
- append-only allocation in crash-safe order: the data is written first, then a
  complete new L2 table where one is needed, then the L2 entries, then the L1
  entry.  A crash in between leaks space at the end of the file but never leaves
  an entry pointing at unwritten data;
- releasing clusters (:meth:`TwoLevelTable.release`).

What all three cluster formats share, whatever their tables look like:

- :class:`Extents`: the byte ranges of the file that entries point at (tables,
  clusters, compressed clusters), each with what points at it;
- packing: :func:`plan_moves` decides which ranges move into which holes so that
  the file can be cut short, :func:`move_extents` moves them crash-safely (the
  data is copied first and made durable, then the entries are repointed in one
  transaction per batch: an interruption leaves every range readable at its old or
  its new place);
- checking: :func:`classify` finds ranges that are unusable, cut short by the end
  of the file or shared, :func:`leaked_slots` the clusters nothing uses, and
  :class:`CheckPlan` / :func:`run_check` turn that into findings and, on repair,
  apply the fixes (file extension and copies first, entry changes in one
  transaction, then a pack for the leaks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Callable, Iterator, Sequence

import numpy as np

from ..blockmap import ALLOCATED_ZERO, DATA, FlatTable, TableCache, frozen
from ..errors import Corrupted
from ..findings import ERROR, LEAK, WARNING, Finding
from ..io import Storage, StorageProvider
from ..io.journal import journal_path
from ..progress import Progress, report
from ..sizes import align_up
from ..types import SECTOR, OpenFlags

#: Memory the L2 cache may hold, whatever the table size.
CACHE_BYTES = 32 << 20

#: Data copied per crash-safe step of a pack (copy, flush, repoint).
BATCH_BYTES = 64 << 20
#: Largest single read or write while copying.
COPY_CHUNK = 8 << 20

#: Findings listed one by one per kind of problem; the rest are summed up.
LISTED = 100

#: Bound on the rounds of a pack plan (each round moves ranges straight down; only
#: ranges larger than a hole take two).
MAX_ROUNDS = 10000

#: ``decode(raw entries) -> (states, offsets)``: offsets < 0 are not file offsets
#: (special values such as compressed-cluster descriptors) and are not validated.
Decoder = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]

# What points at a range, in order of precedence when two ranges overlap:
# metadata first, so that a cluster entry pointing into a table is the one cleared.
KIND_L1, KIND_TABLE, KIND_DATA, KIND_COMPRESSED = 0, 1, 2, 3


def signed(value: int) -> int:
    """A raw u64 entry as the int64 the vectorised checks see (huge values go negative)."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class Region:
    """A byte range of the file that holds metadata (header, L1 table, names)."""

    start: int
    end: int
    what: str


# -- ranges of a file and moving them ---------------------------------------------------

@dataclass
class Extents:
    """Byte ranges of a file that entries point at.

    ``align``: where the range may be moved (a multiple of it); ``kind`` and ``ref``
    say what points at it (for tables the L1 index, for clusters the guest cluster
    or BAT index), so the owner can repoint it.
    """

    start: np.ndarray
    length: np.ndarray
    align: np.ndarray
    kind: np.ndarray
    ref: np.ndarray

    @classmethod
    def of(cls, start, length, align, kind, ref) -> Extents:
        start = np.asarray(start, dtype=np.int64).reshape(-1)
        n = len(start)

        def column(value, dtype) -> np.ndarray:
            return np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()

        return cls(start.copy(), column(length, np.int64), column(align, np.int64),
                   column(kind, np.uint8), column(ref, np.int64))

    @classmethod
    def join(cls, parts: Sequence[Extents]) -> Extents:
        if not parts:
            return cls.of([], 0, 1, 0, 0)
        return cls(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("start", "length", "align", "kind", "ref")))

    def __len__(self) -> int:
        return len(self.start)

    @property
    def end(self) -> np.ndarray:
        return self.start + self.length

    def last_end(self, floor: int = 0) -> int:
        """Where the last range ends (at least ``floor``)."""
        return max(floor, int(self.end.max())) if len(self) else floor


def _slots(origin: int, stop: int, grain: int) -> int:
    return max(0, -((origin - stop) // grain))


def _occupied(start: np.ndarray, end: np.ndarray, origin: int, grain: int,
              slots: int) -> np.ndarray:
    """Per slot of ``grain`` bytes from ``origin``: True where some range touches it."""
    first = np.clip((start - origin) // grain, 0, slots)
    last = np.clip(-((origin - end) // grain), 0, slots)
    keep = last > first
    marks = (np.bincount(first[keep], minlength=slots + 1)[:slots + 1]
             - np.bincount(last[keep], minlength=slots + 1)[:slots + 1])
    return np.cumsum(marks[:slots]) > 0


def leaked_slots(start: np.ndarray, end: np.ndarray, origin: int, grain: int) -> np.ndarray:
    """Indices of the ``grain``-sized slots from ``origin`` up to the last range that no
    range touches: space a pack can give back."""
    stop = max(origin, int(end.max())) if len(end) else origin
    slots = _slots(origin, stop, grain)
    return np.flatnonzero(~_occupied(start, end, origin, grain, slots))


class _Gaps:
    """Free byte ranges, searchable for the lowest one a range fits in (a max tree)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray) -> None:
        self.starts = starts.tolist()
        self.ends = ends.tolist()
        n = len(self.starts)
        self.size = size = 1 << max(0, (n - 1).bit_length())
        tree = [0] * (2 * size)
        tree[size:size + n] = [e - s for s, e in zip(self.starts, self.ends)]
        for i in range(size - 1, 0, -1):
            tree[i] = max(tree[2 * i], tree[2 * i + 1])
        self.tree = tree

    def _first(self, need: int, lo: int) -> int:
        """The lowest gap index >= ``lo`` at least ``need`` bytes long, or -1."""
        tree, size = self.tree, self.size

        def descend(node: int, left: int, right: int) -> int:
            if right <= lo or tree[node] < need:
                return -1
            if node >= size:
                return node - size
            mid = (left + right) // 2
            found = descend(2 * node, left, mid)
            return found if found >= 0 else descend(2 * node + 1, mid, right)

        return descend(1, 0, size)

    def _shrink(self, index: int, start: int) -> None:
        self.starts[index] = start
        node = index + self.size
        self.tree[node] = self.ends[index] - start
        while node > 1:
            node //= 2
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])

    def place(self, length: int, align: int, below: int) -> int:
        """Take ``length`` bytes at a multiple of ``align`` from the lowest gap that has
        them and starts below ``below``; -1 when none does."""
        lo = 0
        while True:
            index = self._first(length, lo)
            if index < 0 or self.starts[index] >= below:
                return -1
            at = align_up(self.starts[index], align)
            if at + length <= self.ends[index] and at < below:
                self._shrink(index, at + length)  # what alignment skipped is given up
                return at
            lo = index + 1


def _direct_moves(pos: np.ndarray, length: np.ndarray, align: np.ndarray, origin: int,
                  grain: int) -> tuple[np.ndarray, np.ndarray]:
    """One round of moves straight into holes lower down (no hole is a range that
    moves in the same round, so the round's copies can run in any order)."""
    end = pos + length
    stop = max(origin, int(end.max())) if len(pos) else origin
    occupied = _occupied(pos, end, origin, grain, _slots(origin, stop, grain))
    holes = np.flatnonzero(~occupied)
    rel = pos - origin
    unit = ((length <= grain) & (rel >= 0) & (rel % grain == 0) & (grain % align == 0)
            & (origin % align == 0))
    moved: list[np.ndarray] = []
    dests: list[np.ndarray] = []
    candidates = np.flatnonzero(unit)
    if holes.size and candidates.size:
        slot = rel[candidates] // grain
        highest = np.argsort(-slot, kind="stable")
        n = min(holes.size, highest.size)
        # Holes rise and slots fall: the pairs that move down form a prefix.
        k = int(np.count_nonzero(holes[:n] < slot[highest[:n]]))
        if k:
            chosen = candidates[highest[:k]]
            # Keep their order: clusters that were contiguous stay contiguous.
            moved.append(chosen[np.argsort(pos[chosen], kind="stable")])
            dests.append(origin + holes[:k].astype(np.int64) * grain)
    odd = np.flatnonzero(~unit & (length > 0))
    if odd.size:
        starts = np.concatenate([pos, *dests])
        ends = np.concatenate([end, *(d + length[m] for m, d in zip(moved, dests))])
        order = np.argsort(starts, kind="stable")
        tops = np.maximum.accumulate(ends[order])
        gap_start = np.maximum(np.concatenate([[origin], tops[:-1]]), origin)
        gap_end = starts[order]
        keep = gap_end > gap_start
        gaps = _Gaps(gap_start[keep], gap_end[keep])
        placed, where = [], []
        for i in odd[np.argsort(-pos[odd], kind="stable")].tolist():
            at = gaps.place(int(length[i]), int(align[i]), int(pos[i]))
            if at >= 0:
                placed.append(i)
                where.append(at)
        if placed:
            moved.append(np.array(placed, dtype=np.int64))
            dests.append(np.array(where, dtype=np.int64))
    if not moved:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(moved), np.concatenate(dests)


def _bubble(pos: np.ndarray, length: np.ndarray, align: np.ndarray, origin: int,
            grain: int) -> tuple[np.ndarray, np.ndarray]:
    """When no range fits the lowest hole, move the range just above it to the end of
    the file: the hole and its old place then make room that it fits in."""
    end = pos + length
    free = leaked_slots(pos, end, origin, grain)
    if not free.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    above = np.flatnonzero(pos >= origin + int(free[0]) * grain)
    x = int(above[np.argmin(pos[above])])
    return (np.array([x], dtype=np.int64),
            np.array([align_up(int(end.max()), int(align[x]))], dtype=np.int64))


def plan_moves(ext: Extents, origin: int, grain: int
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Rounds of ``(indices, new starts)`` that leave no ``grain``-sized slot from
    ``origin`` free below the last range, and the final starts.

    Every destination is free when its round starts, so each round is crash-safe
    on its own: copy, then repoint.
    """
    pos = ext.start.copy()
    rounds: list[tuple[np.ndarray, np.ndarray]] = []
    bubbles = 8 + 2 * int(np.count_nonzero(ext.length > grain))
    for _ in range(MAX_ROUNDS):
        idx, dst = _direct_moves(pos, ext.length, ext.align, origin, grain)
        if not idx.size:
            if bubbles <= 0:
                break
            bubbles -= 1
            idx, dst = _bubble(pos, ext.length, ext.align, origin, grain)
            if not idx.size:
                break
        pos[idx] = dst
        rounds.append((idx, dst))
    return rounds, pos


def copy_ranges(storage: Storage, src: np.ndarray, dst: np.ndarray,
                length: np.ndarray) -> None:
    """Copy ranges of the file, one read and write per run contiguous at both ends."""
    n = len(src)
    if not n:
        return
    starts = np.ones(n, dtype=bool)
    starts[1:] = (src[1:] != src[:-1] + length[:-1]) | (dst[1:] != dst[:-1] + length[:-1])
    bounds = np.append(np.flatnonzero(starts), n).tolist()
    for a, b in pairwise(bounds):
        source, target = int(src[a]), int(dst[a])
        total = int(src[b - 1] + length[b - 1]) - source
        for pos in range(0, total, COPY_CHUNK):
            count = min(COPY_CHUNK, total - pos)
            storage.copy_to(source + pos, count, storage, target + pos, "a cluster being moved")


def move_extents(storage: Storage, ext: Extents,
                 rounds: Sequence[tuple[np.ndarray, np.ndarray]],
                 repoint: Callable[[np.ndarray, np.ndarray], None],
                 progress: Progress | None = None) -> None:
    """Carry out :func:`plan_moves`: per batch, copy and flush, then ``repoint(indices,
    new starts)`` in one transaction.  ``ext.start`` follows the moves."""
    total = sum(int(ext.length[idx].sum()) for idx, _ in rounds)
    done = 0
    for idx, dst in rounds:
        order = np.argsort(dst, kind="stable")
        idx, dst = idx[order], dst[order]
        lengths = ext.length[idx]
        batch = (np.cumsum(lengths) - lengths) // BATCH_BYTES
        bounds = [0, *(np.flatnonzero(np.diff(batch)) + 1).tolist(), len(idx)]
        for a, b in pairwise(bounds):
            report(progress, done, total, "moving clusters")
            part, to = idx[a:b], dst[a:b]
            copy_ranges(storage, ext.start[part], to, ext.length[part])
            storage.flush()
            with storage.transaction():
                repoint(part, to)
            ext.start[part] = to
            done += int(ext.length[part].sum())
    report(progress, total, total, "moving clusters")


# -- checking ranges ----------------------------------------------------------------------

@dataclass
class Classified:
    """What :func:`classify` found for each range."""

    bad: np.ndarray      # unusable: misaligned, outside the file, into metadata
    cut: np.ndarray      # starts inside the file but ends past it
    loser: np.ndarray    # overlaps a range that comes first (exactly or partly)
    winner: np.ndarray   # for losers: the range it overlaps, else -1


def _overlapping(start: np.ndarray, end: np.ndarray, starts: np.ndarray,
                 ends: np.ndarray) -> np.ndarray:
    """Mask of ranges overlapping one of the sorted, disjoint ranges ``starts/ends``."""
    if not len(starts):
        return np.zeros(len(start), dtype=bool)
    idx = np.searchsorted(starts, end, side="left") - 1
    return (idx >= 0) & (ends[np.maximum(idx, 0)] > start)


def classify(start: np.ndarray, length: np.ndarray, align: np.ndarray | int, file_size: int,
             regions: Sequence[Region], tables: tuple[np.ndarray, np.ndarray] | None = None,
             may_cut: np.ndarray | bool = True) -> Classified:
    """Classify ranges an image points at.

    Unusable ranges are not considered further; among the others, a range
    overlapping one that starts lower (or the same range listed earlier) loses.
    ``tables``: sorted, disjoint ``(starts, ends)`` of metadata ranges too many to
    list as regions.  Ranges that may not be cut short (``may_cut`` False) are bad
    when they end past the file.
    """
    end = start + length
    bad = (start <= 0) | (start % align != 0) | (start >= file_size)
    for region in regions:
        bad |= (start < region.end) & (end > region.start)
    if tables is not None:
        bad |= _overlapping(start, end, *tables)
    cut = ~bad & (end > file_size)
    bad |= cut & ~np.asarray(may_cut)
    cut &= ~bad
    loser = np.zeros(len(start), dtype=bool)
    winner = np.full(len(start), -1, dtype=np.int64)
    good = np.flatnonzero(~bad)
    if good.size > 1:
        order = good[np.argsort(start[good], kind="stable")]
        ends = end[order]
        tops = np.maximum.accumulate(ends)
        positions = np.arange(len(order))
        holder = np.maximum.accumulate(np.where(ends == tops, positions, 0))
        lost = np.flatnonzero(start[order][1:] < tops[:-1]) + 1
        loser[order[lost]] = True
        winner[order[lost]] = order[holder[lost - 1]]
    return Classified(bad, cut, loser, winner)


def why_bad(offset: int, length: int, align: int, file_size: int, regions: Sequence[Region],
            tables: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """Words for what :func:`classify` found wrong with one range."""
    if offset <= 0:
        return "is not a valid offset"
    if offset % align:
        return f"is not a multiple of {align}"
    if offset >= file_size:
        return f"lies beyond the end of the file ({file_size} bytes)"
    for region in regions:
        if offset < region.end and offset + length > region.start:
            return f"overlaps the {region.what}"
    if tables is not None and _overlapping(np.array([offset]), np.array([offset + length]),
                                           *tables)[0]:
        return "overlaps an L2 table"
    return f"runs past the end of the file ({file_size} bytes)"


# -- check and repair -----------------------------------------------------------------------

Action = Callable[[Storage], None]


@dataclass
class CheckPlan:
    """Findings, and the fixes a repair applies: ``before`` runs first (growing the
    file, writing copies nothing points at yet), ``during`` in one transaction (the
    entry and header changes), and ``pack`` then gives leaked space back."""

    findings: list[Finding] = field(default_factory=list)
    before: list[Action] = field(default_factory=list)
    during: list[Action] = field(default_factory=list)
    pack: bool = False
    _listed: dict[str, int] = field(default_factory=dict)
    _summed: dict[str, list] = field(default_factory=dict)

    def add(self, severity: str, what: str, offset: int | None = None,
            fix: str | None = None, leaked: int = 0, kind: str | None = None) -> None:
        """Record a finding; past :data:`LISTED` of one ``kind`` they are summed up."""
        if kind is not None:
            self._listed[kind] = self._listed.get(kind, 0) + 1
            if self._listed[kind] > LISTED:
                summed = self._summed.setdefault(kind, [severity, fix, 0, 0])
                summed[2] += 1
                summed[3] += leaked
                return
        self.findings.append(Finding(severity, what, offset, fix, leaked))

    def finish(self) -> list[Finding]:
        """The findings, with one line for each kind of problem listed only in part."""
        for kind, (severity, fix, count, leaked) in self._summed.items():
            self.findings.append(Finding(severity, f"{count} more like the above: {kind}",
                                         None, fix, leaked))
        self._summed.clear()
        return self.findings

    @property
    def fixable(self) -> bool:
        return all(f.fix for f in self.findings)

    def apply(self, storage: Storage) -> None:
        """Apply the fixes gathered (not the pack)."""
        if not (self.before or self.during):
            return
        for action in self.before:
            action(storage)
        storage.flush()
        with storage.transaction():
            for action in self.during:
                action(storage)


def write_value(offset: int, value: int, dtype: str) -> Action:
    """A fix that writes one table entry."""
    raw = np.array([value], dtype=dtype).tobytes()
    return lambda storage: storage.write_at(offset, raw)


def run_check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list[Finding]:
    """The ``check`` class method of a cluster format ``cls``: ``cls._inspect(storage,
    plan, progress)`` finds the problems on the file itself (opened read-only unless
    repairing); a repair applies the fixes, then packs the image to reclaim leaks."""
    plan = CheckPlan()
    if io.exists(journal_path(path)):
        plan.add(WARNING, "an operation was interrupted; its journal is still pending",
                 None, "complete the interrupted operation")
    with io.open(path, writable=repair) as storage:  # a writable open completes it
        cls._inspect(storage, plan, progress)
        if repair:
            plan.apply(storage)
    if repair and plan.pack and plan.fixable:
        image = cls.open(io, path, OpenFlags.NORMAL)
        try:
            image.pack(progress)
        finally:
            image.close()
    return plan.finish()


def repair_open(cls, storage: Storage) -> list[Finding]:
    """The check a read/write open of an image left in use makes: every fix but the
    pack (leaked space is reused or trimmed by the session instead)."""
    plan = CheckPlan()
    cls._inspect(storage, plan)
    plan.apply(storage)
    return plan.finish()


def leak_findings(plan: CheckPlan, ext: Extents, origin: int, grain: int, file_size: int,
                  min_end: int, trunc: int) -> None:
    """Report clusters nothing uses and bytes after the last one (a pack reclaims them)."""
    free = leaked_slots(ext.start, ext.end, origin, grain)
    if free.size:
        plan.add(LEAK, f"{free.size} cluster(s) of {grain} bytes in the file are leaked "
                       f"(used by nothing)", origin + int(free[0]) * grain,
                 "move the last clusters into the holes and shorten the file",
                 leaked=int(free.size) * grain)
        plan.pack = True
    expected = align_up(ext.last_end(min_end), trunc)
    if file_size > expected:
        plan.add(LEAK, f"{file_size - expected} bytes after the last cluster in use are "
                       f"leaked", expected, "shorten the file", leaked=file_size - expected)
        plan.pack = True


# -- two-level tables ----------------------------------------------------------------------

@dataclass(frozen=True)
class CompressedSpec:
    """QCOW's compressed-cluster descriptors: bit 63 set, the byte offset in the low
    ``63 - cluster_bits`` bits, the compressed length above it."""

    cluster_bits: int

    @property
    def shift(self) -> int:
        return 63 - self.cluster_bits

    def mask(self, raw: np.ndarray) -> np.ndarray:
        return (raw >> np.uint64(63)) != 0

    def spans(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(byte offsets, lengths)`` of descriptors."""
        offsets = (raw & np.uint64((1 << self.shift) - 1)).astype(np.int64)
        lengths = ((raw >> np.uint64(self.shift))
                   & np.uint64((1 << self.cluster_bits) - 1)).astype(np.int64)
        return offsets, lengths

    def moved(self, raw: int, offset: int) -> int:
        """The descriptor ``raw`` with its data at ``offset``."""
        return raw & ~((1 << self.shift) - 1) | offset


@dataclass(frozen=True)
class TableLayout:
    """Where a two-level image keeps its tables and what its entries may hold."""

    cluster_size: int
    l2_entries: int
    dtype: str
    l1_offset: int
    #: L1 entries covering the disk (mapped); the table may hold more (checked).
    l1_count: int
    l1_capacity: int
    l1_span: int
    #: Metadata other than the tables (header, backing file name).
    regions: tuple[Region, ...]
    table_align: int
    data_align: int
    decode: Decoder
    #: Where clusters start: holes are counted, and filled, from here on.
    origin: int
    #: The L1 table moves to multiples of this (tables and clusters to multiples of
    #: the cluster size, as qemu allocates them).
    l1_align: int
    #: The file is at least this long, and its length a multiple of ``trunc``.
    min_end: int
    trunc: int
    compressed: CompressedSpec | None = None

    @property
    def table_bytes(self) -> int:
        return self.l2_entries * 8

    @property
    def l1_region(self) -> Region:
        return Region(self.l1_offset, self.l1_offset + self.l1_span, "L1 table")

    def entry_offset(self, l1: np.ndarray, cluster: int) -> int:
        """File offset of the L2 entry of guest cluster ``cluster``."""
        index, slot = divmod(cluster, self.l2_entries)
        return int(l1[index]) + 8 * slot


def _read_table(storage: Storage, offset: int, count: int, dtype: str) -> np.ndarray:
    """``count`` entries at ``offset`` as u64, zeros for the part past the end of file."""
    raw = storage.read_at(offset, count * 8).ljust(count * 8, b"\0")
    return np.frombuffer(raw, dtype=dtype).astype(np.uint64)


@dataclass
class TableSurvey:
    """Every table and cluster a two-level image points at, and what is wrong."""

    layout: TableLayout
    file_size: int
    l1: np.ndarray
    bad_l1: list[tuple[int, int, str]] = field(default_factory=list)
    shared_l1: list[tuple[int, int, int]] = field(default_factory=list)
    stray_l1: list[tuple[int, int]] = field(default_factory=list)
    #: Guest clusters whose entry is unusable: (cluster, raw entry, why).
    bad_data: list[tuple[int, int, str]] = field(default_factory=list)
    #: Guest clusters sharing a range with an earlier one: (cluster, other cluster).
    shared_data: list[tuple[int, int]] = field(default_factory=list)
    #: The file length that covers every range cut short by the end (0: none).
    cut_end: int = 0
    cut_count: int = 0
    #: Every usable range: the L1 table, L2 tables, clusters, compressed clusters.
    ext: Extents = field(default_factory=lambda: Extents.join([]))
    #: Raw entries of the clusters in ``ext`` (by position; 0 for the tables).
    raw: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    @property
    def damaged(self) -> bool:
        return bool(self.bad_l1 or self.shared_l1 or self.stray_l1 or self.bad_data
                    or self.shared_data or self.cut_end)

    def require_clean(self, path: str) -> None:
        if self.damaged:
            raise Corrupted("the image's tables are damaged (entries outside the file or "
                            "into metadata, shared clusters, or a file cut short); repair "
                            "it first (vdimg repair)", path)


def survey_tables(storage: Storage, layout: TableLayout,
                  progress: Progress | None = None) -> TableSurvey:
    """Read every table of a two-level image and classify what its entries point at."""
    lay = layout
    file_size = storage.size()
    l1 = _read_table(storage, lay.l1_offset, lay.l1_capacity, lay.dtype)
    survey = TableSurvey(lay, file_size, l1)
    meta_end = max([lay.l1_region.end, *(r.end for r in lay.regions)])
    if meta_end > file_size:
        survey.cut_end, survey.cut_count = meta_end, 1
    regions = (*lay.regions, lay.l1_region)
    # L1 entries: the L2 tables.
    nonzero = np.flatnonzero(l1)
    stray = nonzero[nonzero >= lay.l1_count]
    survey.stray_l1 = [(int(i), int(l1[i])) for i in stray]
    index = nonzero[nonzero < lay.l1_count]
    starts = l1[index].astype(np.int64)
    tables = classify(starts, np.full(len(index), lay.table_bytes, np.int64),
                      lay.table_align, file_size, regions)
    for i in np.flatnonzero(tables.bad).tolist():
        survey.bad_l1.append((int(index[i]), int(l1[index[i]]), why_bad(
            int(starts[i]), lay.table_bytes, lay.table_align, file_size, regions)))
    for i in np.flatnonzero(tables.loser).tolist():
        survey.shared_l1.append((int(index[i]), int(starts[i]),
                                 int(index[tables.winner[i]])))
    keep = ~tables.bad & ~tables.loser
    kept_index, kept_start = index[keep], starts[keep]
    if tables.cut.any():
        survey.cut_end = max(survey.cut_end, int((starts[tables.cut]).max()) + lay.table_bytes)
        survey.cut_count += int(np.count_nonzero(tables.cut))
    order = np.argsort(kept_start)
    table_ranges = (kept_start[order], kept_start[order] + lay.table_bytes)
    # L2 entries: the clusters.
    n = lay.l2_entries
    guests, offsets, lengths, aligns, kinds, raws = [], [], [], [], [], []
    for done, (i, start) in enumerate(zip(kept_index.tolist(), kept_start.tolist())):
        report(progress, done, len(kept_index), "reading L2 tables")
        raw = _read_table(storage, start, n, lay.dtype)
        states, offs = lay.decode(raw)
        plain = np.flatnonzero(((states == DATA) | (states == ALLOCATED_ZERO)) & (offs >= 0))
        guests.append(i * n + plain)
        offsets.append(offs[plain])
        lengths.append(np.full(plain.size, lay.cluster_size, np.int64))
        aligns.append(np.full(plain.size, lay.data_align, np.int64))
        kinds.append(np.full(plain.size, KIND_DATA, np.uint8))
        raws.append(raw[plain])
        if lay.compressed is not None:
            packed = np.flatnonzero(lay.compressed.mask(raw) & (states == DATA))
            where, size = lay.compressed.spans(raw[packed])
            guests.append(i * n + packed)
            offsets.append(where)
            lengths.append(size)
            aligns.append(np.ones(packed.size, np.int64))
            kinds.append(np.full(packed.size, KIND_COMPRESSED, np.uint8))
            raws.append(raw[packed])
    report(progress, len(kept_index), len(kept_index), "reading L2 tables")
    empty = np.zeros(0, np.int64)
    guest = np.concatenate(guests) if guests else empty
    start = np.concatenate(offsets) if offsets else empty
    length = np.concatenate(lengths) if lengths else empty
    kind = np.concatenate(kinds) if kinds else np.zeros(0, np.uint8)
    raw = np.concatenate(raws) if raws else np.zeros(0, np.uint64)
    align = np.concatenate(aligns) if aligns else empty
    plain = kind == KIND_DATA
    data = classify(start, np.where(length > 0, length, 1), align, file_size, regions,
                    table_ranges, may_cut=plain)
    bad = data.bad | (length <= 0)
    for i in np.flatnonzero(bad).tolist():
        why = ("has a compressed length of 0" if length[i] <= 0 else
               why_bad(int(start[i]), int(length[i]), int(align[i]), file_size, regions,
                       table_ranges))
        survey.bad_data.append((int(guest[i]), int(raw[i]), why))
    for i in np.flatnonzero(data.loser & ~bad).tolist():
        survey.shared_data.append((int(guest[i]), int(guest[data.winner[i]])))
    cut = data.cut & ~bad
    if cut.any():
        survey.cut_end = max(survey.cut_end, int((start[cut] + length[cut]).max()))
        survey.cut_count += int(np.count_nonzero(cut))
    good = ~bad
    movable = np.where(kind == KIND_COMPRESSED, SECTOR, lay.cluster_size)
    survey.ext = Extents.join([
        Extents.of([lay.l1_offset], lay.l1_span, lay.l1_align, KIND_L1, 0),
        Extents.of(kept_start, lay.table_bytes, lay.cluster_size, KIND_TABLE, kept_index),
        Extents(start[good], length[good], movable[good], kind[good], guest[good])])
    survey.raw = np.concatenate([np.zeros(1 + len(kept_start), np.uint64), raw[good]])
    return survey


def table_fixes(survey: TableSurvey, plan: CheckPlan, fill: str, marker: int = 0) -> None:
    """Findings and fixes for what :func:`survey_tables` found.

    ``fill`` says what an unusable cluster entry becomes: ``"free"`` (cleared: the
    guest reads the backing file or zeros), ``"marker"`` (the zero-cluster value
    ``marker``: reads zeros, hides the backing file) or ``"cluster"`` (a new
    all-zero cluster, for formats without a zero marker).
    """
    lay, l1, file_size = survey.layout, survey.l1, survey.file_size
    cs, dtype = lay.cluster_size, lay.dtype
    # New clusters (copies, zero clusters) go after everything, once the file is whole.
    tail = [align_up(max(file_size, survey.cut_end), cs)]

    def append(length: int) -> int:
        at = tail[0]
        tail[0] = align_up(at + length, cs)
        return at

    if survey.cut_end:
        need = survey.cut_end
        plan.add(ERROR, f"the file is cut short: {survey.cut_count} table(s) or cluster(s) "
                        f"lie partly beyond its end at {file_size}", file_size,
                 "extend the file with zeros to its full length")
        plan.before.append(lambda storage: storage.set_size(max(storage.size(), need)))
    for index, offset, why in survey.bad_l1:
        plan.add(ERROR, f"L1 entry {index} points to an L2 table at file offset {offset:#x}, "
                        f"which {why}", lay.l1_offset + 8 * index,
                 "clear the entry (that part of the disk then reads from the backing file, "
                 "or zeros)", kind="L1 entries point outside the file or into metadata")
        plan.during.append(write_value(lay.l1_offset + 8 * index, 0, dtype))
    for index, offset, other in survey.shared_l1:
        plan.add(ERROR, f"L1 entry {index} points to an L2 table at file offset {offset:#x} "
                        f"that overlaps the one of L1 entry {other}", lay.l1_offset + 8 * index,
                 "clear the entry (that part of the disk then reads from the backing file, "
                 "or zeros)", kind="L1 entries share an L2 table")
        plan.during.append(write_value(lay.l1_offset + 8 * index, 0, dtype))
    for index, offset in survey.stray_l1:
        plan.add(WARNING, f"L1 entry {index} lies beyond the end of the disk but points to "
                          f"file offset {offset:#x}", lay.l1_offset + 8 * index,
                 "clear the entry (its space is given back)",
                 kind="L1 entries beyond the end of the disk are in use")
        plan.during.append(write_value(lay.l1_offset + 8 * index, 0, dtype))
    fix = {"free": "clear the entry (the guest reads the backing file there, or zeros)",
           "marker": "make the cluster read as zeros",
           "cluster": "point the entry at a new all-zero cluster"}[fill]
    zero_clusters = 0
    for cluster, raw, why in survey.bad_data:
        at = lay.entry_offset(l1, cluster)
        plan.add(ERROR, f"the L2 entry of guest offset {cluster * cs} points to file offset "
                        f"{raw & ((1 << 63) - 1):#x}, which {why}", at, fix,
                 kind="L2 entries point outside the file or into metadata")
        if fill == "cluster":
            value = append(cs)
            zero_clusters += 1
        else:
            value = marker if fill == "marker" else 0
        plan.during.append(write_value(at, value, dtype))
    if zero_clusters:
        plan.before.append(lambda storage: storage.set_size(max(storage.size(), tail[0])))
    if survey.shared_data:
        position = {int(g): k for k, g in enumerate(survey.ext.ref.tolist())
                    if survey.ext.kind[k] >= KIND_DATA}
        copies: list[tuple[int, int, int]] = []
        for cluster, other in survey.shared_data:
            k = position[cluster]
            start, length = int(survey.ext.start[k]), int(survey.ext.length[k])
            plan.add(ERROR, f"guest offset {cluster * cs} uses the cluster at file offset "
                            f"{start:#x}, which guest offset {other * cs} uses too",
                     lay.entry_offset(l1, cluster), "give it a copy of its own",
                     kind="clusters are used by more than one entry")
            target = append(length)
            copies.append((start, target, length))
            raw = int(survey.raw[k])
            value = (lay.compressed.moved(raw, target)
                     if survey.ext.kind[k] == KIND_COMPRESSED else target)
            plan.during.append(write_value(lay.entry_offset(l1, cluster), value, dtype))
        src, dst, size = (np.array(c, dtype=np.int64) for c in zip(*copies))
        plan.before.append(lambda storage: copy_ranges(storage, src, dst, size))


class TwoLevelTable:
    """An L1 table in memory plus cached L2 tables, with validation and allocation.

    The layout's regions and the L1 table are metadata no data cluster or L2 table
    may overlap.  Offsets of L2 tables must be multiples of ``table_align`` and
    data offsets multiples of ``data_align``.
    """

    def __init__(self, storage: Storage, layout: TableLayout) -> None:
        self.storage = storage
        self.layout = layout
        self.path = storage.path
        self.cluster_size = layout.cluster_size
        self.l2_entries = layout.l2_entries
        self.reserved = [*layout.regions, layout.l1_region]
        self.table_align = layout.table_align
        self.data_align = layout.data_align
        self.decode = layout.decode
        self.table_bytes = layout.table_bytes
        #: Space a new L2 table takes: whole clusters, like every allocation.
        self.table_span = align_up(self.table_bytes, self.cluster_size)
        self.file_size = storage.size()
        #: Where the next allocation goes: the end of the file, cluster aligned.
        self.end = align_up(self.file_size, self.cluster_size)
        self.l1 = FlatTable(storage, layout.l1_offset, layout.l1_count, layout.dtype,
                            "L1 table")
        capacity = max(4, min(256, CACHE_BYTES // self.table_bytes))
        self.cache = TableCache(storage, self.l2_entries, layout.dtype, capacity, "L2 table",
                                decode=self._decode_table)
        self._refresh_l1()
        #: What lookups see where an L1 entry has no L2 table.
        self._no_table = self._decode_table(np.zeros(self.l2_entries, dtype=np.uint64))

    # -- validation ------------------------------------------------------------------

    def _refresh_l1(self) -> None:
        """Recompute which L1 entries are unusable and where the valid L2 tables are."""
        offsets = self.l1.entries.astype(np.int64)
        self._bad_l1 = (offsets != 0) & self._invalid(offsets, self.table_bytes,
                                                      self.table_align, tables=False)
        valid = offsets[(offsets != 0) & ~self._bad_l1]
        self._starts = np.unique(valid)
        # Data may now overlap a table (or the metadata moved): check tables anew.
        self.cache.drop_decoded()

    def _invalid(self, offsets: np.ndarray, length: int, align: int,
                 tables: bool = True) -> np.ndarray:
        """Mask of offsets whose ``length`` bytes are unusable (misaligned, outside the
        file, or overlapping metadata; with ``tables``, overlapping an L2 table too)."""
        bad = (offsets <= 0) | (offsets % align != 0) | (offsets > self.file_size - length)
        for region in self.reserved:
            bad |= (offsets < region.end) & (offsets + length > region.start)
        if tables and self._starts.size:
            bad |= _overlapping(offsets, offsets + length, self._starts,
                                self._starts + self.table_bytes)
        return bad

    def why(self, offset: int, length: int, align: int, tables: bool = True) -> str:
        """Words for what is wrong with one offset :meth:`_invalid` rejected."""
        if offset <= 0:
            return "is not a valid offset"
        if offset % align:
            return f"is not a multiple of {align}"
        if offset > self.file_size - length:
            return f"lies beyond the end of the file ({self.file_size} bytes)"
        for region in self.reserved:
            if offset < region.end and offset + length > region.start:
                return f"overlaps the {region.what}"
        if tables:
            return "overlaps an L2 table"
        return "is invalid"

    def unusable(self, offset: int, length: int) -> str | None:
        """Why ``length`` bytes at ``offset`` cannot hold data, or None when they can."""
        if self._invalid(np.array([offset], dtype=np.int64), length, 1)[0]:
            return self.why(offset, length, 1)
        return None

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

    def _pieces(self, first: int, count: int) -> Iterator[tuple[int, int, int, int]]:
        """``(position in the range, L1 index, slot, count)`` per L2 table touched."""
        n = self.l2_entries
        pos, stop = first, first + count
        while pos < stop:
            index, slot = divmod(pos, n)
            take = min(n - slot, stop - pos)
            yield pos - first, index, slot, take
            pos += take

    def entries(self, first: int, count: int) -> np.ndarray:
        """The raw L2 entries of clusters ``first .. first+count-1`` (0 where no table)."""
        out = np.zeros(count, dtype=np.uint64)
        for at, index, slot, take in self._pieces(first, count):
            if index < len(self.l1):
                table_offset = self._l2_offset(index)
                if table_offset:
                    out[at:at + take] = self.cache.get(table_offset)[slot:slot + take]
        return out

    def _decode_table(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """A table's states and offsets, and whether every data offset in it passes
        the checks of :meth:`lookup` (which then need not run: a growing file only
        makes more offsets valid, and everything else they depend on drops this)."""
        states, offsets = self.decode(raw.astype(np.uint64))
        try:
            self._check_data(0, states, offsets)
            checked = True
        except Corrupted:
            checked = False
        return frozen(states), frozen(offsets), checked

    def lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``BlockMap`` lookup: decoded states and validated file offsets."""
        pieces = []
        for _, index, slot, take in self._pieces(first, count):
            table_offset = self._l2_offset(index) if index < len(self.l1) else 0
            table = self.cache.decoded(table_offset) if table_offset else self._no_table
            pieces.append((table, slot, take))
        if len(pieces) == 1:
            (states, offsets, checked), slot, take = pieces[0]
            states, offsets = states[slot:slot + take], offsets[slot:slot + take]
        else:
            states = np.concatenate([t[0][slot:slot + take] for t, slot, take in pieces])
            offsets = np.concatenate([t[1][slot:slot + take] for t, slot, take in pieces])
            checked = all(t[2] for t, _, _ in pieces)
        if not checked:
            self._check_data(first, states, offsets)
        return states, offsets

    def _check_data(self, first: int, states: np.ndarray, offsets: np.ndarray) -> None:
        """Corrupted when a data offset of clusters ``first..`` is unusable."""
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

    def _set_l1(self, index: int, offset: int) -> None:
        self.l1.entries[index] = offset
        self.l1.persist(index, 1)
        self._refresh_l1()

    def set_entries(self, first: int, values: np.ndarray) -> None:
        """Point clusters ``first ..`` at ``values`` (raw L2 entries).

        Missing L2 tables are allocated at the end of the file and written whole
        before the L1 entry that links them; the caller has already written the data.
        """
        values = np.asarray(values, dtype=np.uint64)
        for at, index, slot, take in self._pieces(first, len(values)):
            if index >= len(self.l1):
                raise Corrupted(f"guest cluster {first + at} lies beyond the L1 table",
                                self.path)
            table_offset = self._l2_offset(index)
            new = not table_offset
            if new:
                table_offset = self.reserve(self.table_span)
                table = self.cache.new(table_offset)
                self.file_size = max(self.file_size, table_offset + self.table_bytes)
            else:
                table = self.cache.modify(table_offset)
            table[slot:slot + take] = values[at:at + take]
            self.cache.persist(table_offset, slot, take)
            if new:
                self._set_l1(index, table_offset)

    def release(self, first: int, count: int, value: int = 0) -> None:
        """Set the entries of clusters ``first ..`` to ``value`` (0: free, or a format's
        zero marker).  A table left with only free entries is unlinked, so a pack can
        give its space back too."""
        for at, index, slot, take in self._pieces(first, count):
            if index >= len(self.l1):
                break
            table_offset = self._l2_offset(index)
            if not table_offset:
                if value:
                    self.set_entries(first + at, np.full(take, value, dtype=np.uint64))
                continue
            table = self.cache.get(table_offset)
            if (table[slot:slot + take] != value).any():
                table = self.cache.modify(table_offset)
                table[slot:slot + take] = value
                self.cache.persist(table_offset, slot, take)
            if not value and not table.any():
                self._set_l1(index, 0)
                self.cache.forget(table_offset)

    # -- packing ---------------------------------------------------------------------

    def survey(self, progress: Progress | None = None) -> TableSurvey:
        return survey_tables(self.storage, self.layout, progress)

    def pack(self, move_l1: Callable[[int], None], progress: Progress | None = None) -> None:
        """Move tables and clusters into the holes, then cut the file after the last.

        ``move_l1(offset)`` records a new place of the L1 table in the header (it is
        called inside the transaction that repoints it).  The owner reloads the
        tables afterwards.
        """
        survey = self.survey()
        survey.require_clean(self.path)
        ext, raw = survey.ext, survey.raw
        lay = self.layout
        rounds, _ = plan_moves(ext, lay.origin, self.cluster_size)

        def repoint(idx: np.ndarray, dst: np.ndarray) -> None:
            self.file_size = self.storage.size()
            kinds = ext.kind[idx]
            for k, to in zip(idx[kinds == KIND_L1].tolist(), dst[kinds == KIND_L1].tolist()):
                move_l1(to)
                self.l1.offset = to
                self.reserved[-1] = Region(to, to + lay.l1_span, "L1 table")
            tables = kinds == KIND_TABLE
            for k, to in zip(idx[tables].tolist(), dst[tables].tolist()):
                index = int(ext.ref[k])
                self.cache.forget(int(self.l1.entries[index]))
                self.l1.entries[index] = to
                self.l1.persist(index, 1)
            self._refresh_l1()
            clusters = kinds >= KIND_DATA
            guests, targets = ext.ref[idx[clusters]], dst[clusters]
            n = self.l2_entries
            for index in np.unique(guests // n).tolist():
                these = guests // n == index
                table_offset = self._l2_offset(index)
                table = self.cache.modify(table_offset)
                for k, guest, to in zip(idx[clusters][these].tolist(),
                                        guests[these].tolist(), targets[these].tolist()):
                    table[guest % n] = (lay.compressed.moved(int(raw[k]), to)
                                        if ext.kind[k] == KIND_COMPRESSED else to)
                slots = guests[these] % n
                low = int(slots.min())
                self.cache.persist(table_offset, low, int(slots.max()) - low + 1)

        move_extents(self.storage, ext, rounds, repoint, progress)
        end = align_up(ext.last_end(lay.min_end), lay.trunc)
        self.storage.flush()  # every range is in its final place before the cut
        if self.storage.size() > end:
            self.storage.set_size(end)
