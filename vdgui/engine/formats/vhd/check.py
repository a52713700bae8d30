"""VHD check and repair (``VDRepair``), working on the file itself.

qemu-img has no check for VHD ("vpc"); the reference is VirtualBox's repair, which
we follow and extend:

* **footer**: a missing footer at the end is rebuilt from the copy at offset 0
  (VirtualBox: "missing footer structure, using backup").  A footer with a bad
  checksum is replaced by an intact copy when there is one (VirtualBox only
  recomputes the checksum over possibly damaged fields); without one, its
  checksum is recomputed if its fields make sense.  No usable footer: nothing can
  be repaired.  The copy at offset 0 is compared too (qemu reads only the copy, and
  refuses a bad one): missing, damaged or different, it is rewritten.
* **dynamic header**: a bad checksum is recomputed; a header or BAT outside the
  file, or fields that make no sense, cannot be repaired (as in VirtualBox).
* **BAT**: entries pointing into the image's own metadata or beyond its data are
  cleared, as VirtualBox clears entries beyond the file; of blocks referenced twice
  or overlapping, the first (lowest BAT index) is kept and the others cleared
  (VirtualBox clears doubly referenced blocks).  A block that starts inside the
  data but runs past the footer or the end of the file (a file cut short) is kept:
  the footer moves after it and what is missing reads as zeros (VirtualBox moves
  the footer too, but clears blocks past the end, losing what survived of them).
  In a differencing image a cleared block becomes a block of zeros instead:
  freeing it would show the parent's older data there.
* **parent locators** pointing outside the data or into metadata are removed (the
  parent is still found through the others, its name and its UUID).
* **leaked space**: unused runs big enough for a block (left by an interrupted
  write or a release without compaction) are reclaimed by compaction, and an
  interrupted operation's pending journal is reported.

Every fix is written in one transaction, then leaked space is compacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ...blockmap import MAX_TABLE_BYTES
from ...findings import ERROR, LEAK, WARNING, Finding
from ...io import Storage, StorageProvider
from ...io.journal import journal_path
from ...progress import Progress
from ...sizes import align_up
from ...types import Geometry, OpenFlags
from . import locators as loc
from . import space
from .create import MAX_BLOCK_SIZE
from .footer import (
    BAT_FREE,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    DISK_TYPE_NAMES,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    HEADER,
    HEADER_CHECKSUM_AT,
    HEADER_COOKIE,
    HEADER_SIZE,
    LOCATOR,
    SECTOR,
    FoundFooter,
    checksum,
    empty_locator,
    find_footers,
    pack_footer,
    pack_header,
    pack_locators,
    unpack_locators,
)
from .geometry import virtual_size
from .image import MAX_TABLE_SPAN, VhdImage

#: Cleared blocks reported one by one; beyond this, one summary finding.
MAX_LISTED = 1000
LOCATOR_ENTRIES_AT = HEADER.offset_of("locators")


@dataclass
class _Plan:
    """The findings, and the image as a repair will leave it."""

    findings: list[Finding] = field(default_factory=list)
    footer: dict | None = None
    write_footer: bool = False      # at the end (position ``footer_at``)
    write_copy: bool = False        # at offset 0
    footer_at: int = 0
    header: dict | None = None
    header_at: int = 0
    write_header: bool = False
    table_offset: int = 0
    original: np.ndarray | None = None
    entries: np.ndarray | None = None
    zero_blocks: list[tuple[int, int]] = field(default_factory=list)  # (block, offset)
    bitmap_size: int = 0
    cut: int | None = None          # truncate here first (stale footer, junk)
    file_size: int | None = None    # then make the file this long
    zero_old_footer: int | None = None
    pack: bool = False

    def add(self, severity: str, what: str, offset: int | None, fix: str | None = None,
            leaked: int = 0) -> None:
        self.findings.append(Finding(severity, what, offset, fix, leaked))

    @property
    def fixable(self) -> bool:
        return any(f.fix for f in self.findings)

    def beyond_repair(self) -> None:
        """An error without a fix means the image cannot be rebuilt: then no fix is
        offered at all, since the others would only make a partial, misleading one."""
        if any(f.severity == ERROR and not f.fix for f in self.findings):
            self.findings = [replace(f, fix=None) for f in self.findings]


def check(io: StorageProvider, path: str, repair: bool,
          progress: Progress | None = None) -> list[Finding]:
    """The findings for the VHD image at ``path``; with ``repair``, fix them first."""
    pending = []
    if io.exists(journal_path(path)):
        pending.append(Finding(WARNING, "an operation was interrupted; its journal is "
                                        "still pending", None,
                               "complete the interrupted operation"))
    plan = _Plan()
    with io.open(path, writable=repair) as storage:  # a writable open completes it
        _inspect(storage, plan)
        plan.beyond_repair()
        if repair and plan.fixable:
            _apply(storage, plan)
    if repair and plan.pack and plan.fixable:
        image = VhdImage.open(io, path, OpenFlags.NORMAL)
        try:
            image.pack(progress)
        finally:
            image.close()
    return pending + plan.findings


# -- the footer -------------------------------------------------------------------------

def _sane(fields: dict) -> str | None:
    """Why a footer's fields cannot be trusted, or None."""
    if fields["disk_type"] not in (DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING):
        name = DISK_TYPE_NAMES.get(fields["disk_type"], "unknown")
        return f"its disk type {fields['disk_type']} ({name}) is not one this program reads"
    if fields["current_size"] < SECTOR:
        return f"its disk size {fields['current_size']} is too small"
    return None


