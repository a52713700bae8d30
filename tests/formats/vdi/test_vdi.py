"""VDI layout facts, pinned byte by byte, and the backend's own rules."""

from __future__ import annotations

import struct
import uuid

import pytest

from vdgui.engine import Disk, Geometry, ImageFlags, OpenFlags, probe
from vdgui.engine import errors
from vdgui.engine.formats import vdi

MiB = 1 << 20


def header(path) -> dict:
    raw = path.read_bytes()[:vdi.PRE_HEADER_SIZE + vdi.HEADER_V1PLUS_SIZE]
    fields = vdi.PRE_HEADER.unpack(raw)
    fields.update(vdi.HEADER_V1.unpack(raw, vdi.PRE_HEADER_SIZE))
    return fields


def test_new_dynamic_image_is_laid_out_like_virtualbox(tmp_path):
    path = tmp_path / "a.vdi"
    image_uuid = uuid.UUID("5c8cdb2a-44e4-44e2-acba-2e678ca2e6d2")
    with Disk() as disk:
        disk.create_base(path, 10 * MiB, comment="demo", uuid=image_uuid,
                         lchs=Geometry(20, 16, 63))
    h = header(path)
    assert h["text"].rstrip(b"\0") == b"<<< Oracle VM VirtualBox Disk Image >>>\n"
    assert (h["signature"], h["version"]) == (0xBEDA107F, 0x00010001)
    assert h["header_size"] == 400 and h["type"] == 1 and h["flags"] == 0
    assert h["comment"].rstrip(b"\0") == b"demo"
    assert (h["blocks_offset"], h["data_offset"]) == (0x100000, 0x200000)
    assert h["legacy_sector_size"] == 512
    assert (h["disk_size"], h["block_size"], h["block_extra"]) == (10 * MiB, MiB, 0)
    assert (h["blocks"], h["blocks_allocated"]) == (10, 0)
    # UUIDs in the little-endian GUID layout: the example from the format notes.
    assert h["uuid"] == bytes.fromhex("2adb8c5ce444e244acba2e678ca2e6d2")
    assert h["parent_uuid"] == bytes(16)
    assert struct.unpack_from("<4I", path.read_bytes(), 0x1C8) == (20, 16, 63, 512)
    raw = path.read_bytes()
    assert raw[0x100000:0x100000 + 40] == b"\xff" * 40
    assert len(raw) == 0x200000


