"""Where a DMG keeps its block tables: the XML property list or the resource fork.

Both hold "blkx" resources, each the bytes of one mish block table.  The XML is
untrusted input: its size is bounded before it is read, it must be in an
ASCII-compatible encoding, and entity declarations are refused outright (no
"billion laughs"); plistlib's expat parser refuses them as well.  The classic
binary resource fork is walked the way qemu reads it: its data area is a sequence
of length-prefixed resources, and the ones that start with "mish" are block tables.
"""

from __future__ import annotations

import plistlib
import struct
from dataclasses import dataclass
from typing import Any

from ...errors import Corrupted, NotSupported
from ...io import Storage

#: Largest property list or resource fork read (a 32 MiB plist describes ~600 000
#: chunks, i.e. ~600 GiB in the usual 1 MiB chunks).
MAX_METADATA_BYTES = 32 << 20

#: Most blkx entries (partitions) accepted; real images have a handful.
MAX_ENTRIES = 4096

XML_PARSE_ERROR = "VERR_VD_DMG_XML_PARSE_ERROR"

_RSRC_HEADER = struct.Struct(">IIII")  # data offset, map offset, data length, map length
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class BlkxEntry:
    """One blkx resource: a partition's name and its mish block table."""

    name: str
    ident: str
    attributes: str
    table: bytes


def read_metadata(storage: Storage, offset: int, length: int, what: str) -> bytes:
    """The bytes of the property list or resource fork, after bounding their size."""
    if length > MAX_METADATA_BYTES:
        raise NotSupported(f"the {what} is {length} bytes long, more than the "
                           f"{MAX_METADATA_BYTES >> 20} MiB this program reads", storage.path)
    return storage.read_exact(offset, length, f"the {what}")


def entries_from_xml(raw: bytes, path: str) -> list[BlkxEntry]:
    """The blkx entries of an XML property list."""
    # NUL bytes mean UTF-16/32, where the byte search below would miss "<!ENTITY"
    # (XML 1.0 forbids the NUL character itself).
    if b"\0" in raw:
        raise Corrupted("the DMG property list is not in an ASCII-compatible encoding",
                        path, status=XML_PARSE_ERROR)
    if b"<!ENTITY" in raw:
        raise Corrupted("the DMG property list declares XML entities; refused (entity "
                        "expansion is a known attack and real images never use them)",
                        path, status=XML_PARSE_ERROR)
    try:
        root = plistlib.loads(raw, fmt=plistlib.FMT_XML)
    # plistlib on hostile XML can raise ExpatError, InvalidFileException, ValueError
    # (bad numbers, dates), TypeError/KeyError (malformed nesting) and more: every
    # failure of the parser means the same thing here.
    except Exception as exc:  # noqa: BLE001
        raise Corrupted(f"the DMG property list is not a valid XML property list ({exc})",
                        path, status=XML_PARSE_ERROR) from None
    fork = _get(root, "resource-fork", dict, "the property list", path)
    blkx = _get(fork, "blkx", list, "the resource-fork dictionary", path)
    if len(blkx) > MAX_ENTRIES:
        raise Corrupted(f"the property list has {len(blkx)} blkx entries (at most "
                        f"{MAX_ENTRIES} are accepted)", path, status=XML_PARSE_ERROR)
    entries = []
    for i, item in enumerate(blkx):
        where = f"blkx entry {i}"
        if not isinstance(item, dict):
            raise Corrupted(f"{where} of the property list is not a dictionary", path,
                            status=XML_PARSE_ERROR)
        table = _get(item, "Data", bytes, where, path)
        entries.append(BlkxEntry(_text(item.get("CFName", item.get("Name", ""))),
                                 _text(item.get("ID", "")), _text(item.get("Attributes", "")),
                                 table))
    return entries


def entries_from_resource_fork(raw: bytes, path: str) -> list[BlkxEntry]:
    """The block tables stored in a classic binary resource fork."""
    if len(raw) < _RSRC_HEADER.size:
        raise Corrupted("the DMG resource fork is too short for its header", path)
    data_offset, _, data_length, _ = _RSRC_HEADER.unpack_from(raw)
    if data_offset > len(raw) or data_length > len(raw) - data_offset or not data_length:
        raise Corrupted(f"the resource data ({data_length} bytes at {data_offset}) does not "
                        f"lie within the {len(raw)}-byte resource fork", path)
    entries = []
    pos, end = data_offset, data_offset + data_length
    while pos < end:
        if end - pos < _LENGTH.size:
            raise Corrupted(f"resource {len(entries)} of the resource fork is cut short",
                            path)
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += _LENGTH.size
        if length > end - pos:
            raise Corrupted(f"a resource of {length} bytes at offset {pos} runs past the end "
                            f"of the resource data", path)
        data = raw[pos:pos + length]
        pos += length
        if data[:4] == b"mish":
            if len(entries) >= MAX_ENTRIES:
                raise Corrupted(f"the resource fork has more than {MAX_ENTRIES} block tables",
                                path)
            entries.append(BlkxEntry(f"resource {len(entries)}", "", "", data))
    return entries


def _get(container: object, key: str, kind: type, where: str, path: str) -> Any:
    """``container[key]``, which must exist and be of type ``kind``."""
    value = container.get(key) if isinstance(container, dict) else None
    if not isinstance(value, kind):
        found = "missing" if value is None else f"a {type(value).__name__}"
        raise Corrupted(f"{where} has no {kind.__name__} {key!r} ({found})", path,
                        status=XML_PARSE_ERROR)
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)
