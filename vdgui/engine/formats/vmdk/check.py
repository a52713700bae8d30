"""VMDK check and repair (``VDRepair``), working on the files themselves.

What is checked:

* the descriptor: lines that do not parse (a fix turns them into comments, except
  extent lines, which cannot be guessed), missing or malformed CID and UUIDs,
  extent files that are missing or lie outside the image's folder (not followed),
  flat extent files shorter than their extent, and a ``parentCID`` that no longer
  matches the parent's CID (VMware refuses such a chain; the fix rewrites it);
* every hosted sparse extent: the header (unrepairable when damaged: nothing
  trustworthy to rebuild it from), the footer and markers of streams, a stale
  unclean-shutdown flag, both grain directories and all grain tables.  Where the
  grain directory and the redundant one disagree, or a table and its mirror do, the
  copy whose entries are consistent (inside the file, outside the metadata) wins
  and the other is rewritten; a table lost in both copies is dropped.  Entries
  pointing past the end of the file or into metadata, and grains used twice, are
  cleared: free in a base image, reading zeros in a differencing one (a zero
  marker, or a new zero grain where the header has none), never showing the
  parent's stale data.  A file cut inside a grain is extended with zeros; space no
  table uses (freed or leaked grains, space at the end) is given back by packing;
* stream (compressed) extents are checked the same way, plus each grain record
  (its sector number, size, and that it inflates); nothing in them is repaired,
  since a stream cannot be rewritten in place.

A check opens every file read-only and changes nothing.  A repair applies the
fixes of each file in one transaction, then packs the image if space leaked.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ...errors import Corrupted, VDError
from ...findings import ERROR, LEAK, WARNING, Finding
from ...io import Storage, StorageProvider
from ...io.journal import journal_path
from ...progress import Progress, report
from ...types import NIL_UUID, SECTOR
from .descriptor import (ACCESS_MODES, LCHS_KEYS, MAX_DESCRIPTOR_BYTES, NO_PARENT_CID,
                         PCHS_KEYS, UUID_KEYS, Descriptor, _Line, decode, encode,
                         looks_like_descriptor, new_cid, read_cid)
from .packing import Movable, plan_pack, read_tables
from .sparse import (COMPRESSION_DEFLATE, COMPRESSION_NONE, COWD_HEADER, COWD_GTES_PER_GT,
                     COWD_MAGIC, FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GT, GD_AT_END, GRAIN_RECORD,
                     GTE_ZERO, HEADER, MAGIC, MARKER, MARKER_GD, MARKER_GT,
                     MAX_DESCRIPTOR_SECTORS, MAX_GD_ENTRIES, MAX_GRAIN_SECTORS, MAX_GTES_PER_GT,
                     NEWLINE_CHARS, TABLE_BATCH, SparseExtent, SparseHeader, inflate,
                     read_footer)

#: Findings of one kind listed per extent; the rest are summed up in one more.
MAX_LISTED = 200
#: A table entry standing for "a new grain of zeros, to be placed at the end".
NEW_ZERO = 0xFFFFFFFF
#: Most new zero grains a repair makes (64 GiB of disk in 64 KiB grains).
MAX_NEW_GRAINS = 1 << 20
RAW_TYPES = ("fullDevice", "partitionedDevice")


def check(io: StorageProvider, path: str, repair: bool,
          progress: Progress | None = None) -> list[Finding]:
    """The findings for the VMDK image at ``path``; with ``repair``, fix them first."""
    checker = _Checker(io, path, repair, progress)
    try:
        checker.run()
        if repair:
            checker.apply()
    finally:
        checker.close()
    for extent_path in checker.pack if repair else ():
        _pack(io, extent_path, progress)
    return checker.findings


def _pack(io: StorageProvider, path: str, progress: Progress | None) -> None:
    """Pack one sparse extent file (whatever its descriptor says)."""
    with io.open(path, writable=True) as storage:
        try:
            SparseExtent.open(storage, None, "RW", path).pack(progress)
        except VDError:
            pass  # the check after the repair says what still stands in the way


@dataclass
class _File:
    """One file of the image, opened once, with the fixes to apply to it."""

    path: str
    storage: Storage
    label: str  # prefix for findings about files other than the image's own
    fixes: list[Callable[[Storage], None]] = field(default_factory=list)


class _Checker:
    """Walks the descriptor and every extent, collecting findings and fixes."""

    def __init__(self, io: StorageProvider, path: str, repair: bool,
                 progress: Progress | None) -> None:
        self.io, self.path, self.repair, self.progress = io, path, repair, progress
        self.findings: list[Finding] = []
        self.files: dict[str, _File] = {}
        #: Sparse extent files to pack once the fixes are in.
        self.pack: list[str] = []
        self.descriptor: Descriptor | None = None
        self.desc_file: _File | None = None
        self.desc_area: tuple[int, int] | None = None
        self.desc_changes: list[Callable[[], None]] = []
        self.diff = False
        self.checked: set[str] = set()

    # -- bookkeeping -------------------------------------------------------------------

    def add(self, severity: str, what: str, offset: int | None = None,
            fix: str | None = None, apply: Callable[[Storage], None] | None = None,
            file: _File | None = None, leaked: int = 0) -> None:
        if file is not None and file.label:
            what = f"{file.label}: {what}"
        self.findings.append(Finding(severity, what, offset, fix, leaked))
        if fix is not None and apply is not None and file is not None:
            file.fixes.append(apply)

    def open(self, path: str) -> _File | None:
        key = os.path.realpath(path)
        if key in self.files:
            return self.files[key]
        label = "" if key == os.path.realpath(self.path) else os.path.basename(path)
        if self.io.exists(journal_path(path)):
            self.findings.append(Finding(
                WARNING, f"{label + ': ' if label else ''}an operation was interrupted; "
                         f"its journal is still pending", None,
                "complete the interrupted operation"))
        try:
            storage = self.io.open(path, writable=self.repair)  # completes a journal
        except VDError as exc:
            self.add(ERROR, f"{label + ': ' if label else ''}the file cannot be opened: "
                            f"{exc.message}")
            return None
        self.files[key] = _File(path, storage, label)
        return self.files[key]

    def close(self) -> None:
        for file in self.files.values():
            file.storage.close()
        self.files.clear()

    def add_desc(self, severity: str, what: str, offset: int | None, fix: str | None,
                 change: Callable[[], None] | None = None) -> None:
        """A finding about the descriptor; ``change`` edits the parsed descriptor."""
        self.add(severity, what, offset, fix, file=self.desc_file)
        if fix is not None and change is not None:
            self.desc_changes.append(change)

    def apply(self) -> None:
        for change in self.desc_changes:
            change()
        if self.desc_changes and self.desc_file is not None:
            self.desc_file.fixes.append(self._write_descriptor)
        for file in self.files.values():
            if file.fixes:
                with file.storage.transaction():
                    for fix in file.fixes:
                        fix(file.storage)

    # -- the image ---------------------------------------------------------------------

    def run(self) -> None:
        main = self.open(self.path)
        if main is None:
            return
        head = main.storage.read_at(0, SECTOR)
        if head[:4] == COWD_MAGIC:
            self._cowd(main, None)
            return
        if head[:4] == MAGIC:
            header = self._sparse_header(main)
            if header is None:
                return
            if header.desc_offset and header.desc_size:
                area = (header.desc_offset * SECTOR, header.desc_size * SECTOR)
                raw = main.storage.read_at(area[0], min(area[1], MAX_DESCRIPTOR_BYTES))
                text = decode(raw.split(b"\0", 1)[0])
                if text.strip():
                    self._parse_descriptor(text, main, area)
            if header.capacity:
                lines = self.descriptor.extents if self.descriptor else []
                if len(lines) > 1:
                    self.add(ERROR, f"the descriptor embedded in a monolithic sparse file "
                                    f"lists {len(lines)} extents; it can have only itself",
                             header.desc_offset * SECTOR)
                self._sparse(main, header, lines[0].sectors if len(lines) == 1 else None)
            elif self.descriptor is not None:
                self._extents()
            else:
                self.add(ERROR, "the file has neither a capacity nor a descriptor", 0x0C)
        else:
            size = main.storage.size()
            raw = main.storage.read_at(0, min(size, MAX_DESCRIPTOR_BYTES + 1))
            if not looks_like_descriptor(raw[:4096]):
                self.add(ERROR, "this is not a VMDK image (no KDMV signature and no "
                                "descriptor)", 0)
                return
            if size > MAX_DESCRIPTOR_BYTES:
                self.add(ERROR, f"the descriptor file is {size} bytes long, more than the "
                                f"{MAX_DESCRIPTOR_BYTES} accepted", 0)
                return
            self._parse_descriptor(decode(raw.split(b"\0", 1)[0]), main, None)
            if self.descriptor is not None:
                self._extents()
        if self.descriptor is not None:
            self._parent()

    # -- the descriptor ----------------------------------------------------------------

    def _parse_descriptor(self, text: str, file: _File, area: tuple[int, int] | None) -> None:
        self.desc_file, self.desc_area = file, area
        base = area[0] if area else 0
        room = (area[1] - 1 - len(encode(text))) if area else 1 << 30
        lines: list[_Line] = []
        position = base
        raw_lines = text.split("\n")
        if raw_lines and raw_lines[-1] == "":
            raw_lines.pop()
        for number, raw in enumerate(raw_lines, 1):
            try:
                lines.append(Descriptor._parse_line(raw.rstrip("\r"), number, self.path))
            except Corrupted as exc:
                first = raw.strip().split(None, 1)[0] if raw.strip() else ""
                # The parsed descriptor holds the line as the repair leaves it.
                if first in ACCESS_MODES:
                    lines.append(_Line(raw, "comment"))  # kept as it is: cannot be guessed
                    self.add_desc(ERROR, f"{exc.message}; the extent it describes cannot be "
                                         f"used", position, None)
                elif room >= 2:
                    room -= 2
                    lines.append(_Line("# " + raw, "comment"))
                    self.add_desc(ERROR, exc.message, position,
                                  "turn the line into a comment", lambda: None)
                else:
                    self.add_desc(ERROR, exc.message, position, "remove the line",
                                  lambda: None)
            position += len(encode(raw)) + 1
        self.descriptor = Descriptor(lines)
        self._descriptor_values(base)

    def _write_descriptor(self, storage: Storage) -> None:
        raw = encode(self.descriptor.render())
        if self.desc_area is None:
            storage.write_at(0, raw)
            if storage.size() > len(raw):
                storage.set_size(len(raw))
        elif len(raw) < self.desc_area[1]:
            # NUL-padded to the area's end, but no further than the file goes already.
            start, size = self.desc_area
            end = min(start + size, max(storage.size(), start + len(raw) + 1))
            storage.write_at(start, raw + bytes(end - start - len(raw)))

    def _set_key(self, key: str, value: str | None) -> Callable[[], None]:
        """A change of one descriptor key (written once, with the others)."""
        return lambda: self.descriptor.set(key, value)

    def _descriptor_values(self, base: int) -> None:
        d = self.descriptor
        try:
            version = d.get_int("version", self.path)
        except Corrupted as exc:
            self.add_desc(ERROR, exc.message, base, None)
            version = None
        if version is not None and not 1 <= version <= 3:
            self.add_desc(ERROR, f"descriptor version {version} is not supported", base, None)
        try:
            if d.get_hex("CID", self.path) is None:
                self.add_desc(WARNING, "the descriptor has no CID (content ID)", base,
                              "give it a new CID", self._set_key("CID", f"{new_cid():08x}"))
        except Corrupted as exc:
            self.add_desc(ERROR, exc.message, base, "give it a new CID",
                          self._set_key("CID", f"{new_cid():08x}"))
        for name, fixable in (("uuid", True), ("modification", True), ("parent", False),
                              ("parent_modification", False)):
            value = d.get(UUID_KEYS[name])
            if value is None or not value.strip():
                continue
            try:
                uuidlib.UUID(value.strip())
            except ValueError:
                what = f"the descriptor's {UUID_KEYS[name]}={value!r} is not a UUID"
                if fixable:
                    self.add_desc(ERROR, what, base, "set a new random UUID",
                                  self._set_key(UUID_KEYS[name], str(uuidlib.uuid4())))
                else:
                    self.add_desc(ERROR, what + "; if the parent is known, re-link the image "
                                                "(vdimg rebase --unsafe)", base, None)
        for keys in (PCHS_KEYS, LCHS_KEYS):
            try:
                for key in keys:
                    d.get_int(key, self.path)
            except Corrupted as exc:
                def drop(keys: tuple[str, ...] = keys) -> None:
                    for key in keys:
                        d.set(key, None)
                self.add_desc(WARNING, exc.message, base, "remove the geometry (it is "
                              "derived from the size again)", drop)
        try:
            parent_cid = d.get_hex("parentCID", self.path)
        except Corrupted:
            parent_cid = None  # reported with the parent
        parent_uuid = d.get(UUID_KEYS["parent"]) or ""
        self.diff = bool((parent_cid is not None and parent_cid != NO_PARENT_CID)
                         or d.get("parentFileNameHint")
                         or parent_uuid.strip() not in ("", str(NIL_UUID)))
        if not d.extents:
            self.add_desc(ERROR, "the descriptor lists no (usable) extent", base, None)

    def _parent(self) -> None:
        """``parentCID`` against the CID of the parent the hint names."""
        d = self.descriptor
        hint = d.get("parentFileNameHint")
        value = d.get("parentCID")
        try:
            stored = d.get_hex("parentCID", self.path)
        except Corrupted:
            stored = -1
        parent = None
        if hint:
            folder = os.path.dirname(os.path.abspath(self.path))
            candidate = os.path.normpath(os.path.join(folder, hint))
            if self.io.exists(candidate):
                try:
                    parent = read_cid(self.io, candidate)
                except VDError:
                    parent = None  # not a VMDK (a VDI parent has no CID), or unreadable
        if parent is not None and stored != parent:
            shown = (f"{value!r}" if stored == -1 else
                     f"{stored:08x}" if stored is not None else "(missing)")
            self.add_desc(WARNING, f"parentCID {shown} does not match the CID {parent:08x} of "
                                   f"the parent {hint!r}: VMware refuses such a chain (the "
                                   f"parent was changed or replaced after this image was made)",
                          None, f"set parentCID to {parent:08x}",
                          self._set_key("parentCID", f"{parent:08x}"))
        elif stored == -1:
            self.add_desc(ERROR, f"the descriptor's parentCID={value!r} is not a 32-bit "
                                 f"hexadecimal number", None,
                          None if hint else "set parentCID to ffffffff (no parent)",
                          self._set_key("parentCID", f"{NO_PARENT_CID:08x}"))

    # -- extents -----------------------------------------------------------------------

    def _extents(self) -> None:
        from .image import ExtentRefused, resolve_extent
        d = self.descriptor
        if (d.get("createType") or "") in RAW_TYPES:
            self.add(WARNING, "this is a raw-disk VMDK: its extents are host devices or "
                              "partitions, which a check does not open")
            return
        lines = [line for line in d.extents if line.type != "ZERO"
                 and line.access != "NOACCESS"]
        for number, line in enumerate(lines):
            report(self.progress, number, len(lines), "checking extents")
            if line.type in ("VMFSRDM", "VMFSRAW", "SESPARSE"):
                self.add(WARNING, f"the {line.type} extent {line.filename!r} is not checked")
                continue
            try:
                path = resolve_extent(self.path, line.filename, False)
            except ExtentRefused:
                self.add(WARNING, f"the extent file {line.filename!r} lies outside the "
                                  f"image's folder; it is not checked")
                continue
            if not self.io.exists(path):
                self.add(ERROR, f"the extent file {line.filename!r} is missing")
                continue
            if os.path.realpath(path) in self.checked and line.type not in ("FLAT", "VMFS"):
                continue
            self.checked.add(os.path.realpath(path))
            file = self.open(path)
            if file is None:
                continue
            if line.type in ("FLAT", "VMFS"):
                self._flat(file, line.offset, line.sectors)
                continue
            magic = file.storage.read_at(0, 4)
            if magic == COWD_MAGIC:
                self._cowd(file, line.sectors)
            elif magic == MAGIC:
                header = self._sparse_header(file)
                if header is not None:
                    self._sparse(file, header, line.sectors)
            else:
                self.add(ERROR, "the extent file is not a VMDK sparse extent (no KDMV or "
                                "COWD signature)", 0, file=file)

    def _flat(self, file: _File, offset: int, sectors: int) -> None:
        need = (offset + sectors) * SECTOR
        size = file.storage.size()
        if size < need:
            self.add(WARNING, f"the flat extent file is {size} bytes long; its extent needs "
                              f"{need} (reads past its end give zeros, other programs may "
                              f"refuse it)", size, "extend the file with zeros",
                     lambda storage: storage.set_size(need), file)

    def _cowd(self, file: _File, sectors: int | None) -> None:
        raw = file.storage.read_at(0, SECTOR)
        if len(raw) < COWD_HEADER.size:
            self.add(ERROR, "the vmfsSparse (COWD) header is cut short", 0, file=file)
            return
        c = COWD_HEADER.unpack(raw)
        header = SparseHeader(version=1, flags=0, capacity=c["capacity"], grain=c["grain"],
                              gtes_per_gt=COWD_GTES_PER_GT, gd_offset=c["gd_offset"],
                              overhead=0)
        if self._header_problems(file, header):
            return
        if sectors is not None and sectors > header.capacity:
            self.add(ERROR, f"the descriptor gives the extent {sectors} sectors but its "
                            f"header only {header.capacity}", 0x0C, file=file)
        _SparseCheck(self, file, header, fixable=False, cowd=True).run()

    # -- sparse extents ----------------------------------------------------------------

    def _sparse_header(self, file: _File) -> SparseHeader | None:
        """The extent's header (a stream's footer), or None after reporting why it
        cannot be used."""
        storage = file.storage
        raw = storage.read_at(0, SECTOR)
        if len(raw) < SECTOR:
            self.add(ERROR, f"the sparse extent header is cut short ({len(raw)} of {SECTOR} "
                            f"bytes); it cannot be rebuilt", 0, file=file)
            return None
        h = HEADER.unpack(raw)
        if h["flags"] & FLAG_NEWLINE_TEST and h["newline"] != NEWLINE_CHARS:
            self.add(ERROR, "the header's line-ending test bytes are damaged: the file was "
                            "probably transferred in text mode, which damages it throughout; "
                            "transfer it again in binary mode", HEADER.offset_of("newline"),
                     file=file)
            return None
        header = SparseHeader(**{name: h[name] for name in SparseHeader.__dataclass_fields__})
        if header.gd_offset == GD_AT_END:
            try:
                footer = read_footer(storage, file.path)
            except Corrupted as exc:
                self.add(ERROR, f"{exc.message}; a stream cannot be repaired in place",
                         storage.size(), file=file)
                return None
            if (footer.capacity, footer.grain, footer.gtes_per_gt) != \
                    (header.capacity, header.grain, header.gtes_per_gt):
                self.add(ERROR, "the stream's footer and header disagree on the extent's "
                                "capacity or grain size; the footer is used",
                         storage.size() - 2 * SECTOR, file=file)
            header = replace(footer, unclean=header.unclean)
        if self._header_problems(file, header):
            return None
        return header

    def _header_problems(self, file: _File, h: SparseHeader) -> bool:
        """Report what makes the header unusable; True when something does."""
        size = file.storage.size()
        problems: list[tuple[int, str]] = []
        if not 1 <= h.version <= 3:
            problems.append((4, f"unknown sparse extent version {h.version}"))
        if h.compression not in (COMPRESSION_NONE, COMPRESSION_DEFLATE):
            problems.append((0x4D, f"unknown compression method {h.compression}"))
        if h.grain < 1 or h.grain & (h.grain - 1) or h.grain > MAX_GRAIN_SECTORS:
            problems.append((0x14, f"the grain size of {h.grain} sectors is not a power of "
                                   f"two up to {MAX_GRAIN_SECTORS}"))
        if not 1 <= h.gtes_per_gt <= MAX_GTES_PER_GT:
            problems.append((0x2C, f"{h.gtes_per_gt} entries per grain table"))
        elif not problems and -(-h.capacity // (h.gtes_per_gt * h.grain)) > MAX_GD_ENTRIES:
            problems.append((0x0C, f"a capacity of {h.capacity} sectors needs an absurdly "
                                   f"large grain directory"))
        if h.desc_size > MAX_DESCRIPTOR_SECTORS:
            problems.append((0x24, f"an embedded descriptor area of {h.desc_size} sectors"))
        if h.desc_offset and h.desc_offset * SECTOR >= size:
            problems.append((0x1C, "the embedded descriptor lies beyond the end of the file"))
        if h.capacity and not h.gd_offset:
            problems.append((0x38, "the header gives no grain directory"))
        if h.capacity and h.overhead * SECTOR > size:
            problems.append((0x40, f"the file is truncated: grains start at "
                                   f"{h.overhead * SECTOR} but the file has {size} bytes"))
        for offset, what in problems:
            self.add(ERROR, f"{what}; the header cannot be rebuilt", offset, file=file)
        return bool(problems)

    def _sparse(self, file: _File, header: SparseHeader, sectors: int | None) -> None:
        self.checked.add(os.path.realpath(file.path))
        if not header.capacity:
            self.add(ERROR, "the sparse extent has a capacity of 0 sectors; the header "
                            "cannot be rebuilt", 0x0C, file=file)
            return
        if sectors is not None and sectors > header.capacity:
            self.add(ERROR, f"the descriptor gives the extent {sectors} sectors but its "
                            f"header only {header.capacity}", 0x0C, file=file)
        fixable = header.compression == COMPRESSION_NONE and header.version in (1, 2)
        _SparseCheck(self, file, header, fixable).run()


class _SparseCheck:
    """The grain directories and tables of one sparse extent file.

    Directory number 0 is the grain directory, 1 the redundant one (when used).
    Tables needing no change are only scanned for their grains; the others get an
    effective content in :attr:`tables` (None: dropped) written to every copy.
    """

    def __init__(self, checker: _Checker, file: _File, header: SparseHeader,
                 fixable: bool, cowd: bool = False) -> None:
        self.c, self.file, self.h = checker, file, header
        self.storage = file.storage
        self.fixable = fixable
        self.cowd = cowd
        self.size = self.storage.size()
        self.gs = header.grain
        self.gtes = header.gtes_per_gt
        self.gt_sectors = -(-self.gtes * 4 // SECTOR)
        self.count = -(-header.capacity // (self.gtes * self.gs))
        self.dir_sectors = -(-self.count * 4 // SECTOR)
        self.compressed = header.compression == COMPRESSION_DEFLATE
        self.zero_grains = header.zero_grains and not cowd
        #: Length of a grain in the file, as far as overlaps go (records vary).
        self.length = 1 if self.compressed else self.gs
        self.overhead = header.overhead
        self.new_header = replace(header)
        self.header_dirty = False
        #: Sector ranges that are not grains: header, descriptor, directories.
        self.fixed: list[tuple[int, int]] = [(0, 4 if cowd else 1)]
        if header.desc_offset and header.desc_size:
            self.fixed.append((header.desc_offset, header.desc_size))
        self.meta = list(self.fixed)
        self.listed: dict[str, int] = {}
        self.fixes: dict[str, str | None] = {}
        #: Tables the repair writes (every copy): index -> entries.
        self.tables: dict[int, np.ndarray] = {}
        #: Tables the repair drops from both directories.
        self.dropped = np.zeros(self.count, dtype=bool)
        #: Table copies that need a new place: (directory number, index).
        self.relocate: list[tuple[int, int]] = []
        #: ``(sector, grain index)`` blocks of the grains of unchanged tables.
        self.plain: list[np.ndarray] = []
        self.extend_to = 0

    # -- reporting ---------------------------------------------------------------------

    def add(self, kind: str, severity: str, what: str, offset: int | None,
            fix: str | None) -> None:
        """A finding, listed up to MAX_LISTED times per kind (the fix is applied to all)."""
        n = self.listed.get(kind, 0)
        self.listed[kind] = n + 1
        fix = fix if self.fixable else None
        self.fixes[kind] = fix
        if n < MAX_LISTED:
            self.c.add(severity, what, offset, fix, file=self.file)

    def summarize(self) -> None:
        for kind, n in self.listed.items():
            if n > MAX_LISTED:
                self.c.add(ERROR, f"... and {n - MAX_LISTED} more problems of the same kind "
                                  f"({kind})", None, "as above" if self.fixes[kind] else None,
                           file=self.file)

    def cleared(self) -> int:
        """What an untrustworthy entry becomes: free in a base; reading zeros in a
        differencing image (where free would show the parent's stale data)."""
        if not self.c.diff:
            return 0
        return GTE_ZERO if self.zero_grains else NEW_ZERO

    def _clear_fix(self) -> str:
        return "make the grain read as zeros" if self.c.diff else "free the entry"

    # -- the walk ----------------------------------------------------------------------

    def run(self) -> None:
        dirs = self._directories()
        if dirs is None:
            return
        self.oks = self._locations(dirs)
        self._tables(dirs)
        grains = self._grains(dirs)
        if self.compressed:
            self._stream(grains)
        self._allocate(dirs, grains)
        if self.h.unclean and not self.cowd:
            self.new_header.unclean = 0
            self.header_dirty = True
            self.add("unclean", WARNING, "the extent is marked as not closed cleanly (a "
                     "program using it stopped before closing it)", 0x48, "clear the flag")
        self.summarize()
        if self.fixable and self.c.repair:
            self._plan_writes(dirs)

    def _directories(self) -> list[dict] | None:
        """The grain directory (and its redundant copy) that can be used."""
        h = self.h
        wanted = [("grain directory", h.gd_offset, 0x38)]
        if h.flags & FLAG_REDUNDANT_GT and h.rgd_offset and not self.cowd:
            wanted.append(("redundant grain directory", h.rgd_offset, 0x30))
        found = []
        for what, sector, field_offset in wanted:
            reason = None
            if sector * SECTOR + self.count * 4 > self.size:
                reason = f"lies beyond the end of the file ({self.size} bytes)"
            elif _overlaps(sector, self.dir_sectors, self.fixed):
                reason = "overlaps the header or the embedded descriptor"
            elif found and not found[0]["bad"] and \
                    _overlaps(sector, self.dir_sectors, [(found[0]["sector"], self.dir_sectors)]):
                reason = "overlaps the other grain directory"
            d = {"what": what, "sector": sector, "at": field_offset, "bad": reason}
            if not reason:
                raw = self.storage.read_exact(sector * SECTOR, self.count * 4, what)
                d["entries"] = np.frombuffer(raw, dtype="<u4").copy()
                d["new"] = d["entries"].copy()
            found.append(d)
        good = [d for d in found if not d["bad"]]
        for d in found:
            if not d["bad"]:
                continue
            what = f"the {d['what']} at sector {d['sector']} {d['bad']}"
            if not good:
                self.add("directory", ERROR, f"{what}; the extent's grains cannot be found",
                         d["at"], None)
            elif d is found[0]:
                self.add("directory", ERROR, what, d["at"],
                         "use the redundant grain directory as the grain directory")
                self.new_header.gd_offset = good[0]["sector"]
            else:
                self.add("directory", ERROR, what, d["at"],
                         "stop using a redundant grain directory")
        if not good:
            return None
        if len(good) < len(found):
            self.new_header.flags &= ~FLAG_REDUNDANT_GT
            self.new_header.rgd_offset = 0
            self.header_dirty = True
        self.fixed += [(d["sector"], self.dir_sectors) for d in good]
        return good

    def _locations(self, dirs: list[dict]) -> list[np.ndarray]:
        """Per directory, which entries point at a usable table (reporting the others)."""
        fixed = _Intervals(self.fixed)
        oks, whys = [], []
        last = (self.size - self.gtes * 4) // SECTOR  # the last sector a table may start at
        for d in dirs:
            e = d["entries"]
            beyond = e.astype(np.int64) > last
            ok = (e != 0) & ~beyond
            candidates = np.flatnonzero(ok)
            ok[candidates[fixed.hit(e[candidates], self.gt_sectors)]] = False
            oks.append(ok)
            whys.append(np.where(beyond, 1, 2).astype(np.uint8))
        # Two entries sharing a place: the first (grain directory first) keeps it.
        starts = np.concatenate([d["entries"][ok] for d, ok in zip(dirs, oks)]).astype(np.int64)
        which = np.concatenate([np.full(int(ok.sum()), k) for k, ok in enumerate(oks)])
        index = np.concatenate([np.flatnonzero(ok) for ok in oks])
        order = np.lexsort((index, which, starts))
        if len(order) > 1:
            reach = np.maximum.accumulate(starts[order] + self.gt_sectors)
            for k in (np.flatnonzero(starts[order][1:] < reach[:-1]) + 1).tolist():
                oks[which[order[k]]][index[order[k]]] = False
                whys[which[order[k]]][index[order[k]]] = 3
        reasons = {1: "past the end of the file", 2: "into the extent's metadata",
                   3: "at a table another entry uses"}
        self.unusable = [~ok & (d["entries"] != 0) for d, ok in zip(dirs, oks)]
        for d, bad, why in zip(dirs, self.unusable, whys):
            bad = np.flatnonzero(bad)
            for i in bad[:MAX_LISTED].tolist():
                self.add("directory entry", ERROR, f"entry {i} of the {d['what']} points to "
                         f"sector {int(d['entries'][i])}, {reasons[int(why[i])]}",
                         d["sector"] * SECTOR + 4 * i,
                         "rebuild it from the other copy" if len(dirs) > 1 else
                         self._clear_fix().replace("grain", "range"))
            self.listed["directory entry"] = self.listed.get("directory entry", 0) + \
                max(0, len(bad) - MAX_LISTED)
        return oks

    def _entry_ok(self, tables: np.ndarray) -> np.ndarray:
        """Which entries are free, zero markers, or grains inside the file and outside
        the header, descriptor and directories (tables are looked at later)."""
        e = tables.astype(np.int64)
        plain = (e == 0) | ((e == GTE_ZERO) & self.zero_grains)
        bad = ~plain & ((e * SECTOR >= self.size) | (e < self.overhead)
                        | self.fixed_intervals.hit(e, self.length))
        return ~bad

    def _entry_text(self, index: int, j: int, value: int) -> str:
        grain = index * self.gtes + j
        where = f"grain table {index} entry {j} (disk offset {grain * self.gs * SECTOR})"
        if value * SECTOR >= self.size:
            return f"{where} points to sector {value}, past the end of the file"
        return f"{where} points to sector {value}, into the extent's metadata"

    def _tables(self, dirs: list[dict]) -> None:
        """Load the tables batch by batch and decide, per table, what it becomes."""
        self.fixed_intervals = _Intervals(self.fixed)
        lowest = 2 if self.zero_grains else 1
        for first in range(0, self.count, TABLE_BATCH):
            report(self.c.progress, first, self.count, "checking grain tables")
            stop = min(first + TABLE_BATCH, self.count)
            ok = [o[first:stop] for o in self.oks]
            present = np.logical_or.reduce(ok)
            absent = ~present & np.logical_and.reduce([d["entries"][first:stop] == 0
                                                       for d in dirs])
            self._lost(np.flatnonzero(~present & ~absent) + first, dirs)
            rows = np.flatnonzero(present)  # the rows of the batch that have a table
            blocks = []
            for d, o in zip(dirs, ok):
                block = np.zeros((len(rows), self.gtes), dtype="<u4")
                have = np.flatnonzero(o[rows])
                block[have] = read_tables(self.storage, d["entries"][rows[have] + first],
                                          self.gtes, f"{d['what']} table")
                blocks.append(block)
            fine = ok[0][rows] & self._entry_ok(blocks[0]).all(axis=1)
            if len(dirs) == 2:
                fine &= ok[1][rows] & (blocks[0] == blocks[1]).all(axis=1)
            e = blocks[0][fine].astype(np.int64)
            r, j = np.nonzero(e >= lowest)
            self.plain.append(np.stack([e[r, j], (rows[fine][r] + first) * self.gtes + j],
                                       axis=1))
            for n in np.flatnonzero(~fine).tolist():
                row = int(rows[n])
                self._table(first + row, dirs, [o[row] for o in ok],
                            [block[n].astype(np.int64) for block in blocks])

    def _table(self, index: int, dirs: list[dict], ok: list[bool],
               tables: list[np.ndarray]) -> None:
        present = [k for k in range(len(dirs)) if ok[k]]
        valid = [self._entry_ok(t) for t in tables]
        if len(present) == 2:
            bad = [int((~valid[k]).sum()) for k in (0, 1)]
            wrong = 0 if bad[0] else 1
            good = valid[wrong]
            agree = good & (tables[0] == tables[1])
            # A copy with bad entries is repaired entry by entry only when the rest of
            # it is the consistent copy, grains included; otherwise it is no grain table
            # at all (its directory entry points at data, which must not be written).
            if bool(bad[0]) != bool(bad[1]) and \
                    not (np.array_equal(agree, good) and tables[wrong][agree].any()):
                d = dirs[wrong]
                first = (index * self.gtes + int(np.flatnonzero(~good)[0])) * self.gs * SECTOR
                self.add("table", ERROR, f"{d['what'].replace('directory', 'table')} "
                         f"{index} (sector {int(d['entries'][index])}) is not a grain table: "
                         f"{bad[wrong]} entries point past the end of the file or into "
                         f"metadata (the first for disk offset {first}); the other copy is "
                         f"consistent", int(d["entries"][index]) * SECTOR,
                         "rewrite the table from the other copy")
                self.relocate.append((wrong, index))
                present = [1 - wrong]
        if len(present) == 1:
            k = present[0]
            effective = tables[k].copy()
            bad_entries = ~valid[k]
            if len(dirs) == 2 and not ok[1 - k]:
                other = dirs[1 - k]
                if not self.unusable[1 - k][index]:
                    self.add("directory entry", ERROR, f"entry {index} of the "
                             f"{other['what']} is empty, but the other directory has a "
                             f"table there", other["sector"] * SECTOR + 4 * index,
                             "rebuild it from the other copy")
                self.relocate.append((1 - k, index))
        else:
            k = 0
            g, r = tables
            vg, vr = valid
            grain_g = vg & ((g >= 2) | (g == 1) & (not self.zero_grains))
            grain_r = vr & ((r >= 2) | (r == 1) & (not self.zero_grains))
            # The redundant entry wins where the primary is unusable, or where it holds
            # a grain the primary lacks (an update interrupted between the two copies).
            take_r = (g != r) & ((~vg & vr) | (vg & vr & ~grain_g & grain_r))
            effective = np.where(take_r, r, g)
            for j in np.flatnonzero((g != r) & vg & vr).tolist():
                self.add("mirror", ERROR, f"grain table {index} entry {j} says {int(g[j])} "
                         f"but its redundant copy says {int(r[j])}",
                         int(dirs[0]["entries"][index]) * SECTOR + 4 * j,
                         f"keep {int(effective[j])} in both")
            for j in np.flatnonzero((g != r) & (vg ^ vr)).tolist():
                wrong = 0 if not vg[j] else 1
                self.add("entry", ERROR, self._entry_text(index, j, int(tables[wrong][j]))
                         + (" (in the redundant table)" if wrong else "")
                         + "; the other copy is consistent",
                         int(dirs[wrong]["entries"][index]) * SECTOR + 4 * j,
                         "take the entry from the other copy")
            bad_entries = ~vg & ~vr
        for j in np.flatnonzero(bad_entries).tolist():
            self.add("entry", ERROR, self._entry_text(index, j, int(tables[k][j])),
                     int(dirs[k]["entries"][index]) * SECTOR + 4 * j, self._clear_fix())
        effective[bad_entries] = self.cleared()
        self.tables[index] = effective

    def _lost(self, indices: np.ndarray, dirs: list[dict]) -> None:
        """Tables no directory points to a usable copy of (reported already): the
        redundant entry of an absent table goes; a lost table is dropped in a base,
        and replaced by one reading zeros in a differencing image."""
        primary = dirs[0]["entries"][indices] != 0
        redundant_only = indices[~primary]
        lost = indices[primary]
        size = self.gtes * self.gs * SECTOR
        # A differencing image needs a new table reading zeros for each: beyond a
        # bound that is no repair, it is hostile input.
        fixable = not self.c.diff or len(lost) * self.gtes <= MAX_NEW_GRAINS
        for index in lost[:MAX_LISTED].tolist():
            self.add("lost", ERROR, f"grain table {index} is lost: what the disk held from "
                     f"offset {index * size} for {size} bytes cannot be found", None,
                     ("make that range read as zeros" if self.c.diff else "drop the table")
                     if fixable else None)
        self.listed["lost"] = self.listed.get("lost", 0) + max(0, len(lost) - MAX_LISTED)
        for d in dirs:
            d["new"][redundant_only] = 0
        self.dropped[redundant_only] = True
        if not fixable:
            return
        for d in dirs:
            d["new"][lost] = 0
        if self.cleared():
            for index in lost.tolist():
                self.tables[index] = np.full(self.gtes, self.cleared(), dtype=np.int64)
                self.relocate += [(k, index) for k in range(len(dirs))]
        else:
            self.dropped[lost] = True

    def _effective(self, index: int, dirs: list[dict]) -> np.ndarray:
        """The table's entries as the repair will leave them."""
        if index not in self.tables:
            d = dirs[0]
            self.tables[index] = read_tables(self.storage, d["entries"][index:index + 1],
                                             self.gtes, d["what"])[0].astype(np.int64)
        return self.tables[index]

    def _kept(self, dirs: list[dict]) -> np.ndarray:
        """The sectors of the table copies that stay where they are."""
        starts = []
        for k, (d, ok) in enumerate(zip(dirs, self.oks)):
            stay = ok & ~self.dropped
            stay[[i for j, i in self.relocate if j == k]] = False
            starts.append(d["entries"][stay])
        return np.concatenate(starts).astype(np.int64)

    def _tables_at(self, starts: np.ndarray | list[int]) -> np.ndarray:
        """``(start, length)`` rows of grain tables at ``starts``."""
        starts = np.asarray(starts, dtype=np.int64)
        return np.stack([starts, np.full(len(starts), self.gt_sectors)], axis=1)

    def _grains(self, dirs: list[dict]) -> np.ndarray:
        """``(sector, grain index)`` of the grains the tables keep, after clearing
        entries that point into a table or at a grain another entry uses."""
        self.kept = self._kept(dirs)
        lowest = 2 if self.zero_grains else 1
        parts = list(self.plain)
        for index, table in self.tables.items():
            used = np.flatnonzero((table >= lowest) & (table != NEW_ZERO))
            parts.append(np.stack([table[used], index * self.gtes + used], axis=1))
        grains = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        inside = _Intervals(self._tables_at(self.kept)).hit(grains[:, 0], self.length)
        clear = [(g, o, "into a grain table") for g, o in grains[inside].tolist()]
        rest = grains[~inside]
        rest = rest[np.lexsort((rest[:, 1], rest[:, 0]))]
        twice = np.zeros(len(rest), dtype=bool)
        if len(rest) > 1:
            reach = np.maximum.accumulate(rest[:, 0] + self.length)
            twice[1:] = rest[1:, 0] < reach[:-1]
        for k in np.flatnonzero(twice).tolist():
            other = int(rest[k - 1, 1])
            clear.append((int(rest[k, 0]), int(rest[k, 1]),
                          f"which grain {other} (disk offset {other * self.gs * SECTOR}) "
                          f"uses too"))
        for sector, owner, why in clear:
            index, j = divmod(owner, self.gtes)
            self.add("twice" if why.startswith("which") else "entry", ERROR,
                     f"grain table {index} entry {j} (disk offset "
                     f"{owner * self.gs * SECTOR}) points to sector {sector}, {why}",
                     None, self._clear_fix())
            self._effective(index, dirs)[j] = self.cleared()
        grains = rest[~twice]
        if not self.compressed and len(grains):
            end = int(grains[:, 0].max() + self.gs) * SECTOR
            if end > self.size:
                self.add("cut", ERROR, f"the file is cut short: it ends at {self.size}, "
                         f"inside a grain that runs to {end}", self.size,
                         "extend the file with zeros to the end of its last grain")
                self.extend_to = end
        return grains

    # -- streams -----------------------------------------------------------------------

    def _stream(self, grains: np.ndarray) -> None:
        """Markers, and each grain record: its sector number, size, and that it inflates."""
        if self.h.markers:
            tail = self.storage.read_at(max(0, self.size - SECTOR), SECTOR)
            if len(tail) < SECTOR or tail != bytes(SECTOR):
                self.add("marker", WARNING, "the stream does not end with an end-of-stream "
                         "marker (programs that read it in order may fail)",
                         max(0, self.size - SECTOR), None)
            head = self.storage.read_at(0, SECTOR)
            if len(head) == SECTOR and HEADER.unpack(head)["gd_offset"] == GD_AT_END:
                self._markers()
        gb = self.gs * SECTOR
        window, window_at = b"", -1

        def view(at: int, n: int) -> bytes:
            nonlocal window, window_at
            if window_at < 0 or at < window_at or at + n > window_at + len(window):
                window_at = at
                window = self.storage.read_at(at, max(8 << 20, n))
            return window[at - window_at:at - window_at + n]

        for sector, owner in grains[np.argsort(grains[:, 0], kind="stable")].tolist():
            at = sector * SECTOR
            expected = owner * self.gs
            if self.h.markers:
                head = view(at, GRAIN_RECORD.size)
                if len(head) < GRAIN_RECORD.size:
                    self.add("record", ERROR, f"the grain record at {at} is cut short by the "
                             f"end of the file", at, None)
                    continue
                lba, length = GRAIN_RECORD.unpack(head)
                if lba != expected:
                    self.add("record", ERROR, f"the grain record at {at} says it holds disk "
                             f"sector {lba}, but the grain table maps it to sector "
                             f"{expected}", at, None)
                    continue
                if not 0 < length <= 2 * gb + SECTOR:
                    self.add("record", ERROR, f"the grain record at {at} claims {length} "
                             f"bytes of data", at, None)
                    continue
                payload = view(at + GRAIN_RECORD.size, length)
                if len(payload) < length:
                    self.add("record", ERROR, f"the grain record at {at} runs past the end "
                             f"of the file", at, None)
                    continue
            else:
                payload = view(at, 2 * gb)
            try:
                inflate(payload, gb, self.file.path, at)
            except Corrupted as exc:
                self.add("record", ERROR, exc.message, at, None)

    def _markers(self) -> None:
        """VMware's stream layout: a GD marker before the directory, a GT marker before
        each table."""
        def marker(sector: int) -> dict | None:
            raw = self.storage.read_at((sector - 1) * SECTOR, SECTOR) if sector > 0 else b""
            return MARKER.unpack(raw) if len(raw) == SECTOR else None

        m = marker(self.h.gd_offset)
        if m is None or m["size"] != 0 or m["type"] != MARKER_GD:
            self.add("marker", WARNING, "the grain directory has no GD marker before it "
                     "(programs that read the stream in order may fail)",
                     (self.h.gd_offset - 1) * SECTOR, None)
        for sector in self.kept.tolist():
            m = marker(sector)
            if m is None or m["size"] != 0 or m["type"] != MARKER_GT or \
                    m["value"] != self.gt_sectors:
                self.add("marker", WARNING, f"the grain table at sector {sector} has no GT "
                         f"marker before it (programs that read the stream in order may "
                         f"fail)", (sector - 1) * SECTOR, None)

    # -- what the repair adds, and what a pack would give back ---------------------------

    def _allocate(self, dirs: list[dict], grains: np.ndarray) -> None:
        """Place moved tables (in their usual place when free, else at the end) and new
        zero grains (at the end), then report the space a pack would give back."""
        ends = [self.size, self.extend_to] + [(s + n) * SECTOR for s, n in self.fixed]
        if len(self.kept):
            ends.append(int(self.kept.max() + self.gt_sectors) * SECTOR)
        if len(grains):
            ends.append(int(grains[:, 0].max() + self.length) * SECTOR)
        append = -(-max(ends) // SECTOR)
        taken = _Intervals(np.concatenate([np.array(self.fixed, dtype=np.int64).reshape(-1, 2),
                                           self._tables_at(self.kept)]))
        homes_ok = [True] * len(dirs)
        if len(dirs) == 2 and _overlaps(self._home_sector(dirs, 0, 0),
                                        self.count * self.gt_sectors,
                                        [(self._home_sector(dirs, 1, 0),
                                          self.count * self.gt_sectors)]):
            homes_ok[1] = False
        start = append
        placed = []
        for k, index in self.relocate:
            sector = self._home_sector(dirs, k, index)
            if not homes_ok[k] or sector + self.gt_sectors > self.overhead or \
                    taken.hit(np.array([sector]), self.gt_sectors)[0]:
                sector, append = append, append + self.gt_sectors
            dirs[k]["new"][index] = sector
            placed.append(sector)
        new_grains = [np.zeros((0, 2), dtype=np.int64)]
        for index, table in sorted(self.tables.items()):
            js = np.flatnonzero(table == NEW_ZERO)
            if len(js):
                table[js] = append + np.arange(len(js)) * self.gs
                new_grains.append(np.stack([table[js], index * self.gtes + js], axis=1))
                append += len(js) * self.gs
        self.final_size = max(self.size, self.extend_to,
                              append * SECTOR if append > start else 0)
        if self.compressed or self.cowd:
            return
        everything = np.concatenate([grains] + new_grains)
        # What a pack may move: grains, and tables and directories after the metadata.
        tables = np.concatenate([self.kept, np.array(placed, dtype=np.int64)])
        late = tables[tables >= self.overhead]
        late_dirs = [d["sector"] for d in dirs if d["sector"] >= self.overhead]
        stay = np.concatenate([np.array(self.meta + [(d["sector"], self.dir_sectors)
                                                     for d in dirs
                                                     if d["sector"] < self.overhead],
                                        dtype=np.int64).reshape(-1, 2),
                               self._tables_at(tables[tables < self.overhead])])
        kinds = [Movable(everything[:, 0], everything[:, 1], self.gs),
                 Movable(late, np.arange(len(late)), self.gt_sectors),
                 Movable(np.array(late_dirs, dtype=np.int64), np.arange(len(late_dirs)),
                         self.dir_sectors)]
        try:
            plan = plan_pack(kinds, stay, self.overhead)
        except ValueError:
            return  # still overlapping: a check after the repair says more
        leaked = self.final_size - plan.end * SECTOR
        if leaked > 0:
            self.c.add(LEAK, f"{leaked} bytes of the file hold nothing a grain table uses "
                             f"(released or leaked grains, or space at the end)",
                       plan.end * SECTOR, "move the last grains into the holes and shorten "
                                          "the file" if self.fixable else None,
                       file=self.file, leaked=leaked)
            if self.fixable:
                self.c.pack.append(self.file.path)

    def _home_sector(self, dirs: list[dict], k: int, index: int) -> int:
        """Where a table sits in the usual layout: right after its directory."""
        return dirs[k]["sector"] + self.dir_sectors + index * self.gt_sectors

    # -- writing -----------------------------------------------------------------------

    def _plan_writes(self, dirs: list[dict]) -> None:
        """Queue the file's changes: its new length, tables, directories, header."""
        fixes = self.file.fixes
        size = self.final_size
        if size > self.size:
            fixes.append(lambda storage: storage.set_size(size))
        for index, table in sorted(self.tables.items()):
            raw = table.astype("<u4").tobytes()
            for d in dirs:
                sector = int(d["new"][index])
                if sector:
                    fixes.append(lambda storage, at=sector * SECTOR, raw=raw:
                                 storage.write_at(at, raw))
        for d in dirs:
            if not np.array_equal(d["new"], d["entries"]):
                raw = d["new"].astype("<u4").tobytes()
                fixes.append(lambda storage, at=d["sector"] * SECTOR, raw=raw:
                             storage.write_at(at, raw))
        if self.header_dirty:
            raw = self.new_header.pack()
            fixes.append(lambda storage: storage.write_at(0, raw))


def _overlaps(start: int, length: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start < s + n and s < start + length for s, n in ranges)


class _Intervals:
    """Sector ranges, sorted once, asked many times whether something overlaps them."""

    def __init__(self, ranges: list[tuple[int, int]] | np.ndarray) -> None:
        r = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        r = r[np.argsort(r[:, 0], kind="stable")]
        self.starts = r[:, 0]
        self.reach = np.maximum.accumulate(r[:, 0] + r[:, 1]) if len(r) else r[:, 0]

    def hit(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Per start (any shape), whether ``[start, start+length)`` overlaps a range."""
        starts = np.asarray(starts, dtype=np.int64)
        if not len(self.starts):
            return np.zeros(starts.shape, dtype=bool)
        flat = starts.reshape(-1)
        last = np.searchsorted(self.starts, flat + length, side="left") - 1
        out = (last >= 0) & (self.reach[np.maximum(last, 0)] > flat)
        return out.reshape(starts.shape)


def _overlaps_any(starts: np.ndarray, length: int, ranges: list[tuple[int, int]]) -> np.ndarray:
    return _Intervals(ranges).hit(starts, length)
