"""The VHDX metadata log: replaying it, and writing our own entries through it.

The log (MS-VHDX section 2.3) is a circular buffer of 4 KiB sectors.  An entry is
a 64-byte header (``loge``, CRC-32C over the whole entry, length, tail, sequence
number, descriptor count, log GUID, flushed and last file offsets), 32-byte
descriptors padded to whole sectors, then one data sector per data descriptor.
A data descriptor (``desc``) keeps the first 8 and last 4 bytes of its 4 KiB
sector; the data sector (``data``) carries the other 4084 bytes between the high
and low halves of the sequence number.  A zero descriptor (``zero``) zeroes a
range.  The active sequence is the run of consecutive, valid entries (sequence
numbers increasing by one) that leads from the tail named by the newest entry to
that entry; replaying it means applying every descriptor in order and extending
the file to the newest entry's last file offset.

:class:`PatchedStorage` lets a read-only open see a log applied in memory, without
writing; :class:`LogWriter` puts our own metadata updates through the log: write
the entry, flush, apply it, flush.
"""

from __future__ import annotations

import bisect
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Iterator

from ...blockmap import fill_zero
from ...errors import Corrupted, NotSupported
from ...io import Storage
from ...layout import Layout
from ...sizes import align_down, align_up
from .headers import MAX_FILE_OFFSET, Header, MiB, checksum_ok, guid, with_checksum

SECTOR = 4096
ENTRY_SIGNATURE = b"loge"
DATA_DESCRIPTOR = b"desc"
ZERO_DESCRIPTOR = b"zero"
DATA_SECTOR_SIGNATURE = b"data"

#: Logs longer than this are not read into memory for replay.
MAX_LOG = 64 * MiB
#: Steps spent looking for the active sequence before giving up on a hostile log.
SEARCH_BUDGET = 1 << 20

ENTRY_HEADER = Layout("VHDX log entry header", "<", [
    ("signature", "4s"), ("checksum", "I"), ("entry_length", "I"), ("tail", "I"),
    ("sequence", "Q"), ("descriptor_count", "I"), ("reserved", "I"), ("log_guid", "16s"),
    ("flushed_file_offset", "Q"), ("last_file_offset", "Q")])

DATA_DESC = Layout("VHDX log data descriptor", "<", [
    ("signature", "4s"), ("trailing", "I"), ("leading", "Q"), ("file_offset", "Q"),
    ("sequence", "Q")])

ZERO_DESC = Layout("VHDX log zero descriptor", "<", [
    ("signature", "4s"), ("reserved", "I"), ("zero_length", "Q"), ("file_offset", "Q"),
    ("sequence", "Q")])

DATA_SECTOR = Layout("VHDX log data sector", "<", [
    ("signature", "4s"), ("sequence_high", "I"), ("data", "4084s"), ("sequence_low", "I")])

DESCRIPTOR_SIZE = 32


