"""VHDX check and repair (``VDRepair``), working on the file itself.

What is checked, in the order a reader depends on it: the file identifier; the two
headers (a copy that fails its CRC-32C, two copies with one sequence number but
different contents, copies describing different logs); a log left pending by a
crash (it is applied in memory for the rest of the check); the two region tables
(a damaged copy, copies that differ); the metadata; then every BAT entry: blocks
beyond the end of the file or cut short by it, blocks overlapping the headers,
the log, the BAT, the metadata or each other, sector bitmap entries in a state
that does not exist, partially present blocks whose sector bitmap is missing (or,
in a base image, that should not exist), offsets left in unallocated entries
(Hyper-V refuses them); last, space a compaction would give back.

Damage to the identifier, to both copies of a header or a region table, or to the
metadata cannot be repaired (nothing trustworthy is left to rebuild from).  The
rest is repaired through the image itself, opened read/write even though its BAT
is damaged: opening replays a pending log and rewrites both headers, the region
table copy and the BAT go through the VHDX log, blocks that cannot be trusted are
made to read as zeros (never to fall through to a parent, which would show stale
data), a file cut short is extended with zeros, a missing sector bitmap is rebuilt
(sectors holding only zeros fall through to the parent), and leaked space is
reclaimed by moving blocks and shortening the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...errors import VDError
from ...findings import ERROR, LEAK, WARNING, Finding
from ...io import Storage, StorageProvider
from ...io.journal import journal_path
from ...progress import Progress, report
from . import bat as batmod
from . import space
from .headers import (BAT_GUID, FILE_SIGNATURE, HEADER_AREA, HEADER_OFFSETS,
                      METADATA_GUID, REGION_OFFSETS, REGION_TABLE_SIZE, Header, MiB,
                      parse_region_table, read_creator, read_headers,
                      read_region_table)
from .log import PatchedStorage, find_replay
from .metadata import Metadata, read_metadata

#: qemu-img leaves this much room after the metadata of the images it creates.
QEMU_RESERVE = 4 * MiB
QEMU_CREATOR = "QEMU"
#: Findings of one kind listed one by one; the rest are counted.
MAX_LISTED = 20


@dataclass
class _Plan:
    """The findings, and the fixes a repair applies."""

    findings: list[Finding] = field(default_factory=list)
    #: Inspection had to stop: nothing trustworthy to repair from.
    fatal: bool = False
    #: A journal an interrupted operation left, which a read/write open completes.
    journal: bool = False
    #: A pending log to replay, or headers to rewrite: a new read/write session.
    reopen: bool = False
    #: ``(file offset, bytes)`` of a region table copy to rewrite from the other one.
    region_copy: tuple[int, bytes] | None = None
    extend_to: int = 0
    #: BAT index -> the entry it gets.
    entries: dict[int, int] = field(default_factory=dict)
    #: Chunks whose sector bitmap block is rebuilt.
    bitmaps: list[int] = field(default_factory=list)
    pack: bool = False

    def add(self, severity: str, what: str, offset: int | None = None,
            fix: str | None = None, leaked: int = 0) -> None:
        self.findings.append(Finding(severity, what, offset, fix, leaked))

    def stop(self, what: str, offset: int | None = None) -> None:
        self.add(ERROR, what, offset)
        self.fatal = True

    @property
    def fixes(self) -> bool:
        return any(f.fix for f in self.findings)


def check(io: StorageProvider, path: str, repair: bool,
          progress: Progress | None = None) -> list[Finding]:
    """The findings for the VHDX image at ``path``; with ``repair``, fix them first."""
    plan = _Plan()
    if io.exists(journal_path(path)):
        plan.add(WARNING, "an operation was interrupted; its journal is still pending",
                 None, "complete the interrupted operation")
        plan.journal = True
    report(progress, 0, 2, "checking")
    with io.open(path) as storage:
        try:
            _inspect(PatchedStorage(storage), path, plan)
        except VDError as exc:  # anything the steps below do not anticipate
            plan.stop(exc.message)
    if repair and plan.fixes:
        report(progress, 1, 2, "repairing")
        _repair(io, path, plan, progress)
    report(progress, 2, 2, "done")
    return plan.findings


# -- inspection ----------------------------------------------------------------------

def _inspect(storage: PatchedStorage, path: str, plan: _Plan) -> None:
    if storage.read_at(0, len(FILE_SIGNATURE)) != FILE_SIGNATURE:
        plan.stop("the 'vhdxfile' signature is missing: this is not a VHDX image (or its "
                  "beginning was overwritten)", 0)
        return
    header = _check_headers(storage, path, plan)
    if header is None or not _check_log(storage, path, header, plan):
        return
    if not _check_region_tables(storage, plan):
        return
    try:
        regions, _ = read_region_table(storage, path, (header.log_offset, header.log_length))
        bat_region, md_region = regions[BAT_GUID], regions[METADATA_GUID]
        m = read_metadata(storage, md_region.offset, md_region.length, path)
    except VDError as exc:
        plan.stop(f"{exc.message}; this cannot be repaired")
        return
    structures = [(0, HEADER_AREA, "the headers"),
                  (bat_region.offset, bat_region.offset + bat_region.length, "the BAT"),
                  (md_region.offset, md_region.offset + md_region.length, "the metadata")]
    if header.log_length:
        structures.append((header.log_offset, header.log_offset + header.log_length,
                           "the log"))
    _check_bat(storage, bat_region.offset, bat_region.length, m, structures, plan)


def _check_headers(storage: Storage, path: str, plan: _Plan) -> Header | None:
    """The current header (None: both damaged, or unusable), after checking both."""
    try:
        current, slots = read_headers(storage, path)
    except VDError as exc:
        plan.stop(f"{exc.message}; the headers cannot be rebuilt", HEADER_OFFSETS[0])
        return None
    other = slots[1 - current.slot]
    rewrite = f"rewrite it from header {current.slot + 1}"
    if other is None:
        plan.add(ERROR, f"header {2 - current.slot} is damaged (bad signature or CRC-32C "
                        f"checksum)", HEADER_OFFSETS[1 - current.slot], rewrite)
        plan.reopen = True
    elif other.sequence == current.sequence and other.pack() != current.pack():
        plan.add(ERROR, f"both headers carry sequence number {current.sequence} but differ, "
                        f"so readers may disagree on which is current",
                 HEADER_OFFSETS[other.slot], rewrite)
        plan.reopen = True
    elif (other.log_offset, other.log_length, other.version, other.log_version) != \
            (current.log_offset, current.log_length, current.version, current.log_version):
        plan.add(WARNING, f"the older header {other.slot + 1} describes another log or "
                          f"version: a reader falling back to it would be misled",
                 HEADER_OFFSETS[other.slot], rewrite)
        plan.reopen = True
    return current


def _check_log(storage: PatchedStorage, path: str, header: Header, plan: _Plan) -> bool:
    """Report a pending log and apply it in memory; False when it cannot be read."""
    if not header.log_pending:
        return True
    try:
        replay = find_replay(storage, header, path)
    except VDError as exc:
        plan.stop(f"the log must be replayed but cannot be: {exc.message}", header.log_offset)
        return False
    if replay is None:
        plan.add(WARNING, "the header marks the log in use, but it holds no valid entry",
                 header.log_offset, "mark the log empty")
    else:
        plan.add(WARNING, f"the log holds {_count(replay.entries, 'entry', 'entries')} a "
                          f"crash left unapplied; readers that cannot replay a log refuse "
                          f"the image",
                 header.log_offset, "replay the log into the file")
        storage.set_replay(replay)
    plan.reopen = True
    return True


def _check_region_tables(storage: Storage, plan: _Plan) -> bool:
    """Check both copies; False when neither is usable."""
    raws = [storage.read_at(off, REGION_TABLE_SIZE) for off in REGION_OFFSETS]
    parsed = [parse_region_table(raw) for raw in raws]
    good = [i for i, p in enumerate(parsed) if not isinstance(p, str)]
    if not good:
        plan.stop(f"both region tables are damaged ({parsed[0]}; {parsed[1]}); they cannot "
                  f"be rebuilt", REGION_OFFSETS[0])
        return False
    source = good[0]
    bad = 1 - source
    if isinstance(parsed[bad], str):
        plan.add(ERROR, f"region table {bad + 1} is damaged ({parsed[bad]})",
                 REGION_OFFSETS[bad], f"rewrite it from region table {source + 1}")
    elif raws[bad] != raws[source]:
        plan.add(ERROR, "region table 2 differs from region table 1 (which readers use)",
                 REGION_OFFSETS[bad], "rewrite region table 2 from region table 1")
    else:
        return True
    plan.region_copy = (REGION_OFFSETS[bad], raws[source])
    return True


def _check_bat(storage: Storage, offset: int, length: int, m: Metadata, structures: list,
               plan: _Plan) -> None:
    chunk_ratio, _, count = batmod.layout(m.virtual_size, m.block_size,
                                          m.logical_sector_size, m.has_parent)
    if count * 8 > length:
        plan.stop(f"the BAT region ({length} bytes) is too small for the {count} entries "
                  f"the disk needs", offset)
        return
    file_size = storage.size()
    if offset + count * 8 > file_size:
        plan.stop(f"the file ends at {file_size}, inside the BAT; the image cannot be "
                  f"repaired", file_size)
        return
    original = np.frombuffer(storage.read_at(offset, count * 8), dtype="<u8")
    bat = _BatCheck(original.copy(), offset, chunk_ratio, m, plan)
    bat.check_states()
    bat.check_places(structures, file_size)
    if m.has_parent:
        bat.check_bitmaps()
    plan.entries = {int(i): int(bat.entries[i])
                    for i in np.flatnonzero(bat.entries != original)}
    _check_space(storage, structures, bat.entries, m, chunk_ratio, plan)


class _BatCheck:
    """The BAT entries under examination, corrected in place as findings are made."""

    def __init__(self, entries: np.ndarray, offset: int, chunk_ratio: int, m: Metadata,
                 plan: _Plan) -> None:
        self.entries = entries
        self.offset = offset
        self.chunk_ratio = chunk_ratio
        self.m = m
        self.plan = plan
        self.is_bitmap = batmod.bitmap_entries(len(entries), chunk_ratio)

    def name(self, index: int) -> str:
        if self.is_bitmap[index]:
            return f"the sector bitmap block of chunk {index // (self.chunk_ratio + 1)}"
        block = index - index // (self.chunk_ratio + 1)
        return f"block {block} (disk offset {block * self.m.block_size})"

    def at(self, index: int) -> str:
        return f"{self.name(index)} at file offset {_start(self.entries[index])}"

    def report(self, indices: np.ndarray, what: Callable[[int], str], fix: str) -> None:
        """One finding per entry (the first few; the rest are counted)."""
        for index in indices[:MAX_LISTED].tolist():
            self.plan.add(ERROR, what(index), self.offset + 8 * index, fix)
        if indices.size > MAX_LISTED:
            self.plan.add(ERROR, f"... and {indices.size - MAX_LISTED} more entries like "
                                 f"these", None, fix)

    def lose(self, indices: np.ndarray) -> None:
        """Make untrustworthy blocks read as zeros (a parent's data would be stale)."""
        self.entries[indices] = np.where(self.is_bitmap[indices], batmod.SB_NOT_PRESENT,
                                         batmod.entry(batmod.ZERO)).astype(np.uint64)

    def allocations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return batmod.allocations(self.entries, self.chunk_ratio, self.m.block_size)

    def check_states(self) -> None:
        """States that do not exist, or not here; offsets Hyper-V does not accept."""
        entries, is_bitmap = self.entries, self.is_bitmap
        states = entries & batmod.STATE_MASK
        odd = np.flatnonzero(is_bitmap & (states != batmod.SB_NOT_PRESENT)
                             & (states != batmod.SB_PRESENT))
        self.report(odd, lambda i: f"{self.name(i)} has the undefined state {states[i]}",
                    "mark it not present")
        entries[odd] = batmod.SB_NOT_PRESENT
        if not self.m.has_parent:
            partial = np.flatnonzero(~is_bitmap & (states == batmod.PARTIALLY_PRESENT))
            self.report(partial, lambda i: f"{self.name(i)} is partially present in an "
                                           f"image without a parent", "mark it fully present")
            entries[partial] -= np.uint64(batmod.PARTIALLY_PRESENT - batmod.FULLY_PRESENT)
        stray = np.flatnonzero(~is_bitmap & (states == batmod.ZERO)
                               & (entries >> batmod.OFFSET_SHIFT != 0))
        if stray.size:
            carry = _count(stray.size, "zero block carries", "zero blocks carry")
            self.plan.add(WARNING, f"{carry} a file offset (Hyper-V refuses such images)",
                          self.offset + 8 * int(stray[0]), "clear the offsets")
        entries[stray] = batmod.ZERO

    def check_places(self, structures: list, file_size: int) -> None:
        """Blocks beyond the end of the file, overlapping a structure or each other,
        or cut short by the end of the file."""
        lose = "make it read as zeros"
        indices, starts, ends = self.allocations()
        beyond = indices[starts >= file_size]
        self.report(beyond, lambda i: f"{self.name(i)} points to file offset "
                                      f"{_start(self.entries[i])}, beyond the end of the "
                                      f"file ({file_size})", lose)
        self.lose(beyond)
        for start, end, what in structures:
            hit = indices[(starts < end) & (ends > start) & (starts < file_size)]
            self.report(hit, lambda i, what=what: f"{self.at(i)} overlaps {what}", lose)
            self.lose(hit)
        shared = _sharing(*self.allocations())
        self.report(shared, lambda i: f"{self.at(i)} shares file space with another block",
                    lose)
        self.lose(shared)
        # qemu once wrote partial last blocks: those count up to the end of the disk.
        indices, starts, ends = self.allocations()
        block = indices - indices // (self.chunk_ratio + 1)
        needed = np.where(self.is_bitmap[indices], ends, np.minimum(
            ends, starts + self.m.virtual_size - block * self.m.block_size))
        cut = needed > file_size
        self.report(indices[cut], lambda i: f"{self.at(i)} is cut short by the end of the "
                                            f"file ({file_size})",
                    "extend the file with zeros to its full length")
        if cut.any():
            self.plan.extend_to = int(ends.max())

    def check_bitmaps(self) -> None:
        """Partially present blocks need their chunk's sector bitmap block."""
        ratio = self.chunk_ratio + 1
        states = self.entries & batmod.STATE_MASK
        partial = np.flatnonzero(~self.is_bitmap & (states == batmod.PARTIALLY_PRESENT))
        chunks = np.unique(partial // ratio)
        missing = chunks[states[chunks * ratio + self.chunk_ratio] != batmod.SB_PRESENT]
        first = np.array([partial[partial // ratio == c][0] for c in missing.tolist()],
                         dtype=np.int64)
        self.report(first, lambda i: f"{self.name(i)} is partially present but the sector "
                                     f"bitmap block of its chunk is missing",
                    "rebuild the sector bitmap from the blocks (sectors holding only zeros "
                    "fall through to the parent)")
        self.plan.bitmaps = missing.tolist()


def _sharing(indices: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The blocks that overlap a block starting before them (which is kept)."""
    order = np.argsort(starts, kind="stable")
    reach = np.maximum.accumulate(ends[order])
    if not np.any(starts[order[1:]] < reach[:-1]):
        return indices[:0]
    shared = []
    kept_end = 0
    for k in order.tolist():  # only damaged images get here
        if starts[k] < kept_end:
            shared.append(indices[k])
        else:
            kept_end = int(ends[k])
    return np.array(shared, dtype=np.int64)


def _check_space(storage: Storage, structures: list, entries: np.ndarray, m: Metadata,
                 chunk_ratio: int, plan: _Plan) -> None:
    """Space a compaction would give back.

    Space a fixed image keeps is not lost, nor is the room qemu-img leaves after
    the metadata of the images it creates (its creator string names it).
    """
    if m.leave_blocks_allocated:
        return
    indices, starts, ends = batmod.allocations(entries, chunk_ratio, m.block_size)
    fixed = [(s, e) for s, e, name in structures if name != "the BAT"]
    floor = 0
    if read_creator(storage).startswith(QEMU_CREATOR):
        floor = max(e for _, e in fixed) + QEMU_RESERVE
    bat = next((s, e) for s, e, name in structures if name == "the BAT")
    result = space.plan(fixed, bat, indices, starts, ends, floor)
    size = max(storage.size(), plan.extend_to)
    end = max(result.end, min(size, floor))
    if result.moves:
        plan.add(LEAK, f"free space lies between the blocks: the file could be "
                       f"{size - end} bytes shorter", None,
                 "move the last blocks into the free space and shorten the file",
                 leaked=size - end)
        plan.pack = True
    elif size > end:
        plan.add(LEAK, f"the file is {size - end} bytes longer than its content", end,
                 "shorten the file", leaked=size - end)
        plan.pack = True


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _start(value: np.uint64) -> int:
    return int(value) >> batmod.OFFSET_SHIFT << batmod.OFFSET_SHIFT


# -- repair ----------------------------------------------------------------------------

def _repair(io: StorageProvider, path: str, plan: _Plan, progress: Progress | None) -> None:
    if plan.fatal:  # only a pending journal can still be completed
        if plan.journal:
            io.open(path, writable=True).close()
        return
    if plan.extend_to:
        with io.open(path, writable=True) as storage:
            if storage.size() < plan.extend_to:
                storage.set_size(plan.extend_to)
                storage.flush()
    from .image import VhdxImage
    image = VhdxImage.open_for_repair(io, path)  # completes a journal, replays the log
    try:
        if plan.reopen:
            image._begin_write(data=False)  # a new session rewrites both headers
        if plan.region_copy:
            image._begin_write(data=False)
            image._commit([plan.region_copy], atomic=True)
        if plan.entries:
            image._begin_write(data=False)
            for index, value in plan.entries.items():
                image.bat.set_entry(index, value)
            image._commit(image.bat.patches())
            image._refresh_layout()
        for chunk in plan.bitmaps:
            image._rebuild_sector_bitmap(chunk)
        if plan.pack:
            image._pack(progress)
    finally:
        image.close()
