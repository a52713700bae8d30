"""Compacting a QCOW2 image: clusters from the end of the file move into free
clusters lower down, then the file is cut after its last used cluster.

First a :class:`~.check.Scan` must find the image consistent (leaks aside: leaked
clusters are freed).  Then, in order: the L1 and refcount tables move into the
lowest runs of free clusters if they lie beyond where the file could end; data
clusters, L2 tables and refcount blocks of the active disk that nothing else
shares move, the highest first, into the lowest free clusters; refcount blocks
that count only clusters past the new end are dropped; the file is cut.

Every move keeps qemu's order: copy the content and count the new place, flush;
point the table (L2 entry, L1 entry, refcount table entry or header) at it,
flush; uncount the old place.  A crash at any moment therefore leaves an image
that reads the same and that ``qemu-img check`` finds clean or leaking, never
corrupt (the leaks are freed by the next compaction or a repair).  What the
image shares with internal snapshots, compressed clusters and snapshot metadata
stay where they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...errors import Corrupted
from ...findings import LEAK
from ...progress import Progress, report
from .check import DATA, L2, REFBLOCK, Scan
from .l1l2 import COPIED, OFFSET_MASK

if TYPE_CHECKING:  # pragma: no cover
    from .image import Qcow2Image

#: Bytes of clusters moved between two flushes.
BATCH_BYTES = 32 << 20

_KEEP = np.uint64(~OFFSET_MASK & 0xFFFFFFFFFFFFFFFF)


def pack_image(image: Qcow2Image, progress: Progress | None = None) -> None:
    """Compact ``image`` (opened for writing) as the module notes describe."""
    image.storage.flush()
    scan = Scan(image.storage, image.path, want_index=True).run()
    problems = [f for f in scan.findings if f.severity != LEAK]
    if problems or not scan.complete:
        what = problems[0].what if problems else "it could not be checked"
        raise Corrupted(f"the image must be repaired before it can be compacted ({what}); "
                        f"run a repair first", image.path)
    _Packer(image, scan, progress).run()


class _Packer:
    def __init__(self, image: Qcow2Image, scan: Scan, progress: Progress | None) -> None:
        self.image, self.scan, self.progress = image, scan, progress
        self.storage = image.storage
        self.refcounts = image.refcounts
        self.h = image.header
        self.cs, self.cb = self.h.cluster_size, self.h.cluster_bits
        self.per_block = scan.per_block
        self.claim = scan.claim.copy()
        self.refs = scan.refs.astype(np.int64)
        self.stored = scan.stored.astype(np.int64)
        # Whole clusters inside the file (a last, partial one is never a target).
        self.whole = self.storage.size() // self.cs

    def run(self) -> None:
        self._free_leaks()
        self._move_table("refcount table", self.h.refcount_table_offset,
                         self.h.refcount_table_clusters, self.refcounts.move_table)
        self._move_table("L1 table", self.h.l1_table_offset,
                         -(-self.h.l1_size * 8 // self.cs), self._move_l1)
        self._move_clusters()
        self.storage.flush()
        self.refcounts.forget_freed()
        end = (self.refcounts.last_used() + 1) * self.cs
        if self.storage.size() > end:
            self.storage.set_size(end)
            self.storage.flush()
        self.image._build_guard()

    # -- what is where ---------------------------------------------------------------

    def _free_leaks(self) -> None:
        """Leaked clusters (counted, referenced by nothing) become free."""
        leaked = np.flatnonzero((self.stored > 0) & (self.refs == 0))
        if leaked.size or self.scan.stray_clusters.size:
            self.refcounts.clear(np.concatenate([leaked, self.scan.stray_clusters]))
            self.stored[leaked] = 0
            self.storage.flush()

    def _holes(self) -> np.ndarray:
        """Free clusters inside the file that an existing refcount block counts."""
        n = len(self.refs)
        free = (self.refs == 0) & (self.stored == 0)
        free[min(self.whole, n):] = False
        blocks = np.zeros(n // self.per_block + 1, dtype=bool)
        blocks[[b for b in self.scan.blocks if b < len(blocks)]] = True
        free &= blocks[np.arange(n) // self.per_block]
        free[self.claim != 0] = False
        return free

    def _use(self, clusters: np.ndarray, kind: int) -> None:
        self.refs[clusters] = self.stored[clusters] = 1
        self.claim[clusters] = kind

    def _release(self, clusters: np.ndarray) -> None:
        self.refs[clusters] = self.stored[clusters] = 0
        self.claim[clusters] = 0

    # -- the L1 and refcount tables ----------------------------------------------------

    def _move_table(self, label: str, offset: int, clusters: int, move) -> None:
        """Move a multi-cluster table into the lowest free run, when it lies beyond
        where the file could end."""
        first = offset >> self.cb
        used = int(np.count_nonzero(self.refs))
        if not clusters or first + clusters <= used:
            return
        free = self._holes()[:first].astype(np.int8)
        edges = np.diff(np.concatenate(([0], free, [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        fits = np.flatnonzero(ends - starts >= clusters)
        if not fits.size:
            return
        target = int(starts[fits[0]])
        kind = int(self.claim[first])
        report(self.progress, 0, 1, f"moving the {label}")
        move(target)
        self._use(np.arange(target, target + clusters), kind)
        self._release(np.arange(first, first + clusters))

    def _move_l1(self, target: int) -> None:
        image, h, cs = self.image, self.h, self.cs
        clusters = -(-h.l1_size * 8 // cs)
        old = h.l1_table_offset >> self.cb
        table = image.map.l1.tobytes()
        self.storage.write_at(target * cs, table + bytes(clusters * cs - len(table)))
        self.refcounts.increment(target, clusters)
        self.storage.flush()
        image._write_size_and_l1(h.size, h.l1_size, target * cs)
        image.map.l1.offset = target * cs
        image._set_static_range("L1 table", target * cs, clusters)
        self.refcounts.adjust(np.arange(old, old + clusters, dtype=np.int64), -1)

    # -- single clusters ---------------------------------------------------------------

    def _plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sources, targets, dropped blocks)``: the clusters to move (each into the
        target at the same position) and the refcount blocks to drop.

        The file can end at ``E``: after every cluster that stays, and after as
        many clusters as remain in use; blocks counting only clusters from ``E`` on
        are not needed any more, which may let ``E`` come down further.
        """
        one = (self.refs == 1) & (self.stored == 1)
        kinds = self.claim
        movable = one & ((kinds == DATA) | (kinds == L2) | (kinds == REFBLOCK))
        used = (self.refs > 0) | (self.stored > 0)
        fixed = np.flatnonzero(used & ~movable)
        floor = int(fixed[-1]) + 1 if fixed.size else 1
        block_at = {int(offset >> self.cb): index for index, offset in self.scan.blocks.items()}
        count = int(np.count_nonzero(used))

        def dropped(end: int) -> list[int]:
            return [c for c, index in block_at.items() if index * self.per_block >= end]

        # A dropped block needs no place below the end unless it already lies there;
        # each step keeps room for everything that must move below the end.
        end = max(floor, count)
        while True:
            lower = max(floor, count - sum(1 for c in dropped(end) if c >= end))
            if lower >= end:
                break
            end = lower
        drop = np.array(sorted(dropped(end)), dtype=np.int64)
        moving = movable.copy()
        moving[drop] = False
        sources = np.flatnonzero(moving)
        sources = sources[sources >= end]
        targets = np.flatnonzero(self._holes()[:end])[:len(sources)]
        if len(targets) < len(sources):
            # Some holes have no refcount block (rare): move what fits, drop nothing.
            return sources[:len(targets)], targets, np.zeros(0, dtype=np.int64)
        return sources, targets, drop

    def _move_clusters(self) -> None:
        sources, targets, drop = self._plan()
        kinds = self.claim[sources]
        total, done = len(sources), 0
        step = max(1, BATCH_BYTES // self.cs)
        for kind, move in ((DATA, self._move_data), (L2, self._move_l2)):
            chosen = kinds == kind
            src, dst = sources[chosen], targets[chosen]
            for i in range(0, len(src), step):
                report(self.progress, done, total, "moving clusters")
                move(src[i:i + step], dst[i:i + step])
                done += len(src[i:i + step])
        for source, target in zip(sources[kinds == REFBLOCK].tolist(),
                                  targets[kinds == REFBLOCK].tolist()):
            report(self.progress, done, total, "moving clusters")
            self.refcounts.move_block(int(self.scan.index[source]), target)
            done += 1
        if drop.size:
            self.refcounts.drop_blocks([int(self.scan.index[c]) for c in drop.tolist()])
        report(self.progress, total, total, "moving clusters")

    def _copy(self, sources: np.ndarray, targets: np.ndarray) -> None:
        """Copy clusters, one read and one write per run contiguous on both sides."""
        cs = self.cs
        breaks = np.flatnonzero((np.diff(sources) != 1) | (np.diff(targets) != 1)) + 1
        for run_src, run_dst in zip(np.split(sources, breaks), np.split(targets, breaks)):
            self.storage.copy_to(int(run_src[0]) * cs, len(run_src) * cs, self.storage,
                                 int(run_dst[0]) * cs)
        self.refcounts.adjust(targets, 1)
        self.storage.flush()

    def _move_data(self, sources: np.ndarray, targets: np.ndarray) -> None:
        image, cb = self.image, self.cb
        self._copy(sources, targets)
        guest = self.scan.index[sources]
        per = image.map.l2_entries
        for l1_index in np.unique(guest // per).tolist():
            mine = np.flatnonzero(guest // per == l1_index)
            table_offset = image.map.l2_table_offset(l1_index)
            table = image.map.l2.modify(table_offset)
            slots = guest[mine] % per
            table[slots] = (table[slots] & _KEEP) | (targets[mine].astype(np.uint64)
                                                     << np.uint64(cb))
            lo, hi = int(slots.min()), int(slots.max())
            image.map.l2.persist(table_offset, lo, hi - lo + 1)
        self.storage.flush()
        self.refcounts.adjust(sources, -1)

    def _move_l2(self, sources: np.ndarray, targets: np.ndarray) -> None:
        image, cs, cb = self.image, self.cs, self.cb
        l2 = image.map.l2
        for source, target in zip(sources.tolist(), targets.tolist()):
            self.storage.write_at(target * cs, l2.get(source << cb).tobytes())
        self.refcounts.adjust(targets, 1)
        self.storage.flush()
        l1 = image.map.l1
        indices = self.scan.index[sources]
        l1.entries[indices] = (targets.astype(np.uint64) << np.uint64(cb)) | np.uint64(COPIED)
        for index in indices.tolist():
            l1.persist(index, 1)
        self.storage.flush()
        self.refcounts.adjust(sources, -1)
        for source in sources.tolist():
            l2.forget(source << cb)
            image.map.forget_checked(source << cb)