def _descriptor_sectors(count: int) -> int:
    return -(-(ENTRY_HEADER.size + DESCRIPTOR_SIZE * count) // SECTOR)


# -- reading -----------------------------------------------------------------------------

@dataclass
class _Entry:
    sector: int  # where it starts, in log sectors
    sectors: int
    sequence: int
    tail: int  # in log sectors
    flushed_file_offset: int
    last_file_offset: int
    #: ("data", file offset, 4 KiB) or ("zero", file offset, length), in order.
    operations: list[tuple[str, int, bytes | int]]


@dataclass
class Replay:
    """The effect of the active log sequence: what it writes, zeroes and extends."""

    sectors: dict[int, bytes] = field(default_factory=dict)
    zeros: list[tuple[int, int]] = field(default_factory=list)
    flushed_file_offset: int = 0
    last_file_offset: int = 0
    entries: int = 0
    head_sequence: int = 0

    def apply(self, operation: tuple[str, int, bytes | int]) -> None:
        kind, offset, value = operation
        if kind == "data":
            self.sectors[offset] = value  # type: ignore[assignment]
        else:
            end = offset + value  # type: ignore[operator]
            for key in [k for k in self.sectors if offset <= k < end]:
                del self.sectors[key]
            self.zeros.append((offset, end))


def _entry_bytes(log: bytes, sector: int, sectors: int) -> bytes:
    """``sectors`` sectors of the circular log starting at ``sector``."""
    start = sector * SECTOR
    end = start + sectors * SECTOR
    if end <= len(log):
        return log[start:end]
    return log[start:] + log[:end - len(log)]


def _parse_entry(log: bytes, sector: int, log_guid: uuidlib.UUID) -> _Entry | None:
    """The valid entry starting at ``sector``, or None."""
    h = ENTRY_HEADER.unpack(log, sector * SECTOR)
    length, count = h["entry_length"], h["descriptor_count"]
    if (h["signature"] != ENTRY_SIGNATURE or guid(h["log_guid"]) != log_guid
            or not length or length % SECTOR or length > len(log)
            or h["tail"] % SECTOR or h["tail"] >= len(log)
            or h["last_file_offset"] > MAX_FILE_OFFSET):
        return None
    sectors = length // SECTOR
    data_sector = _descriptor_sectors(count)
    if data_sector > sectors:
        return None
    body = _entry_bytes(log, sector, sectors)
    if not checksum_ok(body):
        return None
    sequence = h["sequence"]
    operations: list[tuple[str, int, bytes | int]] = []
    for i in range(count):
        at = ENTRY_HEADER.size + i * DESCRIPTOR_SIZE
        kind = body[at:at + 4]
        if kind == DATA_DESCRIPTOR:
            d = DATA_DESC.unpack(body, at)
            if data_sector >= sectors:
                return None
            s = DATA_SECTOR.unpack(body, data_sector * SECTOR)
            if (s["signature"] != DATA_SECTOR_SIGNATURE or s["sequence_high"] != sequence >> 32
                    or s["sequence_low"] != sequence & 0xFFFFFFFF):
                return None
            content = (d["leading"].to_bytes(8, "little") + s["data"]
                       + d["trailing"].to_bytes(4, "little"))
            operations.append(("data", d["file_offset"], content))
            data_sector += 1
            end = d["file_offset"] + SECTOR
        elif kind == ZERO_DESCRIPTOR:
            d = ZERO_DESC.unpack(body, at)
            if d["zero_length"] % SECTOR:
                return None
            operations.append(("zero", d["file_offset"], d["zero_length"]))
            end = d["file_offset"] + d["zero_length"]
        else:
            return None
        if d["sequence"] != sequence or d["file_offset"] % SECTOR or end > MAX_FILE_OFFSET:
            return None
    return _Entry(sector, sectors, sequence, h["tail"] // SECTOR,
                  h["flushed_file_offset"], h["last_file_offset"], operations)


def _active_sequence(entries: dict[int, _Entry], total: int, path: str) -> list[_Entry]:
    """The entries from the newest valid head's tail up to that head, oldest first."""
    budget = SEARCH_BUDGET
    for head in sorted(entries.values(), key=lambda e: e.sequence, reverse=True):
        chain: list[_Entry] = []
        at = head.tail
        while budget > 0:
            budget -= 1
            entry = entries.get(at)
            if entry is None or entry.sequence > head.sequence or (
                    chain and entry.sequence != chain[-1].sequence + 1):
                break
            chain.append(entry)
            if entry is head:
                return chain
            at = (at + entry.sectors) % total
        if budget <= 0:
            raise Corrupted("the VHDX log is too tangled to find its active sequence", path)
    return []


def find_replay(storage: Storage, header: Header, path: str) -> Replay | None:
    """What the log of ``header`` asks to replay; None when it holds nothing valid."""
    if not header.log_pending or not header.log_length:
        return None
    if header.log_length > MAX_LOG:
        raise NotSupported(f"the VHDX log of {header.log_length} bytes needs replaying but "
                           f"is longer than the {MAX_LOG} bytes this program reads", path)
    if header.log_offset + header.log_length > storage.size():
        raise Corrupted(f"the file is truncated: the VHDX log ({header.log_length} bytes at "
                        f"offset {header.log_offset}) lies beyond its end", path)
    log = storage.read_exact(header.log_offset, header.log_length, "the VHDX log")
    total = len(log) // SECTOR
    entries = {}
    for sector in range(total):
        if log[sector * SECTOR:sector * SECTOR + 4] == ENTRY_SIGNATURE:
            parsed = _parse_entry(log, sector, header.log_guid)
            if parsed is not None:
                entries[sector] = parsed
    chain = _active_sequence(entries, total, path)
    if not chain:
        return None
    head = chain[-1]
    replay = Replay(flushed_file_offset=head.flushed_file_offset,
                    last_file_offset=head.last_file_offset, entries=len(chain),
                    head_sequence=head.sequence)
    for entry in chain:
        for operation in entry.operations:
            replay.apply(operation)
    if storage.size() < replay.flushed_file_offset:
        raise Corrupted(f"the file is truncated: its log says it held at least "
                        f"{replay.flushed_file_offset} bytes, but it has {storage.size()}",
                        path)
    return replay


# -- a storage that sees the log applied --------------------------------------------------

class PatchedStorage(Storage):
    """A storage whose reads see a pending log replay applied (nothing is written).

    With no replay pending it passes everything through to the file it wraps.
    :meth:`apply_replay` writes the replay into the file once it is writable.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.path = inner.path
        self.writable = inner.writable
        self.provider = inner.provider
        self.replay: Replay | None = None
        self._keys: list[int] = []

    def set_replay(self, replay: Replay | None) -> None:
        self.replay = replay
        self._keys = sorted(replay.sectors) if replay else []

    def apply_replay(self) -> None:
        """Write the pending replay into the file, extend it, flush; forget the replay."""
        replay = self.replay
        if replay is None:
            return
        inner = self.inner
        for start, end in replay.zeros:
            stop = min(end, inner.size())
            if stop > start:
                inner.punch_hole(start, stop - start)
        for offset in self._keys:
            inner.write_at(offset, replay.sectors[offset])
        if inner.size() < replay.last_file_offset:
            inner.set_size(replay.last_file_offset)
        inner.flush()
        self.set_replay(None)

    def _readinto(self, offset: int, buf: memoryview) -> int:
        got = self.inner.readinto_at(offset, buf)
        replay = self.replay
        if replay is None:
            return got
        end = offset + len(buf)
        limit = max(0, min(end, self._size()) - offset)
        if got < limit:
            fill_zero(buf, got, limit)  # the replay extends the file with zeros
            got = limit
        for start, stop in replay.zeros:
            a, b = max(start, offset), min(stop, offset + got)
            if a < b:
                fill_zero(buf, a - offset, b - offset)
        first = bisect.bisect_left(self._keys, offset - SECTOR + 1)
        for key in self._keys[first:]:
            if key >= offset + got:
                break
            data = replay.sectors[key]
            a, b = max(key, offset), min(key + SECTOR, offset + got)
            buf[a - offset:b - offset] = data[a - key:b - key]
        return got

    def _write(self, offset: int, data: memoryview) -> None:
        self.inner.write_at(offset, data)

    def _size(self) -> int:
        size = self.inner.size()
        return max(size, self.replay.last_file_offset) if self.replay else size

    def _set_size(self, size: int) -> None:
        self.inner.set_size(size)

    def flush(self) -> None:
        self.inner.flush()

    def allocated_size(self) -> int:
        return self.inner.allocated_size()

    def punch_hole(self, offset: int, length: int) -> None:
        self.inner.punch_hole(offset, length)

    def allocate(self, offset: int, length: int) -> None:
        self.inner.allocate(offset, length)

    def data_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        if self.replay is not None:  # patched sectors may lie in holes
            return super().data_ranges(offset, length)
        return self.inner.data_ranges(offset, length)

    def reopen(self, writable: bool, shareable: bool = False) -> None:
        self.inner.reopen(writable, shareable)
        self.writable = self.inner.writable

    def close(self) -> None:
        self.inner.close()


# -- writing -------------------------------------------------------------------------------

class LogWriter:
    """Writes metadata updates through the log of one read/write session.

    Every entry's tail is the entry itself: an entry is applied and flushed before
    the next one is written, so older entries are never needed again.  Entries are
    at most a quarter of the log, which keeps a new entry from overwriting the
    previous one when the buffer wraps; an update too large for one entry (none
    this backend makes) is split into several, each applied before the next.
    """

    def __init__(self, storage: Storage, header: Header) -> None:
        self.storage = storage
        self.offset = header.log_offset
        self.length = header.log_length
        self.log_guid = header.log_guid
        self.position = 0
        self.sequence = 1
        limit = max(2, self.length // 4 // SECTOR)
        per_entry = limit - 1
        while per_entry > 1 and _descriptor_sectors(per_entry) + per_entry > limit:
            per_entry -= 1
        self.per_entry = per_entry

    def commit(self, patches: list[tuple[int, bytes]], atomic: bool = False) -> None:
        """Make the byte patches ``(file offset, bytes)`` durable through the log.

        ``atomic`` puts them in one entry, so that a crash applies all or none.
        """
        sectors: dict[int, bytearray] = {}
        for offset, data in patches:
            pos = offset
            while pos < offset + len(data):
                base = align_down(pos, SECTOR)
                sector = sectors.get(base)
                if sector is None:
                    sector = bytearray(self.storage.read_at(base, SECTOR).ljust(SECTOR, b"\0"))
                    sectors[base] = sector
                n = min(base + SECTOR, offset + len(data)) - pos
                sector[pos - base:pos - base + n] = data[pos - offset:pos - offset + n]
                pos += n
        items = sorted((k, bytes(v)) for k, v in sectors.items())
        if atomic and len(items) > self.per_entry:
            raise NotSupported(f"an update of {len(items)} sectors does not fit in one entry "
                               f"of the {self.length}-byte VHDX log", self.storage.path)
        for i in range(0, len(items), self.per_entry):
            self._write_entry(items[i:i + self.per_entry])

    def _write_entry(self, items: list[tuple[int, bytes]]) -> None:
        sequence = self.sequence
        size = self.storage.size()
        desc_sectors = _descriptor_sectors(len(items))
        length = (desc_sectors + len(items)) * SECTOR
        if self.position + length > self.length:
            self.position = 0
        head = ENTRY_HEADER.pack(dict(
            signature=ENTRY_SIGNATURE, checksum=0, entry_length=length, tail=self.position,
            sequence=sequence, descriptor_count=len(items), reserved=0,
            log_guid=self.log_guid.bytes_le, flushed_file_offset=align_down(size, MiB),
            last_file_offset=align_up(size, MiB)))
        descriptors = b"".join(DATA_DESC.pack(dict(
            signature=DATA_DESCRIPTOR, trailing=int.from_bytes(data[-4:], "little"),
            leading=int.from_bytes(data[:8], "little"), file_offset=offset,
            sequence=sequence)) for offset, data in items)
        data_sectors = b"".join(DATA_SECTOR.pack(dict(
            signature=DATA_SECTOR_SIGNATURE, sequence_high=sequence >> 32, data=data[8:-4],
            sequence_low=sequence & 0xFFFFFFFF)) for _, data in items)
        entry = with_checksum((head + descriptors).ljust(desc_sectors * SECTOR, b"\0")
                              + data_sectors)
        self.storage.write_at(self.offset + self.position, entry)
        self.storage.flush()
        for offset, data in _merge_runs(items):
            self.storage.write_at(offset, data)
        self.storage.flush()
        self.position += length
        self.sequence += 1


def _merge_runs(items: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Adjacent sectors joined, so that applying an entry takes one write per run."""
    runs: list[tuple[int, list[bytes]]] = []
    for offset, data in items:
        if runs and runs[-1][0] + SECTOR * len(runs[-1][1]) == offset:
            runs[-1][1].append(data)
        else:
            runs.append((offset, [data]))
    return [(offset, b"".join(parts)) for offset, parts in runs]
