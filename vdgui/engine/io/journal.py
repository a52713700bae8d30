"""Crash-safe groups of writes: a redo journal beside the image file.

``with storage.transaction(): ...`` collects the writes (and size changes) made
inside the block.  On leaving it they are first written to ``<file>.vdjournal``
with a checksum and made durable, then applied to the file, which is made durable
in turn, and the journal is deleted.  A crash before the journal is complete leaves
the file untouched (the incomplete journal is ignored); a crash after it leaves a
complete journal that the next read/write open applies again (applying twice is
harmless).  A read-only open of a file with a pending journal shows the file as it
will be once the journal is applied, without writing anything.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass

log = logging.getLogger(__name__)

SUFFIX = ".vdjournal"
MAGIC = b"VDJRNL01"
END = b"VDJEND01"
#: A transaction is for metadata; refuse to journal more than this.
MAX_JOURNAL_BYTES = 256 << 20

_HEADER = struct.Struct("<8sI")          # magic, record count
_RECORD = struct.Struct("<BQQ")          # kind, offset, length
_TRAILER = struct.Struct("<I8s")         # crc32, end magic
WRITE, SET_SIZE = 1, 2


def journal_path(path: str) -> str:
    return path + SUFFIX


@dataclass
class Record:
    kind: int
    offset: int   # for SET_SIZE: the new size
    data: bytes = b""


def encode(records: list[Record]) -> bytes:
    parts = [_HEADER.pack(MAGIC, len(records))]
    for record in records:
        parts.append(_RECORD.pack(record.kind, record.offset, len(record.data)))
        parts.append(record.data)
    body = b"".join(parts)
    return body + _TRAILER.pack(zlib.crc32(body), END)


def decode(raw: bytes) -> list[Record] | None:
    """The records of a complete journal, or None when it is cut short or damaged."""
    if len(raw) < _HEADER.size + _TRAILER.size:
        return None
    body, trailer = raw[:-_TRAILER.size], raw[-_TRAILER.size:]
    crc, end = _TRAILER.unpack(trailer)
    if end != END or zlib.crc32(body) != crc:
        return None
    magic, count = _HEADER.unpack_from(body)
    if magic != MAGIC:
        return None
    records = []
    pos = _HEADER.size
    for _ in range(count):
        if pos + _RECORD.size > len(body):
            return None
        kind, offset, length = _RECORD.unpack_from(body, pos)
        pos += _RECORD.size
        if kind not in (WRITE, SET_SIZE) or pos + length > len(body):
            return None
        records.append(Record(kind, offset, bytes(body[pos:pos + length])))
        pos += length
    return records if pos == len(body) else None


def overlay(records: list[Record], offset: int, data: bytearray, file_size: int) -> None:
    """Patch ``data`` (read from ``offset`` of the file) with the journal's writes."""
    end = offset + len(data)
    for record in records:
        if record.kind != WRITE:
            continue
        lo = max(offset, record.offset)
        hi = min(end, record.offset + len(record.data))
        if lo < hi:
            data[lo - offset:hi - offset] = record.data[lo - record.offset:hi - record.offset]


def final_size(records: list[Record], size: int) -> int:
    """The file's size once the records are applied."""
    for record in records:
        if record.kind == SET_SIZE:
            size = record.offset
        else:
            size = max(size, record.offset + len(record.data))
    return size
