"""Builds DMG (UDIF) images for the tests, from the layout in formats/dmg.md.

An image is a list of partitions, each a list of :class:`Piece` (a chunk: its type
and the plain bytes its sectors read as).  :func:`build` lays the payloads out as a
data fork, writes one mish block table per partition (with "+beg"/"+end" comment
entries and a terminator), stores the tables in an XML property list and/or a
binary resource fork, appends the koly trailer, and returns the disk's plain
content.  Hooks let hostile tests damage exactly one field.
"""

from __future__ import annotations

import bz2
import lzma
import plistlib
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SECTOR = 512

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

ZERO_KINDS = (ZERO_FILL, IGNORE)

KOLY_FORMAT = ">4sIIIQQQQQII16sII128sQQ120sII128sIQ12s"
assert struct.calcsize(KOLY_FORMAT) == 512
MISH_FORMAT = ">4sIQQQII24sII128sI"
assert struct.calcsize(MISH_FORMAT) == 204
ENTRY_FORMAT = ">IIQQQQ"

PARTITION_NAMES = ("Driver Descriptor Map (DDM : 0)", "Apple (Apple_partition_map : 1)",
                   "disk image (Apple_HFS : 2)", "(Apple_Free : 3)")


@dataclass
class Piece:
    """One chunk: its type, the bytes it reads as, and optionally its stored bytes."""

    kind: int
    content: bytes
    payload: bytes | None = None

    @property
    def sectors(self) -> int:
        return len(self.content) // SECTOR


def zeros(sectors: int, kind: int = ZERO_FILL) -> Piece:
    return Piece(kind, bytes(sectors * SECTOR))


def text(sectors: int, seed: int) -> bytes:
    """Compressible, distinct content (words from a small vocabulary)."""
    rng = random.Random(seed)
    words = [b"disk", b"image", b"sector", b"apple", b"chunk", b"zlib", b"%d" % seed,
             b"\n", b"mish", b"koly"]
    out = bytearray()
    while len(out) < sectors * SECTOR:
        out += rng.choice(words) + b" "
    return bytes(out[:sectors * SECTOR])


