"""Free space in a VHDX file, and the plan that compacts it.

Past the first MiB everything is 1 MiB aligned: the log, the BAT and metadata
regions (the *structures*), payload blocks and sector bitmap blocks.  Space none of
them uses is free.  Compacting moves the block that ends last into the lowest free
run that holds it and lies below it, and repeats until the last block cannot move;
the file then ends where the last block or structure ends.  The BAT moves like a
block (growing a disk may have put it after the blocks).  The check uses the same
plan to measure what a compaction would give back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


#: The index of a :class:`Move` of the BAT region itself.
BAT = -1


@dataclass(frozen=True)
class Move:
    """Copy ``size`` bytes of the block named by BAT entry ``index`` (or of the BAT,
    index :data:`BAT`) to ``target``."""

    index: int
    source: int
    target: int
    size: int


@dataclass
class Plan:
    """The moves, in the order to make them (the last block first)."""

    moves: list[Move] = field(default_factory=list)
    #: Where the file ends once the moves are made.
    end: int = 0


def holes(used: list[tuple[int, int]]) -> list[list[int]]:
    """The gaps ``[start, end]`` between the used ranges (which may overlap)."""
    out = []
    cursor = 0
    for start, end in sorted(used):
        if start > cursor:
            out.append([cursor, start])
        cursor = max(cursor, end)
    return out


def plan(structures: list[tuple[int, int]], bat: tuple[int, int], indices: np.ndarray,
         starts: np.ndarray, ends: np.ndarray, floor: int = 0) -> Plan:
    """The moves that compact the file, and where it ends afterwards.

    ``structures`` stay where they are; the ``bat`` region and the blocks (BAT
    ``indices``, file ``starts`` and ``ends``) may move, into free space at or
    above ``floor`` only.
    """
    blocks = sorted([*zip(starts.tolist(), ends.tolist(), indices.tolist()), (*bat, BAT)],
                    reverse=True)
    gaps = [[max(s, floor), e] for s, e in holes(structures + [(s, e) for s, e, _ in blocks])
            if e > floor]
    result = Plan()
    first_fit: dict[int, int] = {}  # per block size: gaps before it are too small for it
    kept_end = max((e for _, e in structures), default=0)
    for start, end, index in blocks:
        size = end - start
        at = first_fit.get(size, 0)
        while at < len(gaps) and gaps[at][1] - gaps[at][0] < size:
            at += 1  # gaps only shrink: too small now means too small for good
        first_fit[size] = at
        if at == len(gaps) or gaps[at][0] >= start:
            kept_end = max(kept_end, end)  # the last block cannot move: the file ends there
            break
        result.moves.append(Move(index, start, gaps[at][0], size))
        kept_end = max(kept_end, gaps[at][0] + size)
        gaps[at][0] += size
    result.end = kept_end
    return result
