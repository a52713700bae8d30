"""VHD on-disk records: the footer, the dynamic disk header, parent locator entries.

Everything is big-endian.  Both checksummed records use the same sum: the one's
complement of the 32-bit sum of all their bytes, computed with the checksum field
set to zero.  Time stamps count seconds from 2000-01-01 00:00:00 UTC.

UUIDs (the footer's unique id and the dynamic header's parent unique id) are 16 raw
bytes whose field order the specification leaves open.  We read and write them in
the little-endian GUID layout (``uuid.UUID(bytes_le=...)``, as VDI does): that is
how VirtualBox (which copies its in-memory UUID) and Hyper-V/Windows (GUIDs) store
and display them, so the UUID we show is the one ``VBoxManage showmediuminfo`` and
``Get-VHD`` show.  qemu-img writes a random RFC 4122 UUID in big-endian order and
never reads it back; seen through the GUID layout it is just another UUID.  Parent
links only ever compare the 16 raw bytes, which this mapping preserves both ways.
"""

from __future__ import annotations

import time
import uuid as uuidlib

from ...io import Storage
from ...layout import Layout

SECTOR = 512

FOOTER_SIZE = 512
FOOTER_COOKIE = b"conectix"
HEADER_SIZE = 1024
HEADER_COOKIE = b"cxsparse"

#: Footer "features": bit 1 is reserved and always set; bit 0 marks a temporary disk.
FEATURE_TEMPORARY = 0x1
FEATURE_RESERVED = 0x2

FORMAT_VERSION = 0x00010000
HEADER_VERSION = 0x00010000

#: Footer "data offset" of a fixed disk (no dynamic header).
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF

DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING = 2, 3, 4
DISK_TYPE_NAMES = {0: "none", 1: "reserved (deprecated)", DISK_FIXED: "fixed",
                   DISK_DYNAMIC: "dynamic", DISK_DIFFERENCING: "differencing",
                   5: "reserved (deprecated)", 6: "reserved (deprecated)"}

#: Block allocation table entry of a block with no storage.
BAT_FREE = 0xFFFFFFFF

#: Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
VHD_EPOCH = 946684800

LOCATOR_COUNT = 8

FOOTER = Layout("VHD footer", ">", [
    ("cookie", "8s"), ("features", "I"), ("format_version", "I"), ("data_offset", "Q"),
    ("timestamp", "I"), ("creator_app", "4s"), ("creator_version", "I"),
    ("creator_os", "4s"), ("original_size", "Q"), ("current_size", "Q"),
    ("cylinders", "H"), ("heads", "B"), ("sectors", "B"), ("disk_type", "I"),
    ("checksum", "I"), ("uuid", "16s"), ("saved_state", "B"), ("reserved", "427s")])

LOCATOR = Layout("VHD parent locator entry", ">", [
    ("code", "I"), ("data_space", "I"), ("data_length", "I"), ("reserved", "I"),
    ("data_offset", "Q")])

HEADER = Layout("VHD dynamic disk header", ">", [
    ("cookie", "8s"), ("data_offset", "Q"), ("table_offset", "Q"), ("header_version", "I"),
    ("max_table_entries", "I"), ("block_size", "I"), ("checksum", "I"),
    ("parent_uuid", "16s"), ("parent_timestamp", "I"), ("reserved1", "I"),
    ("parent_name", "512s"), ("locators", f"{LOCATOR.size * LOCATOR_COUNT}s"),
    ("reserved2", "256s")])

assert FOOTER.size == FOOTER_SIZE and HEADER.size == HEADER_SIZE and LOCATOR.size == 24

FOOTER_CHECKSUM_AT = FOOTER.offset_of("checksum")
HEADER_CHECKSUM_AT = HEADER.offset_of("checksum")
PARENT_NAME_SIZE = 512


def checksum(raw: bytes | bytearray, at: int) -> int:
    """The VHD checksum of ``raw`` whose checksum field (4 bytes) starts at ``at``."""
    total = sum(raw) - sum(raw[at:at + 4])
    return ~total & 0xFFFFFFFF


def pack(layout: Layout, fields: dict, at: int) -> bytes:
    """``fields`` as bytes with a freshly computed checksum (stored back in ``fields``)."""
    fields["checksum"] = 0
    raw = layout.pack(fields)
    fields["checksum"] = checksum(raw, at)
    return layout.pack(fields)


