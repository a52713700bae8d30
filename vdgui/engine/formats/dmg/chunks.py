"""mish block tables and the map of the virtual disk built from them.

A mish table (one per partition) gives a first sector, a data offset and a list of
40-byte chunk entries: type, first sector (relative to the table), sector count,
payload offset (relative to the data fork plus the table's data offset, as qemu
reads it) and payload length.  :func:`build_map` validates every entry at once
with numpy and returns a :class:`ChunkMap`: extents covering the whole disk in
order, gaps filled with zero extents, neighbouring zero extents and file-contiguous
raw chunks merged so that a read needs one I/O per contiguous run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...errors import Corrupted, NotSupported
from ...layout import Layout
from ...types import SECTOR
from .plist import BlkxEntry

ZERO_FILL = 0x00000000
RAW = 0x00000001
IGNORE = 0x00000002
ADC = 0x80000004
ZLIB = 0x80000005
BZIP2 = 0x80000006
LZFSE = 0x80000007
LZMA = 0x80000008
COMMENT = 0x7FFFFFFE
TERMINATOR = 0xFFFFFFFF

TYPE_NAMES = {ZERO_FILL: "zero-fill", RAW: "raw", IGNORE: "ignore", ADC: "ADC",
              ZLIB: "zlib", BZIP2: "bzip2", LZFSE: "LZFSE", LZMA: "LZMA",
              COMMENT: "comment", TERMINATOR: "terminator"}

#: Chunk types that read as zeros and have no payload.
ZERO_KINDS = (ZERO_FILL, IGNORE)

#: Largest compressed chunk accepted, before and after decompression (as qemu).
MAX_CHUNK_BYTES = 64 << 20
MAX_CHUNK_SECTORS = MAX_CHUNK_BYTES // SECTOR

#: Most chunks over all tables.
MAX_CHUNKS = 1 << 22

#: Any sector or byte field at or above this is absurd (sums of three stay in int64).
MAX_FIELD = 1 << 60

MISH_MAGIC = b"mish"

MISH = Layout("mish block table", ">", [
    ("magic", "4s"), ("version", "I"), ("first_sector", "Q"), ("sector_count", "Q"),
    ("data_offset", "Q"), ("buffers_needed", "I"), ("descriptor", "I"),
    ("reserved", "24s"), ("checksum_type", "I"), ("checksum_size", "I"),
    ("checksum", "128s"), ("chunk_count", "I")])

CHUNK = np.dtype([("type", ">u4"), ("comment", ">u4"), ("first", ">u8"), ("count", ">u8"),
                  ("offset", ">u8"), ("length", ">u8")])

assert MISH.size == 204 and CHUNK.itemsize == 40


def type_name(kind: int) -> str:
    name = TYPE_NAMES.get(kind)
    return f"{kind:#010x} ({name})" if name else f"{kind:#010x} (unknown)"


@dataclass(frozen=True)
class Table:
    """One partition's block table, as ``vdimg dump`` shows it."""

    entry: BlkxEntry
    header: dict[str, Any]
    chunks: int  # entries before the terminator, comments excluded


@dataclass
class ChunkMap:
    """Extents covering sectors ``[0, sectors)`` in order.

    ``kinds`` are chunk types (zero kinds normalised to ZERO_FILL), ``offsets`` and
    ``lengths`` the payload's place in the file (meaningless for zero extents).
    """

    sectors: int
    starts: np.ndarray  # int64 first sector of each extent
    ends: np.ndarray  # int64 sector after each extent
    kinds: np.ndarray  # uint32
    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int64
    data: np.ndarray  # bool: holds data (not zeros)
    run_ends: np.ndarray  # int64: end sector of the run of data/zero extents it is in
    type_counts: Counter[int]

    def index(self, sector: int) -> int:
        """The extent holding ``sector``."""
        return int(np.searchsorted(self.starts, sector, side="right")) - 1


