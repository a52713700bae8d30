"""VHDX file identifier, the two headers and the two region tables.

Layout of the first MiB (MS-VHDX section 2.1): the file type identifier at 0
(``vhdxfile`` and a UTF-16LE creator), header 1 at 64 KiB and header 2 at 128 KiB
(4 KiB each, CRC-32C protected, the valid one with the higher sequence number is
current), region table 1 at 192 KiB and its copy at 256 KiB (64 KiB each).  All
integers are little-endian and GUIDs use the Windows (mixed-endian) layout.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, replace

from ...errors import Corrupted, InvalidHeader, NotSupported
from ...io import Storage
from ...layout import Layout
from ...types import NIL_UUID
from .crc32c import crc32c

KiB = 1 << 10
MiB = 1 << 20

FILE_SIGNATURE = b"vhdxfile"
CREATOR_SIZE = 512
HEADER_SIGNATURE = b"head"
REGION_SIGNATURE = b"regi"

HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
REGION_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
MAX_REGIONS = 2047

#: Everything from here on (log, BAT, metadata, payload) is 1 MiB aligned.
HEADER_AREA = 1 * MiB
#: Nothing of an image lies beyond this file offset (256 TiB; the disk is at most 64).
MAX_FILE_OFFSET = 1 << 48

VERSION = 1
LOG_VERSION = 0

BAT_GUID = uuidlib.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuidlib.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
REGION_NAMES = {BAT_GUID: "BAT", METADATA_GUID: "metadata"}

REGION_REQUIRED = 0x1

HEADER = Layout("VHDX header", "<", [
    ("signature", "4s"), ("checksum", "I"), ("sequence", "Q"),
    ("file_write_guid", "16s"), ("data_write_guid", "16s"), ("log_guid", "16s"),
    ("log_version", "H"), ("version", "H"), ("log_length", "I"), ("log_offset", "Q")])

REGION_HEADER = Layout("VHDX region table header", "<", [
    ("signature", "4s"), ("checksum", "I"), ("entry_count", "I"), ("reserved", "I")])

REGION_ENTRY = Layout("VHDX region table entry", "<", [
    ("guid", "16s"), ("file_offset", "Q"), ("length", "I"), ("flags", "I")])

CHECKSUM_AT = 4  # the checksum field of headers, region tables and log entries


def guid(raw: bytes) -> uuidlib.UUID:
    """A GUID stored in the Windows layout (first three fields little-endian)."""
    return uuidlib.UUID(bytes_le=bytes(raw))


def with_checksum(raw: bytes | bytearray) -> bytes:
    """``raw`` with its CRC-32C (computed over ``raw`` with the field zeroed) filled in."""
    buf = bytearray(raw)
    buf[CHECKSUM_AT:CHECKSUM_AT + 4] = bytes(4)
    buf[CHECKSUM_AT:CHECKSUM_AT + 4] = crc32c(buf).to_bytes(4, "little")
    return bytes(buf)


def checksum_ok(raw: bytes) -> bool:
    stored = int.from_bytes(raw[CHECKSUM_AT:CHECKSUM_AT + 4], "little")
    return crc32c(raw[:CHECKSUM_AT] + bytes(4) + raw[CHECKSUM_AT + 4:]) == stored


# -- file type identifier --------------------------------------------------------------

def pack_identifier(creator: str) -> bytes:
    """The 64 KiB file type identifier block."""
    text = creator.encode("utf-16-le")[:CREATOR_SIZE - 2]
    return (FILE_SIGNATURE + text).ljust(HEADER_OFFSETS[0], b"\0")


def read_creator(storage: Storage) -> str:
    raw = storage.read_at(len(FILE_SIGNATURE), CREATOR_SIZE)
    text = raw[:len(raw) // 2 * 2].decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0]


def check_identifier(raw: bytes, path: str) -> None:
    if raw[:len(FILE_SIGNATURE)] != FILE_SIGNATURE:
        raise InvalidHeader("not a VHDX image (no 'vhdxfile' signature)", path,
                            status="VERR_VD_GEN_INVALID_HEADER")


# -- headers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """One of the two VHDX headers."""

    slot: int  # 0 or 1: where it was read from
    sequence: int
    file_write_guid: uuidlib.UUID
    data_write_guid: uuidlib.UUID
    log_guid: uuidlib.UUID
    log_version: int
    version: int
    log_length: int
    log_offset: int

    def pack(self) -> bytes:
        raw = HEADER.pack(dict(
            signature=HEADER_SIGNATURE, checksum=0, sequence=self.sequence,
            file_write_guid=self.file_write_guid.bytes_le,
            data_write_guid=self.data_write_guid.bytes_le, log_guid=self.log_guid.bytes_le,
            log_version=self.log_version, version=self.version,
            log_length=self.log_length, log_offset=self.log_offset))
        return with_checksum(raw.ljust(HEADER_SIZE, b"\0"))

    def successor(self, **changes: object) -> Header:
        """The next header: written to the other slot with the sequence number + 1."""
        return replace(self, slot=1 - self.slot, sequence=(self.sequence + 1) & (2**64 - 1),
                       **changes)

    @property
    def log_pending(self) -> bool:
        return self.log_guid != NIL_UUID


def parse_header(raw: bytes, slot: int) -> Header | None:
    """The header in ``raw``, or None when its signature or checksum is wrong."""
    if len(raw) != HEADER_SIZE or raw[:4] != HEADER_SIGNATURE or not checksum_ok(raw):
        return None
    h = HEADER.unpack(raw)
    return Header(slot=slot, sequence=h["sequence"],
                  file_write_guid=guid(h["file_write_guid"]),
                  data_write_guid=guid(h["data_write_guid"]), log_guid=guid(h["log_guid"]),
                  log_version=h["log_version"], version=h["version"],
                  log_length=h["log_length"], log_offset=h["log_offset"])


def read_headers(storage: Storage, path: str) -> tuple[Header, list[Header | None]]:
    """The current header and both slots as read (None where a slot is invalid)."""
    slots = [parse_header(storage.read_at(off, HEADER_SIZE), i)
             for i, off in enumerate(HEADER_OFFSETS)]
    valid = [h for h in slots if h is not None]
    if not valid:
        raise Corrupted("neither VHDX header is valid (bad signature or CRC-32C checksum)",
                        path)
    current = max(valid, key=lambda h: h.sequence)
    if current.version != VERSION:
        raise NotSupported(f"VHDX version {current.version} is not supported (only "
                           f"version {VERSION})", path)
    if current.log_version != LOG_VERSION:
        raise NotSupported(f"VHDX log version {current.log_version} is not supported", path)
    if current.log_offset % MiB or current.log_length % MiB:
        raise Corrupted(f"the VHDX log (offset {current.log_offset}, length "
                        f"{current.log_length}) is not aligned to 1 MiB", path)
    if current.log_length and not HEADER_AREA <= current.log_offset <= MAX_FILE_OFFSET:
        raise Corrupted(f"the VHDX log offset {current.log_offset} is outside the file's "
                        f"possible range", path)
    return current, slots


# -- region table ----------------------------------------------------------------------

@dataclass(frozen=True)
class Region:
    guid: uuidlib.UUID
    offset: int
    length: int
    required: bool

    @property
    def name(self) -> str:
        return REGION_NAMES.get(self.guid, str(self.guid))


def pack_region_table(regions: list[Region]) -> bytes:
    raw = REGION_HEADER.pack(dict(signature=REGION_SIGNATURE, checksum=0,
                                  entry_count=len(regions), reserved=0))
    for r in regions:
        raw += REGION_ENTRY.pack(dict(guid=r.guid.bytes_le, file_offset=r.offset,
                                      length=r.length,
                                      flags=REGION_REQUIRED if r.required else 0))
    return with_checksum(raw.ljust(REGION_TABLE_SIZE, b"\0"))


def parse_region_table(raw: bytes) -> list[Region] | str:
    """The regions in ``raw``, or a reason why the table is invalid."""
    if len(raw) != REGION_TABLE_SIZE:
        return "cut short by the end of the file"
    h = REGION_HEADER.unpack(raw)
    if h["signature"] != REGION_SIGNATURE:
        return "no 'regi' signature"
    if not checksum_ok(raw):
        return "CRC-32C checksum mismatch"
    if h["entry_count"] > MAX_REGIONS:
        return f"{h['entry_count']} entries (at most {MAX_REGIONS})"
    regions = []
    for i in range(h["entry_count"]):
        e = REGION_ENTRY.unpack(raw, REGION_HEADER.size + i * REGION_ENTRY.size)
        regions.append(Region(guid(e["guid"]), e["file_offset"], e["length"],
                              bool(e["flags"] & REGION_REQUIRED)))
    return regions


def regions_in_use(storage: Storage, path: str) -> list[Region]:
    """Every entry, unknown regions included, of the region table copy readers use."""
    for offset in REGION_OFFSETS:
        parsed = parse_region_table(storage.read_at(offset, REGION_TABLE_SIZE))
        if not isinstance(parsed, str):
            return parsed
    raise Corrupted("neither VHDX region table is usable", path)


def read_region_table(storage: Storage, path: str,
                      log: tuple[int, int]) -> tuple[dict[uuidlib.UUID, Region], list[str]]:
    """The known regions by GUID (from the first valid copy) and each copy's state."""
    states: list[str] = []
    chosen: list[Region] | None = None
    for i, off in enumerate(REGION_OFFSETS):
        parsed = parse_region_table(storage.read_at(off, REGION_TABLE_SIZE))
        if isinstance(parsed, str):
            states.append(f"invalid ({parsed})")
        else:
            states.append("valid" if chosen is None or parsed == chosen else
                          "valid but different from copy 1 (ignored)")
            chosen = chosen if chosen is not None else parsed
    if chosen is None:
        raise Corrupted(f"neither VHDX region table is usable: {states[0]}; {states[1]}",
                        path)
    regions: dict[uuidlib.UUID, Region] = {}
    for r in chosen:
        if r.guid in regions:
            raise Corrupted(f"the VHDX region table lists the {r.name} region twice", path)
        if r.guid not in REGION_NAMES:
            if r.required:
                raise NotSupported(f"the VHDX image needs an unknown region {r.guid} "
                                   f"that this program cannot interpret", path)
            continue
        if (r.offset % MiB or r.length % MiB or r.length == 0
                or not HEADER_AREA <= r.offset <= MAX_FILE_OFFSET):
            raise Corrupted(f"the VHDX {r.name} region (offset {r.offset}, length "
                            f"{r.length}) is not a 1 MiB aligned area after the headers",
                            path)
        regions[r.guid] = r
    for wanted in (BAT_GUID, METADATA_GUID):
        if wanted not in regions:
            raise Corrupted(f"the VHDX region table has no {REGION_NAMES[wanted]} region",
                            path)
    areas = sorted([(r.offset, r.offset + r.length, r.name) for r in regions.values()]
                   + ([(log[0], log[0] + log[1], "log")] if log[1] else []))
    for (_, end, name), (start, _, other) in zip(areas, areas[1:]):
        if start < end:
            raise Corrupted(f"the VHDX {name} and {other} areas overlap", path)
    return regions, states
