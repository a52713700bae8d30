"""Reading and patching VHD structures in test files (checksums kept right)."""

from __future__ import annotations

from pathlib import Path

from vdgui.engine.formats.vhd import footer as vf

MiB = 1 << 20


def read_footer(path: Path, at: int | None = None) -> dict:
    raw = path.read_bytes()
    offset = len(raw) - 512 if at is None else at
    return vf.FOOTER.unpack(raw, offset)


def read_header(path: Path) -> dict:
    raw = path.read_bytes()
    return vf.HEADER.unpack(raw, read_footer(path)["data_offset"])


def patch_footer(path: Path, **fields) -> None:
    """Change footer fields in the trailing footer and in its copy at 0 (if any)."""
    raw = bytearray(path.read_bytes())
    tail = len(raw) - 512
    f = vf.FOOTER.unpack(raw, tail)
    copy = f["disk_type"] != vf.DISK_FIXED
    f.update(fields)
    packed = vf.pack_footer(f)
    raw[tail:] = packed
    if copy:
        raw[:512] = packed
    path.write_bytes(bytes(raw))


def patch_header(path: Path, **fields) -> None:
    raw = bytearray(path.read_bytes())
    at = vf.FOOTER.unpack(raw, len(raw) - 512)["data_offset"]
    h = vf.HEADER.unpack(raw, at)
    h.update(fields)
    raw[at:at + 1024] = vf.pack_header(h)
    path.write_bytes(bytes(raw))


def poke(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def bat(path: Path) -> list[int]:
    h = read_header(path)
    raw = path.read_bytes()
    start = h["table_offset"]
    return [int.from_bytes(raw[start + 4 * i:start + 4 * i + 4], "big")
            for i in range(h["max_table_entries"])]


def add_locators(path: Path, items: list[tuple[int, bytes, int]]) -> None:
    """Add locators ``(code, data, slot)``: their data goes before the footer."""
    raw = bytearray(path.read_bytes())
    tail = len(raw) - 512
    footer_raw = bytes(raw[tail:])
    at = vf.FOOTER.unpack(raw, tail)["data_offset"]
    h = vf.HEADER.unpack(raw, at)
    entries = vf.unpack_locators(h["locators"])
    pos = tail
    body = bytearray()
    for code, data, slot in items:
        room = -(-len(data) // 512) * 512
        entries[slot] = dict(code=code, data_space=room // 512, data_length=len(data),
                             reserved=0, data_offset=pos + len(body))
        body += data.ljust(room, b"\0")
    h["locators"] = vf.pack_locators(entries)
    raw[at:at + 1024] = vf.pack_header(h)
    path.write_bytes(bytes(raw[:tail]) + bytes(body) + footer_raw)
