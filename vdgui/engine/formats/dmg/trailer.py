"""The UDIF "koly" trailer: the last 512 bytes of a DMG image, big-endian.

It locates the data fork (chunk payloads), the XML property list and the binary
resource fork, and gives the virtual disk's sector count.  :func:`read_trailer`
validates every offset against the file before anything else is read.
"""

from __future__ import annotations

from typing import Any

from ...errors import Corrupted, InvalidHeader, NotSupported
from ...io import Storage
from ...layout import Layout
from ...types import SECTOR

MAGIC = b"koly"
VERSION = 4
SIZE = 512

#: Virtual disks larger than this (8 EiB) are refused: byte offsets must fit in int64.
MAX_SECTORS = 1 << 54

INVALID_HEADER = "VERR_VD_DMG_INVALID_HEADER"

KOLY = Layout("UDIF trailer", ">", [
    ("magic", "4s"), ("version", "I"), ("header_size", "I"), ("flags", "I"),
    ("running_data_fork_offset", "Q"), ("data_fork_offset", "Q"), ("data_fork_length", "Q"),
    ("rsrc_fork_offset", "Q"), ("rsrc_fork_length", "Q"),
    ("segment_number", "I"), ("segment_count", "I"), ("segment_id", "16s"),
    ("data_checksum_type", "I"), ("data_checksum_size", "I"), ("data_checksum", "128s"),
    ("xml_offset", "Q"), ("xml_length", "Q"), ("reserved1", "120s"),
    ("master_checksum_type", "I"), ("master_checksum_size", "I"),
    ("master_checksum", "128s"),
    ("image_variant", "I"), ("sector_count", "Q"), ("reserved2", "12s")])

assert KOLY.size == SIZE

FLAG_NAMES = {0x1: "flattened", 0x4: "internet-enabled"}
VARIANT_NAMES = {1: "device image", 2: "partition image"}
CHECKSUM_NAMES = {0: "none", 2: "CRC-32"}


def read_trailer(storage: Storage, path: str) -> tuple[dict[str, Any], int]:
    """The trailer's fields and its file offset.

    Raises :class:`InvalidHeader` when the file has no koly trailer (not a DMG),
    and :class:`NotSupported` / :class:`Corrupted` when it has one that cannot be
    used, so that probing claims the file and opening explains the problem.
    """
    size = storage.size()
    if size < SIZE:
        raise InvalidHeader("not a DMG image (the file is shorter than a UDIF trailer)",
                            path, status=INVALID_HEADER)
    offset = size - SIZE
    fields = KOLY.unpack(storage.read_exact(offset, SIZE, "the UDIF trailer"), 0, path)
    if fields["magic"] != MAGIC:
        raise InvalidHeader("not a DMG image (no 'koly' UDIF trailer in its last 512 bytes)",
                            path, status=INVALID_HEADER)
    if fields["version"] != VERSION or fields["header_size"] != SIZE:
        raise NotSupported(f"UDIF trailer version {fields['version']} with a header of "
                           f"{fields['header_size']} bytes is not supported (expected "
                           f"version {VERSION}, {SIZE} bytes)", path, status=INVALID_HEADER)
    if fields["segment_count"] > 1:
        raise NotSupported(f"segmented DMG images are not supported (this is segment "
                           f"{fields['segment_number']} of {fields['segment_count']}); "
                           f"join the segments first", path)
    _check_within(path, offset, "data fork", fields["data_fork_offset"],
                  fields["data_fork_length"], always=True)
    _check_within(path, offset, "resource fork", fields["rsrc_fork_offset"],
                  fields["rsrc_fork_length"])
    _check_within(path, offset, "XML property list", fields["xml_offset"],
                  fields["xml_length"])
    if not fields["xml_length"] and not fields["rsrc_fork_length"]:
        raise Corrupted("the UDIF trailer points to neither a property list nor a "
                        "resource fork, so nothing describes the disk", path)
    sectors = fields["sector_count"]
    if not 0 < sectors <= MAX_SECTORS:
        raise Corrupted(f"the UDIF trailer gives an impossible disk size of {sectors} "
                        f"sectors", path)
    return fields, offset


def _check_within(path: str, limit: int, what: str, offset: int, length: int,
                  always: bool = False) -> None:
    """``[offset, offset + length)`` must lie before the trailer (when present)."""
    if (length or always) and (offset > limit or length > limit - offset):
        raise Corrupted(f"the {what} ({length} bytes at offset {offset}) does not lie "
                        f"within the file before its trailer (at offset {limit})", path)


def describe(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """The trailer as (field, value) pairs for ``vdimg dump``."""
    flags = fields["flags"]
    flag_words = [name for bit, name in FLAG_NAMES.items() if flags & bit]
    if flags & ~sum(FLAG_NAMES):
        flag_words.append(f"unknown {flags & ~sum(FLAG_NAMES):#x}")
    variant = fields["image_variant"]
    return [
        ("trailer version", str(fields["version"])),
        ("trailer size", str(fields["header_size"])),
        ("flags", f"{flags:#x} ({', '.join(flag_words) or 'none'})"),
        ("running data fork offset", f"{fields['running_data_fork_offset']:#x}"),
        ("data fork offset", f"{fields['data_fork_offset']:#x}"),
        ("data fork length", str(fields["data_fork_length"])),
        ("resource fork offset", f"{fields['rsrc_fork_offset']:#x}"),
        ("resource fork length", str(fields["rsrc_fork_length"])),
        ("XML property list offset", f"{fields['xml_offset']:#x}"),
        ("XML property list length", str(fields["xml_length"])),
        ("segment", f"{fields['segment_number']} of {fields['segment_count']}"),
        ("segment ID", fields["segment_id"].hex()),
        ("data fork checksum", _checksum(fields, "data")),
        ("master checksum", _checksum(fields, "master")),
        ("image variant", f"{variant} ({VARIANT_NAMES.get(variant, 'unknown')})"),
        ("sector count", f"{fields['sector_count']} ({fields['sector_count'] * SECTOR} bytes)"),
    ]


def _checksum(fields: dict[str, Any], which: str) -> str:
    kind = fields[f"{which}_checksum_type"]
    bits = min(fields[f"{which}_checksum_size"], 8 * 128)
    value = fields[f"{which}_checksum"][:(bits + 7) // 8].hex()
    name = CHECKSUM_NAMES.get(kind, "unknown")
    return f"type {kind} ({name}), {bits} bits" + (f": {value}" if kind else "")