def parse_table(entry: BlkxEntry, number: int, path: str) -> tuple[Table, np.ndarray]:
    """A table's header and its chunk entries (up to the terminator, no comments)."""
    where = f"block table {number} ({entry.name or 'unnamed'})"
    raw = entry.table
    if raw[:4] != MISH_MAGIC:
        raise Corrupted(f"{where} is not a mish block table", path)
    header = MISH.unpack(raw, 0, path)
    if header["version"] != 1:
        raise NotSupported(f"{where} has version {header['version']}; only version 1 is "
                           f"supported", path)
    count = header["chunk_count"]
    if count > (len(raw) - MISH.size) // CHUNK.itemsize:
        raise Corrupted(f"{where} claims {count} chunks but holds only "
                        f"{max(len(raw) - MISH.size, 0) // CHUNK.itemsize}", path)
    for field in ("first_sector", "sector_count", "data_offset"):
        if header[field] >= MAX_FIELD:
            raise Corrupted(f"{where} has an impossible {field.replace('_', ' ')} "
                            f"({header[field]})", path)
    entries = np.frombuffer(raw, dtype=CHUNK, count=count, offset=MISH.size)
    ends = np.flatnonzero(entries["type"] == TERMINATOR)
    if ends.size:
        entries = entries[:ends[0]]
    entries = entries[entries["type"] != COMMENT]
    return Table(entry, header, len(entries)), entries


def build_map(entries: Sequence[BlkxEntry], data_fork_offset: int, file_limit: int,
              sectors: int, path: str) -> tuple[list[Table], ChunkMap]:
    """Validate every block table and map the disk's ``sectors`` sectors."""
    if not entries:
        raise Corrupted("the image has no block tables (blkx resources), so nothing "
                        "describes the disk", path)
    tables, parts = [], []
    total = 0
    for number, entry in enumerate(entries):
        table, chunks = parse_table(entry, number, path)
        total += len(chunks)
        if total > MAX_CHUNKS:
            raise Corrupted(f"the block tables hold more than {MAX_CHUNKS} chunks", path)
        tables.append(table)
        parts.append(_absolute(table, chunks, data_fork_offset, path))
    columns = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    kinds, starts, counts, offsets, lengths = columns
    kinds = kinds.astype(np.uint32)
    values, occurrences = np.unique(kinds, return_counts=True)
    type_counts = Counter(dict(zip(values.tolist(), occurrences.tolist())))

    order = np.argsort(starts, kind="stable")
    kinds, starts, counts, offsets, lengths = (a[order] for a in
                                               (kinds, starts, counts, offsets, lengths))
    ends = starts + counts
    _check_payloads(kinds, starts, counts, offsets, lengths, file_limit, path)
    _check_sectors(starts, ends, sectors, path)
    return tables, _complete(sectors, starts, ends, kinds, offsets, lengths, type_counts)


def _absolute(table: Table, chunks: np.ndarray, data_fork_offset: int,
              path: str) -> tuple[np.ndarray, ...]:
    """``(types, first sectors, counts, file offsets, lengths)`` of one table, int64."""
    name = table.entry.name or "unnamed"
    for field in ("first", "count", "offset", "length"):
        bad = np.flatnonzero(chunks[field] >= MAX_FIELD)
        if bad.size:
            i = int(bad[0])
            raise Corrupted(f"chunk {i} of block table {name!r} has an impossible "
                            f"{field} ({int(chunks[field][i])})", path)
    kinds = chunks["type"].astype(np.int64)
    counts = chunks["count"].astype(np.int64)
    lengths = chunks["length"].astype(np.int64)
    empty = counts == 0
    bad = np.flatnonzero(empty & (lengths != 0) & ~np.isin(kinds, ZERO_KINDS))
    if bad.size:
        i = int(bad[0])
        raise Corrupted(f"chunk {i} of block table {name!r} holds {int(lengths[i])} bytes "
                        f"for 0 sectors", path)
    keep = ~empty  # chunks of no sectors describe nothing
    base = table.header["first_sector"]
    data_base = data_fork_offset + table.header["data_offset"]
    return (kinds[keep], chunks["first"][keep].astype(np.int64) + base, counts[keep],
            chunks["offset"][keep].astype(np.int64) + data_base, lengths[keep])


def _check_sectors(starts: np.ndarray, ends: np.ndarray, sectors: int, path: str) -> None:
    if not starts.size:
        return
    overlap = np.flatnonzero(starts[1:] < ends[:-1])
    if overlap.size:
        i = int(overlap[0])
        raise Corrupted(f"two chunks overlap: sectors {starts[i]}-{ends[i] - 1} and "
                        f"{starts[i + 1]}-{ends[i + 1] - 1}", path)
    if ends[-1] > sectors:
        raise Corrupted(f"a chunk covers sectors {starts[-1]}-{ends[-1] - 1}, beyond the "
                        f"{sectors} sectors the trailer gives the disk", path)


