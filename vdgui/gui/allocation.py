"""The allocation map of a chain: which layer serves each part of the virtual disk.

Built from :meth:`vdgui.engine.Disk.map` (no data is read, only the images' block
tables): the extents say which image of the chain answers for each range, and
whether that answer is data or zeros.  On top of that, each layer's *stored* bytes
(everything it holds, whether or not a child hides it) give the *shadowed* bytes:
data that a differencing image above has replaced, which a merge makes obsolete
and which only takes space.

:class:`MapBuilder` scans in steps so that a view can draw the map while it is
still being read (the GUI runs the steps through qasync on a worker thread);
:meth:`AllocationMap.cells` reduces the extents to a fixed number of cells for
drawing.  Qt-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..engine import Disk, Progress
from ..engine.ops.preflight import held_bytes

#: Cell categories besides the layers: no image holds it (reads as zeros), and
#: not scanned yet.
UNALLOCATED = -1
UNKNOWN = -2

#: How much of the virtual disk one scanning step covers.
STEP = 1 << 34


@dataclass(frozen=True)
class LayerStats:
    """What one image of the chain contributes."""

    depth: int
    path: str
    #: Data bytes this layer serves to the top of the chain.
    visible: int
    #: Bytes this layer defines as zeros (hiding what lies below).
    zero: int
    #: Data bytes this layer stores, including those hidden by images above.
    stored: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def shadowed(self) -> int:
        """Stored data nobody sees any more (an image above replaced it)."""
        return max(self.stored - self.visible, 0)


@dataclass
class AllocationMap:
    """Extents covering ``[0, scanned)`` of a disk of ``size`` bytes."""

    size: int
    paths: list[str]
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    depths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    zeros: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    scanned: int = 0
    #: Filled in once the whole disk was scanned.
    layers: list[LayerStats] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.scanned >= self.size and bool(self.layers)

    def _bytes(self, mask: np.ndarray) -> int:
        return int(self.lengths[mask].sum())

    @property
    def unallocated(self) -> int:
        """Bytes no image holds (they read as zeros)."""
        return self._bytes(self.depths == UNALLOCATED)

    def visible(self, depth: int, zero: bool = False) -> int:
        """Bytes served by layer ``depth`` as data (or, with ``zero``, as zeros)."""
        return self._bytes((self.depths == depth) & (self.zeros == zero))

    def shares(self, count: int) -> np.ndarray:
        """The disk cut into ``count`` equal cells: for each, the fraction of it that
        each category serves.  Columns: see :func:`column_of` / :func:`category_of`."""
        columns = 2 + 2 * len(self.paths)
        if count <= 0 or self.size <= 0:
            return np.zeros((0, columns))
        bounds = np.array([i * self.size // count for i in range(count + 1)], dtype=np.int64)
        ends = self.starts + self.lengths
        points = np.union1d(np.concatenate([self.starts, ends, [self.scanned]]), bounds)
        points = points[(points >= 0) & (points <= self.size)]
        seg_start, seg_len = points[:-1], np.diff(points)
        cell = np.searchsorted(bounds, seg_start, side="right") - 1
        category = np.zeros(len(seg_start), dtype=np.int64)  # column 0: not scanned
        if len(self.starts):
            extent = np.searchsorted(self.starts, seg_start, side="right") - 1
            covered = (extent >= 0) & (seg_start < self.scanned)
            extent = np.clip(extent, 0, len(self.starts) - 1)
            depth = self.depths[extent].astype(np.int64)
            category = np.where(covered, np.where(depth == UNALLOCATED, 1,
                                                  2 + 2 * depth + self.zeros[extent]), 0)
        weights = np.zeros((count, columns), dtype=np.float64)
        np.add.at(weights, (cell, category), seg_len.astype(np.float64))
        return weights / np.maximum(np.diff(bounds), 1)[:, None]

    def dominant(self, count: int) -> list[tuple[int, bool]]:
        """For each of ``count`` cells, the category serving most of it."""
        return [category_of(int(c)) for c in self.shares(count).argmax(axis=1)]

    def breakdown(self, start: int, end: int) -> list[tuple[int, bool, int]]:
        """``(depth, zero, bytes)`` for what serves ``[start, end)``, largest first."""
        ends = self.starts + self.lengths
        mask = (self.starts < end) & (ends > start)
        totals: dict[tuple[int, bool], int] = {}
        for s, e, d, z in zip(self.starts[mask], ends[mask], self.depths[mask],
                              self.zeros[mask]):
            key = (int(d), bool(z) and d != UNALLOCATED)
            totals[key] = totals.get(key, 0) + int(min(e, end) - max(s, start))
        return sorted(((d, z, n) for (d, z), n in totals.items()), key=lambda t: -t[2])


def column_of(depth: int, zero: bool = False) -> int:
    """The column of :meth:`AllocationMap.shares` for a category."""
    if depth == UNKNOWN:
        return 0
    if depth == UNALLOCATED:
        return 1
    return 2 + 2 * depth + int(zero)


def category_of(column: int) -> tuple[int, bool]:
    """``(depth or UNALLOCATED/UNKNOWN, zero)`` of a column of :meth:`AllocationMap.shares`."""
    if column == 0:
        return UNKNOWN, False
    if column == 1:
        return UNALLOCATED, True
    return (column - 2) // 2, bool((column - 2) % 2)


class MapBuilder:
    """Reads the allocation map of an opened chain, a step at a time."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.map = AllocationMap(disk.size, [image.path for image in disk.images])
        self._pieces: list[tuple[int, int, int, bool]] = []

    @property
    def done(self) -> bool:
        return self.map.complete

    def advance(self, length: int = STEP, progress: Progress | None = None) -> AllocationMap:
        """Scan the next ``length`` bytes of the disk (then the layers' totals once the
        end is reached); returns the map so far."""
        m = self.map
        if m.scanned < m.size:
            end = min(m.scanned + length, m.size)
            for extent in self.disk.map(m.scanned, end - m.scanned):
                if progress is not None:
                    progress.update(extent.offset, m.size, "reading the block tables")
                depth = UNALLOCATED if extent.depth is None else extent.depth
                piece = (extent.offset, extent.length, depth, extent.zero)
                last = self._pieces[-1] if self._pieces else None
                if last and last[0] + last[1] == piece[0] and last[2:] == piece[2:]:
                    self._pieces[-1] = (last[0], last[1] + piece[1], depth, extent.zero)
                else:
                    self._pieces.append(piece)
            m.scanned = end
            self._publish()
        elif not m.layers:
            m.layers = self._layers(progress)
        return m

    def _publish(self) -> None:
        pieces = self._pieces
        m = self.map
        m.starts = np.fromiter((p[0] for p in pieces), np.int64, len(pieces))
        m.lengths = np.fromiter((p[1] for p in pieces), np.int64, len(pieces))
        m.depths = np.fromiter((p[2] for p in pieces), np.int32, len(pieces))
        m.zeros = np.fromiter((p[3] for p in pieces), bool, len(pieces))

    def _layers(self, progress: Progress | None) -> list[LayerStats]:
        out = []
        count = len(self.map.paths)
        for depth, path in enumerate(self.map.paths):
            if progress is not None:
                progress.update(depth, count, "counting each layer's data")
            out.append(LayerStats(depth, path, self.map.visible(depth),
                                  self.map.visible(depth, zero=True),
                                  held_bytes(self.disk, depth, depth)))
        return out

    def run(self, progress: Progress | None = None) -> AllocationMap:
        """The whole map in one go (on a worker thread)."""
        while not self.done:
            self.advance(progress=progress)
        return self.map