def _choose_footer(storage: Storage, plan: _Plan) -> tuple[dict, FoundFooter | None] | None:
    """The footer to trust (and the one found at the end), recording findings."""
    tail, copy = find_footers(storage)
    if tail is not None and tail.valid:
        return dict(tail.fields), tail
    size = storage.size()
    end = tail.offset if tail is not None else size
    if copy is not None and copy.valid:
        what = "has a bad checksum" if tail is not None else "is missing"
        plan.add(ERROR, f"the footer at the end of the file {what}; its copy at offset 0 "
                        f"is intact", end, "rewrite the footer from its copy")
        plan.write_footer = True
        return dict(copy.fields), tail
    found = tail or copy
    if found is None:
        plan.add(ERROR, "no VHD footer ('conectix') at the end of the file or at its "
                        "start: there is nothing to rebuild the image from", size)
        return None
    problem = _sane(found.fields)
    where = "at the end of the file" if found is tail else "at offset 0"
    if problem:
        plan.add(ERROR, f"the footer {where} has a bad checksum and {problem}; it cannot "
                        f"be rebuilt", found.offset)
        return None
    plan.add(ERROR, f"the footer {where} has a bad checksum and no intact copy",
             found.offset, "recompute its checksum")
    plan.write_footer = True
    plan.write_copy = found.fields["disk_type"] != DISK_FIXED
    return dict(found.fields), tail


def _inspect(storage: Storage, plan: _Plan) -> None:
    if storage.size() < FOOTER_SIZE - 1:
        plan.add(ERROR, "the file is too short to be a VHD image", 0)
        return
    chosen = _choose_footer(storage, plan)
    if chosen is None:
        return
    footer, tail = chosen
    problem = _sane(footer)
    if problem:
        plan.add(ERROR, f"the footer cannot be used: {problem}", tail.offset if tail else 0)
        return
    plan.footer = footer
    plan.footer_at = tail.offset if tail is not None else storage.size()
    geometry = Geometry(footer["cylinders"], footer["heads"], footer["sectors"])
    size = virtual_size(footer["creator_app"], footer["current_size"], geometry)
    if footer["disk_type"] == DISK_FIXED:
        if tail is not None and size > tail.offset:
            plan.add(ERROR, f"the fixed disk is {size} bytes but only {tail.offset} bytes "
                            f"of data precede its footer", tail.offset)
        return
    raw = pack_footer(dict(footer))
    copy = storage.read_at(0, FOOTER_SIZE)
    if not plan.write_copy and copy != raw:
        found = FoundFooter(0, copy)
        what = ("is missing" if not copy.startswith(FOOTER_COOKIE) else
                "has a bad checksum (qemu refuses to open the image)" if not found.valid else
                "differs from the footer at the end (qemu reads the copy)")
        plan.add(ERROR, f"the copy of the footer at offset 0 {what}", 0,
                 "rewrite the copy from the footer at the end")
        plan.write_copy = True
    _inspect_dynamic(storage, plan, tail, size)