def noise(sectors: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(sectors * SECTOR)


def encode(kind: int, content: bytes) -> bytes:
    """The payload a chunk of ``kind`` stores for ``content``."""
    if kind == RAW:
        return content
    if kind == ZLIB:
        return zlib.compress(content)
    if kind == BZIP2:
        return bz2.compress(content)
    if kind == LZMA:
        return lzma.compress(content)
    if kind == ADC:
        return adc_encode(content)
    if kind == LZFSE:
        import lzfse
        return lzfse.compress(content)
    raise ValueError(f"no payload for chunk type {kind:#x}")


def adc_encode(content: bytes) -> bytes:
    """A small greedy ADC encoder using all three operations."""
    out = bytearray()
    literals = bytearray()
    last: dict[bytes, int] = {}

    def flush() -> None:
        while literals:
            run = literals[:128]
            out.append(0x80 | (len(run) - 1))
            out.extend(run)
            del literals[:128]

    i = 0
    while i < len(content):
        best, distance = 0, 0
        for candidate in ([i - 1] if i else []) + [last.get(content[i:i + 3], -1)]:
            if candidate < 0 or not 1 <= i - candidate <= 65536:
                continue
            n = 0
            while n < 67 and i + n < len(content) and content[candidate + n] == content[i + n]:
                n += 1
            if n > best:
                best, distance = n, i - candidate
        short = 3 <= best <= 18 and distance <= 1024
        if short or best >= 4:
            flush()
            if short:
                out += bytes([((best - 3) << 2) | ((distance - 1) >> 8), (distance - 1) & 0xFF])
            else:
                out += bytes([0x40 | (best - 4), (distance - 1) >> 8, (distance - 1) & 0xFF])
            for k in range(i, i + best):
                last[content[k:k + 3]] = k
            i += best
        else:
            literals.append(content[i])
            last[content[i:i + 3]] = i
            i += 1
    flush()
    return bytes(out)


def entry(kind: int, first: int, count: int, offset: int, length: int,
          comment: int = 0) -> bytes:
    return struct.pack(ENTRY_FORMAT, kind, comment, first, count, offset, length)


def mish(first_sector: int, sector_count: int, data_offset: int, entries: list[bytes],
         chunk_count: int | None = None, magic: bytes = b"mish", version: int = 1) -> bytes:
    largest = 0x208
    header = struct.pack(MISH_FORMAT, magic, version, first_sector, sector_count, data_offset,
                         largest, 0, bytes(24), 2, 32, bytes(128),
                         len(entries) if chunk_count is None else chunk_count)
    return header + b"".join(entries)


def xml_plist(tables: list[bytes]) -> bytes:
    blkx = [{"Attributes": "0x0050", "CFName": PARTITION_NAMES[i % len(PARTITION_NAMES)],
             "Data": table, "ID": str(i - 1), "Name": PARTITION_NAMES[i % len(PARTITION_NAMES)]}
            for i, table in enumerate(tables)]
    return plistlib.dumps({"resource-fork": {"blkx": blkx,
                                             "plst": [{"ID": "0", "Name": "",
                                                       "Attributes": "0x0050",
                                                       "Data": bytes(64)}]}})


def resource_fork(tables: list[bytes]) -> bytes:
    """A classic resource fork: header, data area (with one non-table resource), map."""
    resources = [b"plst" + bytes(60), *tables]
    data = b"".join(struct.pack(">I", len(r)) + r for r in resources)
    data_offset = 256
    resource_map = bytes(30)
    header = struct.pack(">IIII", data_offset, data_offset + len(data), len(data),
                         len(resource_map))
    return header.ljust(data_offset, b"\0") + data + resource_map


def koly(**fields: object) -> bytes:
    values = dict(magic=b"koly", version=4, header_size=512, flags=1, running=0,
                  data_fork_offset=0, data_fork_length=0, rsrc_offset=0, rsrc_length=0,
                  segment_number=1, segment_count=1, segment_id=bytes(range(16)),
                  data_checksum_type=2, data_checksum_size=32, data_checksum=bytes(128),
                  xml_offset=0, xml_length=0, reserved1=bytes(120),
                  master_checksum_type=2, master_checksum_size=32,
                  master_checksum=bytes(128), image_variant=1, sector_count=0,
                  reserved2=bytes(12))
    unknown = set(fields) - set(values)
    if unknown:
        raise KeyError(unknown)
    values.update(fields)
    return struct.pack(KOLY_FORMAT, *values.values())


EntryHook = Callable[[int, list[list[int]]], None]


def build(path: str | Path, partitions: list[list[Piece]], *, metadata: str = "xml",
          prefix: bytes = b"", table_data_offsets: bool = False, extra_sectors: int = 0,
          koly_fields: dict | None = None, tamper_entries: EntryHook | None = None,
          tamper_tables: Callable[[list[bytes]], None] | None = None,
          tamper_plist: Callable[[bytes], bytes] | None = None) -> bytes:
    """Write a DMG at ``path``; return the plain content of its virtual disk.

    ``metadata``: "xml", "rsrc" or "both".  ``table_data_offsets``: give each table
    a data offset (its first payload) and make its chunk offsets relative to it.
    ``tamper_entries(partition, entries)`` edits entries ``[type, comment, first,
    count, offset, length]`` before they are packed.
    """
    fork = bytearray()
    tables: list[bytes] = []
    content = bytearray()
    first_sector = 0
    for number, pieces in enumerate(partitions):
        base = len(fork) if table_data_offsets else 0
        rows = [[COMMENT, int.from_bytes(b"+beg", "big"), 0, 0, len(fork) - base, 0]]
        sector = 0
        for piece in pieces:
            payload = b"" if piece.kind in ZERO_KINDS else (
                piece.payload if piece.payload is not None else encode(piece.kind, piece.content))
            rows.append([piece.kind, 0, sector, piece.sectors, len(fork) - base, len(payload)])
            fork += payload
            sector += piece.sectors
            content += piece.content
        rows.append([COMMENT, int.from_bytes(b"+end", "big"), sector, 0, len(fork) - base, 0])
        rows.append([TERMINATOR, 0, sector, 0, len(fork) - base, 0])
        if tamper_entries:
            tamper_entries(number, rows)
        tables.append(mish(first_sector, sector, base,
                           [entry(k, f, c, o, n, comment) for k, comment, f, c, o, n in rows]))
        first_sector += sector
    if tamper_tables:
        tamper_tables(tables)
    content += bytes(extra_sectors * SECTOR)

    out = bytearray(prefix) + fork
    fields: dict = dict(data_fork_offset=len(prefix), data_fork_length=len(fork),
                        sector_count=first_sector + extra_sectors)
    if metadata in ("xml", "both"):
        plist = xml_plist(tables)
        if tamper_plist:
            plist = tamper_plist(plist)
        fields.update(xml_offset=len(out), xml_length=len(plist))
        out += plist
    if metadata in ("rsrc", "both"):
        rsrc = resource_fork(tables)
        fields.update(rsrc_offset=len(out), rsrc_length=len(rsrc))
        out += rsrc
    fields.update(koly_fields or {})
    out += koly(**fields)
    Path(path).write_bytes(bytes(out))
    return bytes(content)


def every_kind(seed: int = 0, lzfse: bool = False) -> list[list[Piece]]:
    """Three partitions using every chunk type (LZFSE only when asked)."""
    pieces = [
        [Piece(RAW, noise(2, seed)), zeros(3)],
        [Piece(ZLIB, text(16, seed + 1)), zeros(5, IGNORE), Piece(BZIP2, text(8, seed + 2)),
         Piece(RAW, noise(4, seed + 3)), Piece(RAW, noise(3, seed + 4))],
        [Piece(LZMA, text(12, seed + 5)), Piece(ADC, text(6, seed + 6)), zeros(7),
         Piece(ZLIB, noise(2, seed + 7))],
    ]
    if lzfse:
        pieces[2].append(Piece(LZFSE, text(9, seed + 8)))
    return pieces