def pack_footer(fields: dict) -> bytes:
    return pack(FOOTER, fields, FOOTER_CHECKSUM_AT)


def pack_header(fields: dict) -> bytes:
    return pack(HEADER, fields, HEADER_CHECKSUM_AT)


def unpack_locators(raw: bytes) -> list[dict]:
    """The eight locator entries of a header's ``locators`` field."""
    return [LOCATOR.unpack(raw, i * LOCATOR.size) for i in range(LOCATOR_COUNT)]


def pack_locators(entries: list[dict]) -> bytes:
    return b"".join(LOCATOR.pack(entry) for entry in entries)


def empty_locator() -> dict:
    return dict(code=0, data_space=0, data_length=0, reserved=0, data_offset=0)


def uuid_from_raw(raw: bytes) -> uuidlib.UUID:
    return uuidlib.UUID(bytes_le=bytes(raw))


def uuid_to_raw(value: uuidlib.UUID) -> bytes:
    return value.bytes_le


def to_vhd_time(unix_seconds: float | None) -> int:
    """Seconds since 2000-01-01 UTC, clamped to the field's range (0 when unknown)."""
    if unix_seconds is None:
        return 0
    return min(max(int(unix_seconds) - VHD_EPOCH, 0), 0xFFFFFFFF)


def from_vhd_time(stamp: int) -> float:
    return float(stamp + VHD_EPOCH)


def now() -> int:
    return to_vhd_time(time.time())


def format_time(stamp: int) -> str:
    """A VHD time stamp as ``YYYY-MM-DD HH:MM:SS UTC`` (and the raw count)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(from_vhd_time(stamp)))
    return f"{when} UTC ({stamp})"


def four_cc(raw: bytes) -> str:
    """A four-character code such as a creator application, printable."""
    return repr(raw.decode("latin-1"))


def new_footer(*, disk_type: int, size: int, cylinders: int, heads: int, sectors: int,
               uuid: uuidlib.UUID, creator_app: bytes, creator_version: int,
               creator_os: bytes, data_offset: int) -> dict:
    """Footer fields of a new image (checksum filled in by :func:`pack_footer`)."""
    return dict(
        cookie=FOOTER_COOKIE, features=FEATURE_RESERVED, format_version=FORMAT_VERSION,
        data_offset=data_offset, timestamp=now(), creator_app=creator_app,
        creator_version=creator_version, creator_os=creator_os, original_size=size,
        current_size=size, cylinders=cylinders, heads=heads, sectors=sectors,
        disk_type=disk_type, checksum=0, uuid=uuid_to_raw(uuid), saved_state=0,
        reserved=bytes(427))


class FoundFooter:
    """A footer found in the file: where, its raw bytes, its fields, whether it sums."""

    def __init__(self, offset: int, raw: bytes) -> None:
        self.offset = offset
        self.raw = raw.ljust(FOOTER_SIZE, b"\0")  # a 511-byte footer lacks one zero
        self.fields = FOOTER.unpack(self.raw)
        self.valid = checksum(self.raw, FOOTER_CHECKSUM_AT) == self.fields["checksum"]


def find_footers(storage: Storage) -> tuple[FoundFooter | None, FoundFooter | None]:
    """The footer at the end of the file and its copy at offset 0 (either may be None)."""
    size = storage.size()
    tail = None
    for length in (FOOTER_SIZE, FOOTER_SIZE - 1):  # very old images: 511-byte footers
        if size >= length:
            raw = storage.read_at(size - length, length)
            if raw.startswith(FOOTER_COOKIE):
                tail = FoundFooter(size - length, raw)
                break
    copy = None
    if size >= FOOTER_SIZE:
        raw = storage.read_at(0, FOOTER_SIZE)
        if raw.startswith(FOOTER_COOKIE):
            copy = FoundFooter(0, raw)
            if copy.fields["disk_type"] not in (DISK_DYNAMIC, DISK_DIFFERENCING) or (
                    tail is not None and tail.offset == 0):
                copy = None  # a fixed disk has no copy: sector 0 is guest data
    return tail, copy