# -- the dynamic header, locators and BAT -----------------------------------------------

def _inspect_dynamic(storage: Storage, plan: _Plan, tail: FoundFooter | None,
                     size: int) -> None:
    file_size = storage.size()
    at = plan.footer["data_offset"]
    if at < FOOTER_SIZE or at + HEADER_SIZE > file_size:
        plan.add(ERROR, f"the dynamic header offset {at:#x} lies outside the file: the "
                        f"image cannot be rebuilt", 16)
        return
    raw = storage.read_at(at, HEADER_SIZE)
    h = HEADER.unpack(raw)
    if h["cookie"] != HEADER_COOKIE:
        plan.add(ERROR, f"no dynamic header ('cxsparse') at offset {at:#x}: the image "
                        f"cannot be rebuilt", at)
        return
    bs, entries, table = h["block_size"], h["max_table_entries"], h["table_offset"]
    problem = None
    if bs < SECTOR or bs & (bs - 1) or bs > MAX_BLOCK_SIZE:
        problem = f"its block size {bs} is not a power of two from 512 bytes to 256 MiB"
    elif entries * bs < size:
        problem = f"its {entries} table entries are too few for a disk of {size} bytes"
    elif 4 * entries > MAX_TABLE_BYTES or entries > max(-(-size // bs), MAX_TABLE_SPAN // bs):
        problem = f"its {entries} table entries are absurdly many"
    elif table < FOOTER_SIZE or table + 4 * entries > file_size:
        problem = (f"its block allocation table ({entries} entries at {table:#x}) lies "
                   f"outside the file")
    if problem:
        plan.add(ERROR, f"the dynamic header cannot be used: {problem}", at)
        return
    plan.header, plan.header_at, plan.table_offset = h, at, table
    if checksum(raw, HEADER_CHECKSUM_AT) != h["checksum"]:
        plan.add(ERROR, "the dynamic header has a bad checksum", at + HEADER_CHECKSUM_AT,
                 "recompute it")
        plan.write_header = True
    table_raw = storage.read_at(table, 4 * entries)
    plan.original = np.frombuffer(table_raw, dtype=">u4")
    plan.entries = plan.original.copy()
    bitmap_size = align_up(-(-bs // SECTOR // 8), SECTOR)
    plan.bitmap_size = bitmap_size
    limit = tail.offset if tail is not None else file_size
    metadata = space.metadata_ranges(at, table, entries)
    locators = _check_locators(plan, h, metadata, limit)
    kept = _check_blocks(plan, metadata, limit, bitmap_size + bs)
    _drop_locators_over_blocks(plan, h, locators, kept, bitmap_size + bs)
    _place_footer(plan, tail, file_size, metadata + list(locators.values()), kept,
                  bitmap_size + bs)


def _locator_fix(plan: _Plan, h: dict, slot: int, entry: dict, what: str) -> None:
    plan.add(ERROR, f"parent locator {slot} ({loc.code_name(entry['code'])}) {what}",
             plan.header_at + LOCATOR_ENTRIES_AT + slot * LOCATOR.size,
             "remove the locator (the parent is still found by its other locators, its "
             "name and its UUID)")
    entries = unpack_locators(h["locators"])
    entries[slot] = empty_locator()
    h["locators"] = pack_locators(entries)
    plan.write_header = True


def _check_locators(plan: _Plan, h: dict, metadata: list[tuple[int, int]],
                    limit: int) -> dict[int, tuple[int, int]]:
    """Remove locators pointing outside the data or into metadata; the others' ranges."""
    ranges = {}
    for slot, entry in enumerate(unpack_locators(h["locators"])):
        if entry["code"] == loc.NONE or not entry["data_length"]:
            continue
        start, stop = space.locator_range(entry)
        end = entry["data_offset"] + entry["data_length"]
        if entry["data_length"] > loc.MAX_DATA or start < FOOTER_SIZE or end > limit:
            _locator_fix(plan, h, slot, entry, f"points outside the image's data "
                                               f"({entry['data_length']} bytes at "
                                               f"{start:#x})")
        elif any(a < end and b > start for a, b in metadata):
            _locator_fix(plan, h, slot, entry, f"points into the image's own metadata "
                                               f"(at {start:#x})")
        else:
            ranges[slot] = (start, stop)
    return ranges


def _drop_locators_over_blocks(plan: _Plan, h: dict, ranges: dict[int, tuple[int, int]],
                               starts: np.ndarray, span: int) -> None:
    """Remove locators whose data overlaps a block (``starts``: sorted offsets)."""
    if not ranges or not starts.size:
        return
    entries = unpack_locators(h["locators"])
    for slot, (start, stop) in list(ranges.items()):
        end = entries[slot]["data_offset"] + entries[slot]["data_length"]
        i = int(np.searchsorted(starts, end))  # blocks starting before the data ends
        if i and starts[i - 1] + span > start:
            _locator_fix(plan, h, slot, entries[slot], f"overlaps a data block (at "
                                                       f"{int(starts[i - 1]):#x})")
            del ranges[slot]


def _clear(plan: _Plan, blocks: np.ndarray, why: str | list[str], listed: list[int]) -> None:
    """Clear BAT entries ``blocks`` (one finding each, up to a limit)."""
    diff = plan.footer["disk_type"] == DISK_DIFFERENCING
    fix = ("replace it by a block of zeros (freeing it would show the parent's older "
           "data)" if diff else "free it (it reads as zeros)")
    reasons = why if isinstance(why, list) else [why] * len(blocks)
    for block, reason in zip(blocks.tolist(), reasons):
        if listed[0] < MAX_LISTED:
            start = int(plan.entries[block]) * SECTOR
            plan.add(ERROR, f"block {block} (at file offset {start:#x}) {reason}",
                     plan.table_offset + 4 * block, fix)
        listed[0] += 1
    plan.entries[blocks] = BAT_FREE
    if diff:
        plan.zero_blocks += [(int(b), -1) for b in blocks]


def _check_blocks(plan: _Plan, metadata: list[tuple[int, int]], limit: int,
                  span: int) -> np.ndarray:
    """Clear the BAT entries that cannot be right; the others' offsets, sorted."""
    entries = plan.entries
    listed = [0]
    used = np.flatnonzero(entries != BAT_FREE)
    starts = entries[used].astype(np.int64) * SECTOR
    ends = starts + span
    inside = np.zeros(len(used), dtype=bool)
    for a, b in metadata:
        inside |= (starts < b) & (ends > a)
    _clear(plan, used[inside], "lies inside the image's own metadata", listed)
    beyond = ~inside & (starts >= limit)
    _clear(plan, used[beyond], f"lies beyond the end of the data (at {limit:#x})", listed)
    # Of overlapping blocks the first in the BAT stays; repeat until none overlap.
    while True:
        used = np.flatnonzero(entries != BAT_FREE)
        starts = entries[used].astype(np.int64) * SECTOR
        order = np.argsort(starts, kind="stable")
        used, starts = used[order], starts[order]
        clash = np.flatnonzero(np.diff(starts) < span)
        if not clash.size:
            break
        pairs = {}  # the later block of each clashing pair -> the earlier one
        for i in clash.tolist():
            a, b = sorted((int(used[i]), int(used[i + 1])))
            pairs.setdefault(b, (a, starts[i] == starts[i + 1]))
        later = np.array(sorted(pairs), dtype=np.int64)
        _clear(plan, later, [f"{'shares its place with' if same else 'overlaps'} block "
                             f"{first} (the first in the table is kept)"
                             for first, same in (pairs[b] for b in later.tolist())], listed)
    if listed[0] > MAX_LISTED:
        plan.add(ERROR, f"... and {listed[0] - MAX_LISTED} more blocks like these", None,
                 "the same")
    return starts


def _place_footer(plan: _Plan, tail: FoundFooter | None, file_size: int,
                  fixed: list[tuple[int, int]], starts: np.ndarray, span: int) -> None:
    """Where the footer goes (after every block kept, and the blocks of zeros a
    differencing image gets for cleared ones), and what space is leaked."""
    ends = starts + span
    data_end = align_up(max([b for _, b in fixed] + ends[-1:].tolist()), SECTOR)
    limit = tail.offset if tail is not None else file_size
    if data_end > limit:
        past = int(np.count_nonzero((starts < limit) & (ends > limit)))
        where = (f"the footer at {tail.offset:#x}" if tail is not None
                 else "the end of the file (the file is cut short)")
        blocks = "1 block runs" if past == 1 else f"{past} blocks run"
        plan.add(ERROR, f"{blocks} past {where}", limit,
                 "move the footer after the data (what is missing reads as zeros)")
        plan.write_footer = True
        if tail is not None:
            plan.zero_old_footer = tail.offset
    if tail is None or data_end > limit:
        base = plan.cut = data_end
    else:
        base = tail.offset
    if plan.zero_blocks:
        plan.cut = base if plan.cut is None else plan.cut
        plan.zero_blocks = [(block, base + i * span)
                            for i, (block, _) in enumerate(plan.zero_blocks)]
        plan.write_footer = True
    footer_at = base + len(plan.zero_blocks) * span
    if plan.write_footer or plan.cut is not None:
        plan.file_size = footer_at + FOOTER_SIZE
    plan.footer_at = footer_at
    others = np.array([a for a, _ in fixed] + [base], dtype=np.int64)
    leaked, first = space.leaked(np.concatenate([others, starts]),
                                 np.concatenate([np.array([b for _, b in fixed] + [footer_at],
                                                          dtype=np.int64), ends]),
                                 footer_at, span)
    if leaked:
        plan.add(LEAK, f"{leaked} bytes of the file are used by no block", first,
                 "move the last blocks into the unused space and shorten the file",
                 leaked=leaked)
        plan.pack = True


# -- applying the fixes ----------------------------------------------------------------

def _apply(storage: Storage, plan: _Plan) -> None:
    with storage.transaction():
        if plan.cut is not None and plan.cut < storage.size():
            storage.set_size(plan.cut)
        if plan.file_size is not None:
            storage.set_size(plan.file_size)
        if plan.zero_old_footer is not None:
            storage.write_at(plan.zero_old_footer, bytes(FOOTER_SIZE))
        if plan.entries is not None:
            _write_table(storage, plan)
        if plan.write_header:
            storage.write_at(plan.header_at, pack_header(plan.header))
        for _, offset in plan.zero_blocks:
            storage.write_at(offset, b"\xff" * plan.bitmap_size)
        raw = pack_footer(plan.footer)
        if plan.write_footer:
            storage.write_at(plan.footer_at, raw)
        if plan.write_copy:
            storage.write_at(0, raw)


def _write_table(storage: Storage, plan: _Plan) -> None:
    """Write the sectors of the BAT whose entries changed."""
    entries = plan.entries
    for block, offset in plan.zero_blocks:
        entries[block] = offset // SECTOR
    changed = np.flatnonzero(entries != plan.original)
    raw = entries.astype(">u4").tobytes()
    for sector in np.unique(changed * 4 // SECTOR).tolist():
        lo = sector * SECTOR
        storage.write_at(plan.table_offset + lo, raw[lo:lo + SECTOR])
