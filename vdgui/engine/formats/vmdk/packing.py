"""Planning the compaction of a sparse extent file, and reading its grain tables.

After its metadata area (the header's "overhead") a hosted sparse extent file holds
grains and, in files whose grain directory grew, grain tables and directories, in
any order, at any sector.  Packing moves the grains from the end of the file into
the holes below, lowest hole first, until no grain can move lower; then the tables
and directories that lie after the grains the same way; the file then ends after
whatever lies last.

:func:`plan_pack` works on sector numbers only, so the backend's ``pack`` (which
carries the plan out) and the check (which reports how much a pack would give
back) agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...io import Storage
from ...types import SECTOR

#: Largest single read when loading grain tables that lie back to back.
READ_RUN = 16 << 20


@dataclass
class Movable:
    """Things of one kind that packing may move: grains, grain tables, directories."""

    starts: np.ndarray  # sectors
    owners: np.ndarray  # what points at each (the caller's numbering)
    length: int         # sectors each


@dataclass
class PackPlan:
    """Per kind, the moves ``(source sector, target sector, owner)`` in ascending
    order (every target of a kind lies below every source of that kind), and the
    file's end afterwards."""

    moves: list[list[tuple[int, int, int]]]
    end: int  # sectors


def plan_pack(kinds: list[Movable], fixed: list[tuple[int, int]] | np.ndarray,
              data_start: int) -> PackPlan:
    """Where things go so that the file is as short as possible.

    Kinds are placed in order (grains first, then the small tables into what space
    is left), each from the end of the file into the lowest hole it fits.
    ``fixed`` are ``(start, length)`` sector ranges that stay; only what ends after
    ``data_start`` matters.  Raises ValueError when ranges overlap.
    """
    ranges = np.asarray(fixed, dtype=np.int64).reshape(-1, 2)
    ranges = ranges[ranges.sum(axis=1) > data_start]
    fixed_starts, fixed_ends = ranges[:, 0], ranges.sum(axis=1)
    current = [np.asarray(kind.starts, dtype=np.int64).copy() for kind in kinds]
    moves: list[list[tuple[int, int, int]]] = []
    for k, kind in enumerate(kinds):
        starts = np.concatenate([fixed_starts] + current)
        ends = np.concatenate([fixed_ends] + [c + other.length
                                              for c, other in zip(current, kinds)])
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
        reach = np.maximum.accumulate(ends) if len(ends) else ends
        if np.any(starts[1:] < reach[:-1]):
            raise ValueError("overlapping ranges")
        hole_starts = np.maximum(np.concatenate([[data_start], reach[:-1]]), data_start) \
            if len(starts) else np.zeros(0, dtype=np.int64)
        fits = starts - hole_starts >= kind.length
        planned, which = _fill(list(zip(hole_starts[fits].tolist(), starts[fits].tolist())),
                               current[k], np.asarray(kind.owners), kind.length)
        moves.append(planned)
        current[k][which] = [target for _, target, _ in planned]
    end = max([data_start] + ([int(fixed_ends.max())] if len(fixed_ends) else [])
              + [int(c.max()) + kind.length for c, kind in zip(current, kinds) if len(c)])
    return PackPlan(moves, end)


def _fill(holes: list[tuple[int, int]], starts: np.ndarray, owners: np.ndarray,
          length: int) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Move the last items into the lowest holes they fit while that is lower.
    Returns the moves and, in the same order, the positions of the moved items."""
    picked: list[int] = []
    targets: list[int] = []
    h = 0
    for i in np.argsort(starts, kind="stable")[::-1].tolist():
        while h < len(holes) and holes[h][1] - holes[h][0] < length:
            h += 1
        if h == len(holes) or holes[h][0] >= int(starts[i]):
            break
        targets.append(holes[h][0])
        holes[h] = (holes[h][0] + length, holes[h][1])
        picked.append(i)
    # Every target lies below every source: pair them in ascending order, so that
    # items that followed each other in the file still do.
    picked.reverse()
    return ([(int(starts[i]), t, int(owners[i])) for i, t in zip(picked, targets)], picked)


def read_tables(storage: Storage, sectors: np.ndarray, entries: int, what: str) -> np.ndarray:
    """The tables of ``entries`` 32-bit entries at ``sectors``, one row each.

    Tables that lie back to back (the usual layout) are read with one I/O per run.
    A table cut short by the end of the file raises :class:`Corrupted`.
    """
    sectors = np.asarray(sectors, dtype=np.int64)
    table_bytes = entries * 4
    span = -(-table_bytes // SECTOR)
    out = np.zeros((len(sectors), entries), dtype="<u4")
    if not len(sectors):
        return out
    order = np.argsort(sectors, kind="stable")
    ordered = sectors[order]
    breaks = np.flatnonzero(np.diff(ordered) != span) + 1
    per_run = max(1, READ_RUN // (span * SECTOR))
    for run in np.split(np.arange(len(ordered)), breaks):
        for first in range(0, len(run), per_run):
            part = run[first:first + per_run]
            start = int(ordered[part[0]]) * SECTOR
            length = (len(part) - 1) * span * SECTOR + table_bytes
            raw = storage.read_exact(start, length, what)
            view = np.frombuffer(raw + bytes(-len(raw) % (span * SECTOR)), dtype="<u4")
            rows = view.reshape(len(part), span * SECTOR // 4)[:, :entries]
            out[order[part]] = rows
    return out