def test_first_write_appends_one_block(tmp_path):
    path = tmp_path / "a.vdi"
    with Disk() as disk:
        disk.create_base(path, 10 * MiB)
        disk.write(3 * MiB, b"\xab" * 65536)
    raw = path.read_bytes()
    assert len(raw) == 0x200000 + MiB
    assert header(path)["blocks_allocated"] == 1
    assert struct.unpack_from("<4I", raw, 0x100000) == (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    assert raw[0x200000:0x200000 + 65536] == b"\xab" * 65536


def test_fixed_image_allocates_every_block_in_order(tmp_path):
    path = tmp_path / "f.vdi"
    with Disk() as disk:
        disk.create_base(path, 3 * MiB, image_flags=ImageFlags.FIXED)
        assert disk[0].image_flags & ImageFlags.FIXED
        disk.write(MiB, bytes(10))  # fixed images write everything, zeros included
    h = header(path)
    assert (h["type"], h["blocks_allocated"]) == (2, 3)
    assert struct.unpack_from("<3I", path.read_bytes(), h["blocks_offset"]) == (0, 1, 2)
    assert path.stat().st_size == h["data_offset"] + 3 * MiB


def test_zero_expand_is_recorded_in_the_header_flags(tmp_path):
    path = tmp_path / "z.vdi"
    with Disk() as disk:
        disk.create_base(path, 2 * MiB, image_flags=ImageFlags.VDI_ZERO_EXPAND)
        disk.write(0, b"x")
        assert disk[0].variant == ["zero-expand"]
    assert header(path)["flags"] == 1


def test_block_size_and_alignment_options(tmp_path):
    path = tmp_path / "small.vdi"
    with Disk() as disk:
        disk.create_base(path, 3 * MiB + 512,
                         config={"AllocationBlockSize": "64K", "DataAlignment": "4096"})
        disk.write(3 * MiB, b"end")
        assert disk.read(3 * MiB, 3) == b"end"
    h = header(path)
    assert (h["block_size"], h["blocks"]) == (65536, 49)
    assert h["blocks_offset"] == 4096 and h["data_offset"] % 4096 == 0
    with Disk() as disk:
        with pytest.raises(errors.InvalidParameter, match="no option"):
            disk.create_base(tmp_path / "b.vdi", MiB, config={"cluster_size": "1"})


def test_size_limits(tmp_path):
    with Disk() as disk:
        with pytest.raises(errors.InvalidSize, match="at least 1 MiB"):
            disk.create_base(tmp_path / "tiny.vdi", 512 * 1024)
    assert not (tmp_path / "tiny.vdi").exists()


def test_probe_and_foreign_files(tmp_path):
    path = tmp_path / "a.vdi"
    with Disk() as disk:
        disk.create_base(path, MiB)
    assert probe(str(path))[0] == "VDI"
    other = tmp_path / "text.vdi"
    other.write_bytes(b"hello" * 100)
    with pytest.raises(errors.NotSupported, match="not a disk image"):
        probe(str(other))


def _legacy_v0_image(path, blocks: int = 2, block_size: int = MiB) -> bytes:
    """A version 0 image built from the layout notes: header, map, data."""
    pre = vdi.PRE_HEADER.pack(dict(text=b"<<< innotek VirtualBox Disk Image >>>\n".ljust(64, b"\0"),
                                   signature=vdi.SIGNATURE, version=vdi.VERSION_0))
    h = vdi.HEADER_V0.pack(dict(
        type=1, flags=0, comment=b"old".ljust(256, b"\0"), legacy_cylinders=0,
        legacy_heads=0, legacy_sectors=0, legacy_sector_size=512,
        disk_size=blocks * block_size, block_size=block_size, blocks=blocks,
        blocks_allocated=1, uuid=uuid.uuid4().bytes_le, modification_uuid=uuid.uuid4().bytes_le,
        parent_uuid=bytes(16)))
    table = struct.pack("<2I", 0xFFFFFFFF, 0)
    data = b"\x42" * block_size
    path.write_bytes(pre + h + table + data)
    return data


def test_version_0_images_read_but_only_read_only(tmp_path):
    path = tmp_path / "old.vdi"
    data = _legacy_v0_image(path)
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk[0].version == vdi.VERSION_0
        assert disk[0].comment == "old"
        assert disk.read(0, 4) == bytes(4)
        assert disk.read(MiB, MiB) == data
    with Disk() as disk:
        with pytest.raises(errors.InvalidParameter, match="read-only"):
            disk.open(path)


def test_384_byte_header_gains_lchs_only_when_there_is_room(tmp_path):
    path = tmp_path / "q.vdi"
    with Disk() as disk:
        disk.create_base(path, 2 * MiB, config={"DataAlignment": "512"})
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 0x48, 384)  # pretend qemu wrote it (map at 0x200)
    path.write_bytes(bytes(raw))
    with Disk() as disk:
        disk.open(path)
        with pytest.raises(errors.GeometryNotSet):
            disk.lchs(0)
        disk[0].lchs = Geometry(4, 16, 63)
    assert header(path)["header_size"] == 400
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk[0].lchs == Geometry(4, 16, 63)


def test_damaged_block_map_reads_but_refuses_writes(tmp_path):
    path = tmp_path / "bad.vdi"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB)
        disk.write(0, b"a" * MiB)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 0x100000 + 4, 7)  # block 1 -> physical block 7 (of 1)
    path.write_bytes(bytes(raw))
    with Disk() as disk:
        with pytest.raises(errors.Corrupted, match="repair"):
            disk.open(path)
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk.read(0, 1) == b"a"
        with pytest.raises(errors.Corrupted, match="beyond the end"):
            disk.read(MiB, 10)


@pytest.mark.parametrize("offset, value, message", [
    (0x40, 0x12345678, None),                 # signature: not a VDI at all
    (0x44, 0x00030000, "version 3.0"),
    (0x178, 1000, "power of two"),
    (0x170, 0, "size of 0"),
    (0x184, 99, "allocated"),
    (0x158, 0x100008, "overlaps"),
    (0x4C, 9, "image type"),
])
def test_header_damage_gives_clear_errors(tmp_path, offset, value, message):
    path = tmp_path / "h.vdi"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, offset, value)
    path.write_bytes(bytes(raw))
    with Disk() as disk:
        if message is None:
            with pytest.raises(errors.VDError, match="not a disk image"):
                disk.open(path, flags=OpenFlags.READONLY)
        else:
            with pytest.raises(errors.VDError, match=message) as info:
                disk.open(path, "VDI", flags=OpenFlags.READONLY)
            assert str(path) in str(info.value)
