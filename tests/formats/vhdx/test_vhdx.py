"""VHDX layout facts, pinned byte by byte, and the backend's own rules."""

from __future__ import annotations

import os
import struct
import uuid

import pytest

from vdgui.engine import (Disk, ImageFlags, OpenFlags, Progress, Status, errors, open_chain,
                          probe)
from vdgui.engine.formats.vhdx import bat as vb
from vdgui.engine.formats.vhdx import headers as vh
from vdgui.engine.formats.vhdx import metadata as vm
from vdgui.engine.formats.vhdx.crc32c import _raw_bytewise, crc32c
from vdgui.engine.formats.vhdx.image import VhdxImage, default_block_size

from tests.formats.clustered import digest, expected, poke, scattered_writes
from tests.formats.vhdx import helpers as h

MiB = 1 << 20


# -- CRC-32C -----------------------------------------------------------------------------

@pytest.mark.parametrize("data, value", [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),                 # RFC 3720 (iSCSI) test vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_known_vectors(data, value):
    assert crc32c(data) == value


@pytest.mark.parametrize("length", [0, 1, 4, 2047, 2048, 4096, 65536, 1 << 20, 1000003])
def test_crc32c_lanes_agree_with_the_byte_loop(length):
    data = os.urandom(length)
    assert crc32c(data) == _raw_bytewise(0xFFFFFFFF, data) ^ 0xFFFFFFFF


# -- layout of new images ------------------------------------------------------------------

def test_new_dynamic_image_layout(tmp_path):
    path = tmp_path / "a.vhdx"
    disk_id = uuid.UUID("5c8cdb2a-44e4-44e2-acba-2e678ca2e6d2")
    with Disk() as disk:
        disk.create_base(path, 10 * MiB, backend="VHDX", uuid=disk_id)
        assert disk[0].uuid == disk_id
    raw = path.read_bytes()
    assert raw[:8] == b"vhdxfile"
    assert raw[8:40].decode("utf-16-le").startswith("vdgui ")
    first, second = h.headers(path)
    assert first and second and {first.sequence, second.sequence} == {1, 2}
    assert (second.log_offset, second.log_length, second.version) == (MiB, MiB, 1)
    assert second.log_guid == uuid.UUID(int=0)
    # Both region tables, identical, BAT and metadata marked required.
    assert raw[192 << 10:256 << 10] == raw[256 << 10:320 << 10]
    assert raw[192 << 10:196 << 10][:4] == b"regi"
    regions = h.regions(path)
    assert (regions["BAT"].offset, regions["BAT"].length, regions["BAT"].required) == \
        (2 * MiB, MiB, True)
    assert (regions["metadata"].offset, regions["metadata"].required) == (3 * MiB, True)
    table = h.metadata_table(path)
    assert [(g, o, f) for g, o, _, f in table] == [
        (vm.FILE_PARAMETERS, 0x10000, 4), (vm.VIRTUAL_DISK_SIZE, 0x10008, 6),
        (vm.PAGE83_DATA, 0x10010, 6), (vm.LOGICAL_SECTOR_SIZE, 0x10020, 6),
        (vm.PHYSICAL_SECTOR_SIZE, 0x10028, 6)]
    assert struct.unpack("<II", h.metadata_item(path, vm.FILE_PARAMETERS)) == (8 * MiB, 0)
    assert struct.unpack("<Q", h.metadata_item(path, vm.VIRTUAL_DISK_SIZE)) == (10 * MiB,)
    # The virtual disk id in the Windows GUID layout (first three fields little-endian).
    assert h.metadata_item(path, vm.PAGE83_DATA) == bytes.fromhex(
        "2adb8c5ce444e244acba2e678ca2e6d2")
    assert h.bat(path, 2) == [0, 0]
    assert len(raw) == 4 * MiB


@pytest.mark.parametrize("size, block", [
    (MiB, 8 * MiB), (1 << 30, 8 * MiB), ((1 << 30) + 512, 16 * MiB),
    (100 << 30, 16 * MiB), ((100 << 30) + 512, 32 * MiB)])
def test_default_block_size_follows_qemu(size, block):
    assert default_block_size(size) == block


def test_first_write_appends_an_aligned_block_and_leaves_the_log_empty(tmp_path):
    path = tmp_path / "a.vhdx"
    h.create(path, 10 * MiB, block_size="1M")
    before = h.current_header(path)
    with Disk() as disk:
        disk.open(path)
        disk.write(3 * MiB + 512, b"\xab" * 1000)
        modification = disk[0].modification_uuid
    raw = path.read_bytes()
    assert len(raw) == 5 * MiB
    assert h.bat(path, 4) == [0, 0, 0, 4 * MiB | vb.FULLY_PRESENT]
    assert raw[4 * MiB + 512:4 * MiB + 1512] == b"\xab" * 1000
    after = h.current_header(path)
    assert after.sequence > before.sequence + 2
    assert after.log_guid == uuid.UUID(int=0)
    assert after.file_write_guid != before.file_write_guid
    assert after.data_write_guid != before.data_write_guid
    assert after.data_write_guid == modification
    # Our log entry stays behind in the log area, complete and checksummed.
    entry = raw[MiB:MiB + 8192]
    assert entry[:4] == b"loge" and vh.checksum_ok(entry)


def test_fixed_image_preallocates_every_block(tmp_path):
    path = tmp_path / "f.vhdx"
    h.create(path, 3 * MiB, fixed=True, block_size="1M")
    assert h.bat(path, 3) == [(4 + i) * MiB | vb.FULLY_PRESENT for i in range(3)]
    flags = struct.unpack("<II", h.metadata_item(path, vm.FILE_PARAMETERS))[1]
    assert flags == vm.FILE_LEAVE_BLOCKS_ALLOCATED
    assert path.stat().st_size == 7 * MiB
    with open_chain(path) as disk:
        assert disk[0].image_flags & ImageFlags.FIXED
        disk.write(MiB, b"\x01" * 512)
        assert disk.read(MiB, 512) == b"\x01" * 512
    assert path.stat().st_size == 7 * MiB


def test_fixed_creation_reports_progress(tmp_path):
    calls = []
    with Disk() as disk:
        disk.create_base(tmp_path / "f.vhdx", 130 * MiB, backend="VHDX",
                         image_flags=ImageFlags.FIXED,
                         progress=Progress(lambda *args: calls.append(args), rate=0))
    allocating = [(done, total) for done, total, stage in calls if stage == "allocating"]
    assert allocating[0] == (0, 136 * MiB) and allocating[-1] == (136 * MiB, 136 * MiB)
    assert len(allocating) >= 3


def test_zero_writes_stay_unallocated_in_a_base(tmp_path):
    path = tmp_path / "a.vhdx"
    h.create(path, 4 * MiB, block_size="1M")
    with open_chain(path) as disk:
        disk.write(0, bytes(2 * MiB))
        disk.write(2 * MiB, b"\x01")
    assert h.bat(path, 4)[:2] == [0, 0]
    assert h.bat(path, 4)[2] & 7 == vb.FULLY_PRESENT


def test_bat_interleaves_sector_bitmap_entries(tmp_path):
    """256 MiB blocks: chunk ratio 16, so block 18 is BAT entry 19 (entry 16 is the
    first sector bitmap entry)."""
    path = tmp_path / "big.vhdx"
    h.create(path, 5 << 30, block_size="256M")
    assert len(h.bat(path, 21)) == 21
    with open(path, "r+b") as f:  # a sparse block at 4 MiB holding one sector of data
        f.truncate(4 * MiB + (256 << 20))
        f.seek(4 * MiB + 512)
        f.write(b"\x11" * 512)
    h.set_bat(path, 19, 4 * MiB | vb.FULLY_PRESENT)
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(4608 * MiB, 1536) == bytes(512) + b"\x11" * 512 + bytes(512)
        assert disk.block_status(4608 * MiB, 512 * MiB)[1:] == (Status.DATA, 256 * MiB)
        assert disk.block_status(4352 * MiB, 512 * MiB)[1:] == (Status.FREE, 256 * MiB)
        assert disk.block_status(4096 * MiB, 1024 * MiB)[1:] == (Status.FREE, 512 * MiB)


def test_4k_logical_sectors(tmp_path):
    path = tmp_path / "k.vhdx"
    size = 16 * MiB
    writes = scattered_writes(size, 2 * MiB)
    h.create(path, size, logical_sector_size="4096", block_size="2M")
    assert struct.unpack("<I", h.metadata_item(path, vm.LOGICAL_SECTOR_SIZE)) == (4096,)
    with open_chain(path) as disk:
        image = disk.image(0)
        assert image.sector_size == 4096
        assert image.bat.chunk_ratio == (1 << 23) * 4096 // (2 * MiB)
        for offset, length, byte in writes:
            disk.write(offset, bytes([byte]) * length)
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(0, size) == expected(size, writes)


def test_size_is_rounded_up_to_the_logical_sector(tmp_path):
    path = tmp_path / "k.vhdx"
    h.create(path, 3 * MiB + 512, logical_sector_size="4096")
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.size == 3 * MiB + 4096


@pytest.mark.parametrize("config", [{"block_size": "3M"}, {"block_size": "512M"},
                                    {"log_size": "1536K"}, {"logical_sector_size": "1024"}])
def test_bad_creation_options_are_refused(tmp_path, config):
    with pytest.raises(errors.InvalidParameter):
        h.create(tmp_path / "x.vhdx", 4 * MiB, **config)
    assert not (tmp_path / "x.vhdx").exists()


# -- identity ---------------------------------------------------------------------------------

def test_uuid_mapping(tmp_path):
    path = tmp_path / "a.vhdx"
    h.create(path, 4 * MiB)
    new_id, new_mod = uuid.uuid4(), uuid.uuid4()
    with open_chain(path) as disk:
        assert probe(str(path))[0] == "VHDX"
        disk.set_uuid(0, new_id)
        disk.set_modification_uuid(0, new_mod)
        with pytest.raises(errors.NotSupported, match="data write GUID"):
            disk[0].parent_uuid
        with pytest.raises(errors.NotSupported):
            disk.set_parent_uuid(0, uuid.uuid4())
        assert disk[0].parent_modification_uuid == uuid.UUID(int=0)
        with pytest.raises(errors.NotSupported):
            disk[0].comment
        with pytest.raises(errors.GeometryNotSet):
            disk.image(0).pchs
        assert disk[0].version == 1
    assert h.metadata_item(path, vm.PAGE83_DATA) == new_id.bytes_le
    assert h.current_header(path).data_write_guid == new_mod
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert (disk[0].uuid, disk[0].modification_uuid) == (new_id, new_mod)
        dump = dict(disk[0].describe())
        assert dump["virtual disk id (page 83)"] == str(new_id)
        assert dump["payload block states"] == "not present: 1"


def test_open_and_close_without_writes_changes_nothing(tmp_path):
    path = tmp_path / "a.vhdx"
    h.create(path, 4 * MiB)
    before = digest(path)
    with open_chain(path) as disk:
        disk.read(0, MiB)
    with open_chain(path, OpenFlags.READONLY) as disk:
        disk.read(0, MiB)
    assert digest(path) == before


# -- the two headers and region tables ----------------------------------------------------------

def test_a_damaged_current_header_falls_back_to_the_other(tmp_path):
    path = tmp_path / "a.vhdx"
    h.create(path, 4 * MiB, block_size="1M")
    with open_chain(path) as disk:
        disk.write(0, b"\x42" * 512)
    current = h.current_header(path)
    older = [x for x in h.headers(path) if x and x.slot != current.slot][0]
    poke(path, vh.HEADER_OFFSETS[current.slot] + 100, b"\xff")  # CRC now wrong
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.image(0).header.sequence == older.sequence
        assert disk.read(0, 512) == b"\x42" * 512
    with open_chain(path) as disk:  # the next update goes to the damaged slot
        disk.write(512, b"\x43" * 512)
    assert all(h.headers(path))
    poke(path, vh.HEADER_OFFSETS[0], b"xxxx")
    poke(path, vh.HEADER_OFFSETS[1], b"xxxx")
    with pytest.raises(errors.Corrupted, match="neither VHDX header"):
        open_chain(path, OpenFlags.READONLY)


def test_a_damaged_first_region_table_falls_back_to_the_copy(tmp_path):
    path = tmp_path / "a.vhdx"
    h.create(path, 4 * MiB)
    poke(path, vh.REGION_OFFSETS[0] + 40, b"\x01")
    with open_chain(path, OpenFlags.READONLY) as disk:
        dump = dict(disk[0].describe())
        assert dump["region table 1"].startswith("invalid (CRC-32C")
        assert dump["region table 2"] == "valid"
    poke(path, vh.REGION_OFFSETS[1], b"xxxx")
    with pytest.raises(errors.Corrupted, match="neither VHDX region table"):
        open_chain(path, OpenFlags.READONLY)


def test_unknown_required_region_is_refused_unknown_optional_ignored(tmp_path):
    path = tmp_path / "a.vhdx"
    h.create(path, 4 * MiB)
    table = list(h.regions(path).values())
    other = vh.Region(uuid.uuid4(), 8 * MiB, MiB, False)
    h.write_regions(path, table + [other])
    with open_chain(path, OpenFlags.READONLY):
        pass
    h.write_regions(path, table + [vh.Region(other.guid, 8 * MiB, MiB, True)])
    with pytest.raises(errors.NotSupported, match="unknown region"):
        open_chain(path, OpenFlags.READONLY)


def test_images_without_the_required_flag_open(tmp_path):
    """qemu-img writes its regions without the required bit; we read them anyway."""
    path = tmp_path / "a.vhdx"
    h.create(path, 4 * MiB)
    h.write_regions(path, [vh.Region(r.guid, r.offset, r.length, False)
                           for r in h.regions(path).values()])
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.size == 4 * MiB


def test_backend_info():
    info = VhdxImage.info
    assert info.name == "VHDX" and info.extensions[0][0] == "vhdx"
    assert {k.name for k in info.config_keys} == {"block_size", "log_size",
                                                  "logical_sector_size"}
