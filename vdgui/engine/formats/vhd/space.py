"""Where things lie in a dynamic VHD file, and where they can be moved.

A dynamic or differencing VHD file holds fixed metadata (the footer copy at 0, the
dynamic header, the BAT), parent locator data and data blocks (bitmap plus data,
all of one span), in any order the writer chose, then the footer.  Blocks and
locator data can move: their positions are only referenced from the BAT and the
header.  Compaction moves the last ones into the holes below them; the check
reports holes big enough for a block as leaked space.

Everything here is arithmetic on ``(start, end)`` byte ranges, with no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...sizes import align_up
from .footer import BAT_FREE, FOOTER_SIZE, HEADER_SIZE, SECTOR

Range = tuple[int, int]


def metadata_ranges(header_offset: int, table_offset: int, entries: int) -> list[Range]:
    """The ranges nothing may move: the footer copy, the dynamic header, the BAT
    (padded to whole sectors, as every writer pads it)."""
    return [(0, FOOTER_SIZE), (header_offset, header_offset + HEADER_SIZE),
            (table_offset, table_offset + align_up(4 * entries, SECTOR))]


def locator_range(entry: dict) -> Range:
    """The sectors a locator's data occupies (its data length, whole sectors).

    Only the data is counted, not the reserved "data space" (whose unit writers
    disagree on): space after the data may be reused, and whoever rewrites the
    locator checks for room first.
    """
    start = entry["data_offset"]
    return start, align_up(start + entry["data_length"], SECTOR)


def block_starts(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(block indexes, file offsets)`` of the allocated blocks, by file offset."""
    used = np.flatnonzero(entries != BAT_FREE)
    starts = entries[used].astype(np.int64) * SECTOR
    order = np.argsort(starts, kind="stable")
    return used[order], starts[order]


def gaps(occupied: list[Range], end: int) -> list[list[int]]:
    """The unused ``[start, end]`` runs below ``end`` between the ``occupied`` ranges
    (which may overlap and come in any order)."""
    out: list[list[int]] = []
    cursor = 0
    for start, stop in sorted(occupied):
        if start > cursor:
            out.append([cursor, min(start, end)])
        cursor = max(cursor, stop)
        if cursor >= end:
            break
    if cursor < end:
        out.append([cursor, end])
    return [g for g in out if g[1] > g[0]]


def leaked(starts: np.ndarray, ends: np.ndarray, end: int, span: int) -> tuple[int, int]:
    """``(bytes, first offset)`` of the unused runs of at least ``span`` bytes below
    ``end`` between the occupied ranges ``[starts, ends)`` (any order, overlaps
    allowed): room for a whole block that nothing uses (compaction reclaims it).

    Smaller runs are alignment padding some writers leave on purpose.
    """
    order = np.argsort(starts, kind="stable")
    reach = np.maximum.accumulate(ends[order]) if len(order) else np.zeros(0, np.int64)
    lows = np.concatenate(([0], reach))                 # where each run starts
    highs = np.minimum(np.append(starts[order], end), end)  # and where it stops
    big = highs - lows >= span
    if not big.any():
        return 0, -1
    return int((highs - lows)[big].sum()), int(lows[big][0])


@dataclass(frozen=True)
class Move:
    """Move ``length`` bytes from ``source`` to ``target``: a block (``block`` is its
    BAT index) or a locator's data (``slot`` is its header entry)."""

    source: int
    target: int
    length: int
    block: int = -1
    slot: int = -1


def plan_compaction(fixed: list[Range], locators: dict[int, Range], block_index: np.ndarray,
                    starts: np.ndarray, span: int) -> tuple[list[Move], int]:
    """Moves that fill the holes with the last blocks and locators, and the end of
    the data once they are done (where the footer then goes).

    Items are taken from the end of the file; each goes to the lowest hole below it
    that can hold it.  Holes only ever shrink (a moved item's old place lies above
    every item still to move), so one pass over them, lowest first, finds every
    hole a block fits in.
    """
    items: list[tuple[int, int, int, int]] = [(int(s), span, int(b), -1)
                                              for b, s in zip(block_index, starts)]
    items += [(start, stop - start, -1, slot) for slot, (start, stop) in locators.items()]
    items.sort(reverse=True)
    occupied = list(fixed) + [(start, start + length) for start, length, _, _ in items]
    top = max((stop for _, stop in occupied), default=0)
    holes = gaps(occupied, top)
    moves: list[Move] = []
    first = 0  # holes before this one are too small for a block
    ends = [stop for _, stop in fixed]
    for start, length, block, slot in items:
        if block >= 0:
            while first < len(holes) and holes[first][1] - holes[first][0] < span:
                first += 1
            candidates = holes[first:first + 1]
        else:
            candidates = [h for h in holes if h[1] - h[0] >= length][:1]
        if candidates and candidates[0][0] < start:
            hole = candidates[0]
            moves.append(Move(start, hole[0], length, block, slot))
            ends.append(hole[0] + length)
            hole[0] += length
        else:
            ends.append(start + length)
    return moves, max(ends, default=0)


def obstacles(ranges: list[tuple[Range, int, int]], start: int, end: int) -> list[tuple[Range, int, int]]:
    """The items ``((start, end), block, slot)`` that overlap ``[start, end)``."""
    return [item for item in ranges if item[0][0] < end and item[0][1] > start]
