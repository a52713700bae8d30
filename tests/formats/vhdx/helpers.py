"""Reading and patching VHDX structures in test files (checksums kept right)."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

from vdgui.engine import Disk, ImageFlags
from vdgui.engine.formats.vhdx import headers as vh
from vdgui.engine.formats.vhdx import metadata as vm

from tests.formats.clustered import peek, poke

MiB = 1 << 20


def create(path: Path, size: int, fixed: bool = False, **config: str) -> None:
    """A new VHDX made by the engine."""
    with Disk() as disk:
        disk.create_base(path, size, backend="VHDX",
                         image_flags=ImageFlags.FIXED if fixed else ImageFlags.NONE,
                         config=config)


def headers(path: Path) -> list[vh.Header | None]:
    return [vh.parse_header(peek(path, off, vh.HEADER_SIZE), i)
            for i, off in enumerate(vh.HEADER_OFFSETS)]


def current_header(path: Path) -> vh.Header:
    return max((h for h in headers(path) if h), key=lambda h: h.sequence)


def write_header(path: Path, header: vh.Header) -> None:
    poke(path, vh.HEADER_OFFSETS[header.slot], header.pack())


def regions(path: Path, copy: int = 0) -> dict[str, vh.Region]:
    parsed = vh.parse_region_table(peek(path, vh.REGION_OFFSETS[copy], vh.REGION_TABLE_SIZE))
    assert not isinstance(parsed, str), parsed
    return {r.name: r for r in parsed}


def write_regions(path: Path, table: list[vh.Region], copies: tuple[int, ...] = (0, 1)) -> None:
    for copy in copies:
        poke(path, vh.REGION_OFFSETS[copy], vh.pack_region_table(table))


def bat(path: Path, count: int) -> list[int]:
    r = regions(path)["BAT"]
    return list(struct.unpack(f"<{count}Q", peek(path, r.offset, 8 * count)))


def set_bat(path: Path, index: int, value: int) -> None:
    poke(path, regions(path)["BAT"].offset + 8 * index, struct.pack("<Q", value))


def metadata_table(path: Path) -> list[tuple[uuid.UUID, int, int, int]]:
    """``(guid, offset, length, flags)`` of every metadata table entry."""
    r = regions(path)["metadata"]
    raw = peek(path, r.offset, vm.TABLE_SIZE)
    h = vm.TABLE_HEADER.unpack(raw)
    assert h["signature"] == b"metadata"
    out = []
    for i in range(h["entry_count"]):
        e = vm.TABLE_ENTRY.unpack(raw, vm.TABLE_HEADER.size + i * vm.TABLE_ENTRY.size)
        out.append((uuid.UUID(bytes_le=e["guid"]), e["offset"], e["length"], e["flags"]))
    return out


def metadata_item(path: Path, item: uuid.UUID) -> bytes:
    r = regions(path)["metadata"]
    for guid, offset, length, _ in metadata_table(path):
        if guid == item:
            return peek(path, r.offset + offset, length)
    raise KeyError(item)
