"""VDI check and repair (``VDRepair``), working on the file itself.

What is checked: the pre-header and header (damage there cannot be repaired: there
is nothing trustworthy to rebuild it from), a disk size that is not a whole number
of sectors, block-map entries pointing past the allocated blocks or sharing one
physical block, a file cut short, blocks allocated but used by no entry (leaks),
a file longer than its blocks, missing UUIDs, and an interrupted operation's
journal.  Each fix is what VirtualBox's repair does, made safe: entries that
cannot be trusted are made to read as zeros (not to fall through to a parent,
which would show stale data); leaked blocks are reclaimed by moving the last
blocks into the holes; header and map changes go in one transaction.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...io import Storage, StorageProvider
from ...io.journal import journal_path
from ...findings import ERROR, LEAK, WARNING, Finding
from ...progress import Progress
from ...types import NIL_UUID, SECTOR, OpenFlags
from .layout import (BLOCK_FREE, BLOCK_ZERO, HEADER_V0, HEADER_V1, HEADER_V1_SIZE,
                     PRE_HEADER, PRE_HEADER_SIZE, SIGNATURE, TYPE_DIFF, TYPE_NAMES,
                     TYPE_UNDO, VERSION_0, guid)

#: Largest block map a check reads (a 256 TiB disk in 1 MiB blocks).
MAX_MAP_BYTES = 1 << 30


@dataclass
class _Plan:
    findings: list[Finding] = field(default_factory=list)
    fixes: list[Callable[[Storage], None]] = field(default_factory=list)
    pack: bool = False

    def add(self, severity: str, what: str, offset: int | None = None,
            fix: str | None = None, apply: Callable[[Storage], None] | None = None,
            leaked: int = 0) -> None:
        self.findings.append(Finding(severity, what, offset, fix, leaked))
        if apply is not None:
            self.fixes.append(apply)


def check(io: StorageProvider, path: str, repair: bool,
          progress: Progress | None = None) -> list[Finding]:
    """The findings for the VDI image at ``path``; with ``repair``, fix them first."""
    plan = _Plan()
    if io.exists(journal_path(path)):
        plan.add(WARNING, "an operation was interrupted; its journal is still pending",
                 None, "complete the interrupted operation")
    with io.open(path, writable=repair) as storage:  # a writable open completes it
        _inspect(storage, path, plan)
        if repair and plan.fixes:
            with storage.transaction():
                for fix in plan.fixes:
                    fix(storage)
    if repair and plan.pack:
        from .image import VdiImage
        image = VdiImage.open(io, path, OpenFlags.NORMAL)
        try:
            image.pack(progress)
        finally:
            image.close()
    return plan.findings


def _inspect(storage: Storage, path: str, plan: _Plan) -> None:
    raw = storage.read_at(0, PRE_HEADER_SIZE + 512)
    if len(raw) < PRE_HEADER_SIZE + HEADER_V0.size:
        plan.add(ERROR, "the file is too short to hold a VDI header", 0)
        return
    pre = PRE_HEADER.unpack(raw)
    version = pre["version"]
    if pre["signature"] != SIGNATURE:
        plan.add(ERROR, "the VDI signature is missing: this is not a VDI image (or its "
                        "header was overwritten)", 0x40)
        return
    if version >> 16 != 1 and version != VERSION_0:
        plan.add(ERROR, f"unknown VDI version {version >> 16}.{version & 0xFFFF}", 0x44)
        return
    legacy = version == VERSION_0
    h = (HEADER_V0 if legacy else HEADER_V1).unpack(raw, PRE_HEADER_SIZE)
    blocks_offset = PRE_HEADER_SIZE + HEADER_V0.size if legacy else h["blocks_offset"]
    data_offset = blocks_offset + 4 * h["blocks"] if legacy else h["data_offset"]
    extra = 0 if legacy else h["block_extra"]
    bs, blocks = h["block_size"], h["blocks"]
    header = PRE_HEADER_SIZE
    problems = []
    if not legacy and h["header_size"] < HEADER_V1_SIZE:
        problems.append((0x48, f"the header size {h['header_size']} is too small"))
    if h["type"] not in TYPE_NAMES:
        problems.append((header + HEADER_V1.offset_of("type"), f"unknown image type {h['type']}"))
    if bs < SECTOR or bs & (bs - 1):
        problems.append((0x178, f"the block size {bs} is not a power of two of at least 512"))
    if extra and (extra & (extra - 1) or extra % SECTOR):
        problems.append((0x17C, f"the extra block data size {extra} is invalid"))
    if not problems and blocks * bs < h["disk_size"]:
        problems.append((0x180, f"{blocks} blocks cannot hold a disk of {h['disk_size']} bytes"))
    if not legacy and data_offset < blocks_offset + 4 * blocks:
        problems.append((0x158, "the data area overlaps the block map"))
    if 4 * blocks > MAX_MAP_BYTES:
        problems.append((0x180, f"the block map of {blocks} entries is absurdly large"))
    for offset, what in problems:
        plan.add(ERROR, f"{what}; the header cannot be rebuilt", offset)
    if problems:
        return
    _check_header_values(storage, h, legacy, plan)
    _check_map(storage, h, legacy, blocks_offset, data_offset, bs, extra, plan)


def _rewrite_field(layout, name: str, value: object) -> Callable[[Storage], None]:
    """A fix that rewrites one header field (reading the header as changed so far)."""
    def apply(storage: Storage) -> None:
        fields = layout.unpack(storage.read_exact(PRE_HEADER_SIZE, layout.size,
                                                  "the VDI header"))
        fields[name] = value
        storage.write_at(PRE_HEADER_SIZE, layout.pack(fields))
    return apply


def _check_header_values(storage: Storage, h: dict, legacy: bool, plan: _Plan) -> None:
    layout = HEADER_V0 if legacy else HEADER_V1
    size = h["disk_size"]
    if size % SECTOR:
        plan.add(ERROR, f"the disk size {size} is not a multiple of 512 bytes",
                 PRE_HEADER_SIZE + layout.offset_of("disk_size"),
                 f"round the disk size down to {size // SECTOR * SECTOR}",
                 _rewrite_field(layout, "disk_size", size // SECTOR * SECTOR))
    if guid(h["uuid"]) == NIL_UUID:
        plan.add(ERROR, "the image UUID is empty", PRE_HEADER_SIZE + layout.offset_of("uuid"),
                 "give the image a new random UUID",
                 _rewrite_field(layout, "uuid", uuidlib.uuid4().bytes_le))
    if guid(h["modification_uuid"]) == NIL_UUID:
        plan.add(WARNING, "the modification UUID is empty (VirtualBox refuses such images)",
                 PRE_HEADER_SIZE + layout.offset_of("modification_uuid"),
                 "set a new random modification UUID",
                 _rewrite_field(layout, "modification_uuid", uuidlib.uuid4().bytes_le))


def _check_map(storage: Storage, h: dict, legacy: bool, blocks_offset: int, data_offset: int,
               bs: int, extra: int, plan: _Plan) -> None:
    layout = HEADER_V0 if legacy else HEADER_V1
    blocks, allocated = h["blocks"], h["blocks_allocated"]
    raw = storage.read_at(blocks_offset, 4 * blocks)
    if len(raw) < 4 * blocks:
        plan.add(ERROR, "the file ends inside the block map", blocks_offset)
        return
    entries = np.frombuffer(raw, dtype="<u4").copy()
    original = entries.copy()
    slot = bs + extra
    # Untrustworthy entries read as zeros: in a differencing image "free" would show
    # the parent's older data instead.
    cleared = BLOCK_ZERO if h["type"] in (TYPE_DIFF, TYPE_UNDO) else BLOCK_FREE
    used = entries < BLOCK_ZERO
    if allocated > blocks:
        plan.add(ERROR, f"the header says {allocated} blocks are allocated, but the disk has "
                        f"only {blocks}", PRE_HEADER_SIZE + layout.offset_of("blocks_allocated"),
                 "recount the allocated blocks")
        allocated = blocks
    for index in np.flatnonzero(used & (entries >= allocated))[:1000].tolist():
        plan.add(ERROR, f"block {index} points to physical block {int(entries[index])}, "
                        f"past the {allocated} allocated ones", blocks_offset + 4 * index,
                 "make the block read as zeros")
    entries[used & (entries >= allocated)] = cleared
    order = np.argsort(entries, kind="stable")
    ordered = entries[order]
    shared = np.flatnonzero((ordered[1:] == ordered[:-1]) & (ordered[1:] < BLOCK_ZERO)) + 1
    for position in shared[:1000].tolist():
        index = int(order[position])
        plan.add(ERROR, f"block {index} shares physical block {int(entries[index])} with "
                        f"block {int(order[position - 1])}", blocks_offset + 4 * index,
                 "make the later block read as zeros")
    entries[order[shared]] = cleared
    used = entries < BLOCK_ZERO
    file_size = storage.size()
    whole = max(0, (file_size - data_offset) // slot)   # slots entirely inside the file
    cut = np.flatnonzero(used & (entries >= whole))
    if cut.size:
        need = data_offset + int(entries[cut].max() + 1) * slot
        plan.add(ERROR, f"the file is cut short: {cut.size} blocks lie (partly) beyond its "
                        f"end at {file_size}", file_size,
                 "extend the file with zeros to its full length",
                 lambda storage: storage.set_size(need))
    in_use = np.zeros(allocated, dtype=bool)
    in_use[entries[used].astype(np.int64)] = True
    holes = int(np.count_nonzero(~in_use))
    count = int(np.flatnonzero(in_use)[-1]) + 1 if in_use.any() else 0
    if holes:
        plan.add(LEAK, f"{holes} allocated blocks are used by no entry", data_offset,
                 "move the last blocks into the holes and shorten the file",
                 leaked=holes * slot)
        plan.pack = True
    expected_end = data_offset + allocated * slot
    if file_size > expected_end and not cut.size:
        plan.add(LEAK, f"the file is {file_size - expected_end} bytes longer than its blocks",
                 expected_end, "shorten the file", leaked=file_size - expected_end)
        plan.fixes.append(lambda storage: storage.set_size(expected_end))
    recount = allocated != h["blocks_allocated"]
    if recount or not np.array_equal(entries, original):
        def write_map(storage: Storage) -> None:
            storage.write_at(blocks_offset, entries.tobytes())
            if recount:
                _rewrite_field(layout, "blocks_allocated", count)(storage)
        plan.fixes.append(write_map)