def _check_payloads(kinds: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                    offsets: np.ndarray, lengths: np.ndarray, file_limit: int,
                    path: str) -> None:
    """Payload sizes must match the sector counts and lie in the file, disjoint."""
    def fail(mask: np.ndarray, problem: str) -> None:
        bad = np.flatnonzero(mask)
        if bad.size:
            i = int(bad[0])
            raise Corrupted(f"the {TYPE_NAMES.get(int(kinds[i]), 'unknown')} chunk at "
                            f"sectors {starts[i]}-{starts[i] + counts[i] - 1} "
                            f"({lengths[i]} bytes at offset {offsets[i]}) {problem}", path)

    payload = ~np.isin(kinds, ZERO_KINDS)
    raw = kinds == RAW
    compressed = payload & ~raw
    fail(raw & (lengths > counts * SECTOR),
         "holds more bytes than its sectors (it would decompress to more than its size)")
    fail(raw & (lengths < counts * SECTOR), "holds fewer bytes than its sectors")
    fail(compressed & (counts > MAX_CHUNK_SECTORS),
         f"is larger than the {MAX_CHUNK_BYTES >> 20} MiB accepted for a compressed chunk")
    fail(compressed & ((lengths == 0) | (lengths > MAX_CHUNK_BYTES)),
         "has an impossible compressed length")
    fail(payload & (offsets + lengths > file_limit),
         f"lies beyond the end of the file's data (offset {file_limit})")
    stored = np.flatnonzero(payload & (lengths > 0))
    by_offset = stored[np.argsort(offsets[stored], kind="stable")]
    if by_offset.size > 1:
        clash = np.zeros(len(kinds), dtype=bool)
        first = np.flatnonzero(offsets[by_offset[1:]] < (offsets + lengths)[by_offset[:-1]])
        clash[by_offset[first + 1]] = True
        fail(clash, "overlaps the payload of another chunk in the file")


def _complete(sectors: int, starts: np.ndarray, ends: np.ndarray, kinds: np.ndarray,
              offsets: np.ndarray, lengths: np.ndarray, type_counts: Counter[int]) -> ChunkMap:
    """Fill gaps with zero extents and merge what can be read in one go.

    ``sectors`` is at least 1, so there is always at least one extent.
    """
    kinds = np.where(np.isin(kinds, ZERO_KINDS), ZERO_FILL, kinds).astype(np.uint32)
    previous_end = np.concatenate(([0], ends)).astype(np.int64)
    next_start = np.concatenate((starts, [sectors])).astype(np.int64)
    gap = next_start > previous_end
    starts = np.concatenate((starts, previous_end[gap]))
    ends = np.concatenate((ends, next_start[gap]))
    kinds = np.concatenate((kinds, np.full(int(gap.sum()), ZERO_FILL, np.uint32)))
    offsets = np.concatenate((offsets, np.zeros(int(gap.sum()), np.int64)))
    lengths = np.concatenate((lengths, np.zeros(int(gap.sum()), np.int64)))
    order = np.argsort(starts, kind="stable")
    starts, ends, kinds, offsets, lengths = (a[order] for a in
                                             (starts, ends, kinds, offsets, lengths))

    # An extent continues the previous one when both read as zeros, or both are
    # raw chunks whose payloads follow each other in the file.
    same_zero = (kinds[1:] == ZERO_FILL) & (kinds[:-1] == ZERO_FILL)
    same_raw = (kinds[1:] == RAW) & (kinds[:-1] == RAW) & \
        (offsets[1:] == offsets[:-1] + lengths[:-1])
    first = np.flatnonzero(np.concatenate(([True], ~(same_zero | same_raw))))
    last = np.append(first[1:], len(starts)) - 1
    starts, ends, kinds, offsets = starts[first], ends[last], kinds[first], offsets[first]
    lengths = np.add.reduceat(lengths, first)

    data = kinds != ZERO_FILL
    change = np.flatnonzero(data[1:] != data[:-1])  # last extent of each run but the final
    run_last = np.append(change, len(data) - 1)
    run_of = np.concatenate(([0], np.cumsum(data[1:] != data[:-1])))
    return ChunkMap(sectors, starts, ends, kinds, offsets, lengths, data,
                    ends[run_last[run_of]], type_counts)
