"""VHD layout facts, the backend's rules, chains, locators, damage and hostile input."""

from __future__ import annotations

import logging
import os
import shutil
import uuid

import pytest

from vdgui.engine import (Disk, DiskType, Geometry, ImageFlags, OpenFlags, Status, open_chain,
                          probe)
from vdgui.engine import errors
from vdgui.engine.formats.vdi import PRE_HEADER_SIZE, HEADER_V1
from vdgui.engine.formats.vhd import VhdImage
from vdgui.engine.formats.vhd import footer as vf
from vdgui.engine.formats.vhd import locators as loc
from vdgui.engine.formats.vhd.geometry import chs_geometry, virtual_size
from vdgui.engine.io import default_provider

from .helpers import (MiB, add_locators, bat, patch_footer, patch_header, poke,
                      read_footer, read_header)


def make(path, size=10 * MiB, flags=ImageFlags.NONE, writes=(), **kw):
    with Disk() as disk:
        disk.create_base(path, size, backend="VHD", image_flags=flags, **kw)
        for offset, data in writes:
            disk.write(offset, data)
    return path


# -- layout ---------------------------------------------------------------------------

def test_new_dynamic_image_has_qemus_layout(tmp_path):
    image_uuid = uuid.UUID("5c8cdb2a-44e4-44e2-acba-2e678ca2e6d2")
    path = make(tmp_path / "d.vhd", uuid=image_uuid)
    raw = path.read_bytes()
    assert len(raw) == 2560 and raw[:512] == raw[-512:]
    f = read_footer(path)
    assert (f["cookie"], f["features"], f["format_version"]) == (b"conectix", 2, 0x10000)
    assert (f["data_offset"], f["creator_app"], f["creator_os"]) == (512, b"qem2", b"Wi2k")
    assert (f["original_size"], f["current_size"]) == (10 * MiB, 10 * MiB)
    assert (f["cylinders"], f["heads"], f["sectors"], f["disk_type"]) == (301, 4, 17, 3)
    assert f["uuid"] == image_uuid.bytes_le  # GUID layout, as VirtualBox and Windows
    assert vf.checksum(raw[-512:], 64) == f["checksum"]
    h = read_header(path)
    assert (h["cookie"], h["data_offset"], h["table_offset"]) == (
        b"cxsparse", 0xFFFFFFFFFFFFFFFF, 0x600)
    assert (h["header_version"], h["max_table_entries"], h["block_size"]) == (
        0x10000, 5, 2 * MiB)
    assert vf.checksum(raw[512:1536], 36) == h["checksum"]
    assert raw[0x600:0x800] == b"\xff" * 512
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk[0].uuid == image_uuid and disk[0].version == 0x10000
        assert disk[0].pchs == Geometry(301, 4, 17)
        with pytest.raises(errors.GeometryNotSet):
            disk.lchs(0)
        with pytest.raises(errors.NotSupported):
            disk[0].modification_uuid
        with pytest.raises(errors.NotSupported):
            disk[0].comment


def test_first_write_appends_bitmap_and_block_where_the_footer_was(tmp_path):
    path = make(tmp_path / "d.vhd", writes=[(3 * MiB, b"\xab" * 4096)])
    raw = path.read_bytes()
    assert len(raw) == 0x800 + 512 + 2 * MiB + 512
    assert bat(path) == [0xFFFFFFFF, 4, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF]
    assert raw[0x800:0xA00] == b"\xff" * 512  # qemu's all-ones bitmap
    assert raw[0xA00 + MiB:0xA00 + MiB + 4096] == b"\xab" * 4096
    assert raw[-512:] == raw[:512]


def test_fixed_image_is_data_then_footer(tmp_path):
    progress = []
    from vdgui.engine import Progress
    with Disk() as disk:
        disk.create_base(tmp_path / "f.vhd", 3 * MiB, backend="VHD",
                         image_flags=ImageFlags.FIXED,
                         progress=Progress(lambda d, t, s: progress.append((d, t))))
        disk.write(MiB, bytes(10))
        disk.write(0, b"boot")
        assert disk[0].image_flags & ImageFlags.FIXED
    path = tmp_path / "f.vhd"
    raw = path.read_bytes()
    assert len(raw) == 3 * MiB + 512 and raw[:4] == b"boot"
    f = read_footer(path)
    assert (f["disk_type"], f["data_offset"]) == (2, 0xFFFFFFFFFFFFFFFF)
    assert progress and progress[-1][0] == progress[-1][1]


@pytest.mark.parametrize("size, chs", [
    (10 * MiB, (301, 4, 17)), (10514432, (302, 4, 17)), (1073995776, (2081, 16, 63)),
    (136365219840, (65279, 16, 255)), (200 << 30, (65535, 16, 255)), (512, (0, 4, 17)),
])
def test_chs_algorithm_of_the_specification(size, chs):
    assert chs_geometry(size) == Geometry(*chs)


@pytest.mark.parametrize("creator, chs, expected", [
    (b"vpc ", (301, 4, 17), 10479616), (b"qemu", (301, 4, 17), 10479616),
    (b"qem2", (301, 4, 17), 10 * MiB), (b"win ", (301, 4, 17), 10 * MiB),
    (b"vbox", (301, 4, 17), 10 * MiB), (b"tap\0", (301, 4, 17), 10 * MiB),
    (b"qemu", (65535, 16, 255), 10 * MiB), (b"vpc ", (0, 0, 0), 10 * MiB),
])
def test_virtual_size_rule(creator, chs, expected):
    assert virtual_size(creator, 10 * MiB, Geometry(*chs)) == expected


def test_size_limits_and_options(tmp_path):
    with Disk() as disk:
        with pytest.raises(errors.InvalidSize, match="2040 GiB"):
            disk.create_base(tmp_path / "big.vhd", 2041 << 30, backend="VHD")
        with pytest.raises(errors.InvalidParameter, match="power of two"):
            disk.create_base(tmp_path / "b.vhd", MiB, backend="VHD",
                             config={"BlockSize": "3M"})
        with pytest.raises(errors.InvalidParameter, match="follows from its size"):
            disk.create_base(tmp_path / "g.vhd", MiB, backend="VHD", pchs=Geometry(2, 16, 63))
    assert not any(tmp_path.iterdir())
    path = make(tmp_path / "small.vhd", 3 * MiB + 512, config={"BlockSize": "512K"},
                writes=[(3 * MiB, b"end")])
    assert read_header(path)["block_size"] == 512 * 1024
    assert read_header(path)["max_table_entries"] == 7
    with Disk() as disk:
        disk.open(path)
        assert disk.size == 3 * MiB + 512 and disk.read(3 * MiB, 3) == b"end"
    # the largest size is accepted, sparse and instantly
    make(tmp_path / "max.vhd", 2040 << 30)
    assert read_footer(tmp_path / "max.vhd")["current_size"] == 2040 << 30


def test_probe_claims_footer_at_end_or_start(tmp_path):
    path = make(tmp_path / "a.vhd")
    assert probe(str(path)) == ("VHD", DiskType.HDD)
    raw = path.read_bytes()
    (tmp_path / "cut.vhd").write_bytes(raw[:-100])  # no footer at the end, copy at 0
    assert probe(str(tmp_path / "cut.vhd"))[0] == "VHD"
    (tmp_path / "text.vhd").write_bytes(b"hello" * 200)
    with pytest.raises(errors.NotSupported, match="not a disk image"):
        probe(str(tmp_path / "text.vhd"))
    with pytest.raises(errors.InvalidHeader, match="not a VHD"):
        VhdImage.open(default_provider(), str(tmp_path / "text.vhd"), OpenFlags.READONLY)


def test_511_byte_footer_of_old_images_is_read(tmp_path):
    path = make(tmp_path / "old.vhd", writes=[(0, b"x" * 512)])
    raw = path.read_bytes()
    path.write_bytes(raw[:-1])  # a 511-byte footer: the last reserved byte is missing
    with Disk() as disk:
        disk.open(path)
        disk.write(5 * MiB, b"y")
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk.read(0, 1) == b"x" and disk.read(5 * MiB, 1) == b"y"


# -- reading and writing -------------------------------------------------------------

def test_round_trip_at_block_edges_and_unaligned(tmp_path):
    size = 7 * MiB + 1024  # not a multiple of the block size
    model = bytearray(size)
    writes = [(0, os.urandom(512)), (2 * MiB - 300, os.urandom(600)),
              (3 * MiB + 7, os.urandom(70000)), (size - 512, b"\xee" * 512)]
    path = make(tmp_path / "r.vhd", size, writes=writes)
    for offset, data in writes:
        model[offset:offset + len(data)] = data
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk.read(0, size) == model
        # untouched block 2 is unallocated
        assert disk.block_status(4 * MiB, MiB)[1] is Status.FREE
    assert bat(path)[2] == 0xFFFFFFFF


def test_zero_blocks_are_not_allocated_in_a_base_but_honor_zeroes_allocates(tmp_path):
    path = make(tmp_path / "z.vhd", 4 * MiB)
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.HONOR_SAME)
        disk.write(0, bytes(2 * MiB))
    assert bat(path)[0] == 0xFFFFFFFF
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.HONOR_SAME | OpenFlags.HONOR_ZEROES)
        disk.write(0, bytes(2 * MiB))
    assert bat(path)[0] != 0xFFFFFFFF


def test_dynamic_base_reads_allocated_blocks_whole_like_qemu(tmp_path):
    path = make(tmp_path / "b.vhd", 4 * MiB, writes=[(0, b"\x11" * (2 * MiB))])
    poke(path, bat(path)[0] * 512, b"\x00" * 512)  # clear every bitmap bit
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk.block_status(0, 2 * MiB)[1:] == (Status.DATA, 2 * MiB)
        assert disk.read(MiB, 4) == b"\x11" * 4
    # a write in place marks its sectors present, for readers that honour bitmaps
    with Disk() as disk:
        disk.open(path)
        disk.write(10 * 512 + 3, b"\x22" * 600)  # sectors 10 and 11
    bitmap = path.read_bytes()[bat(path)[0] * 512:bat(path)[0] * 512 + 512]
    assert bitmap == b"\x00" + b"\x30" + bytes(510)


# -- differencing images --------------------------------------------------------------

@pytest.fixture
def chain(tmp_path):
    base = make(tmp_path / "base.vhd", 6 * MiB, writes=[(0, b"\x01" * (6 * MiB))])
    diff = tmp_path / "diff.vhd"
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(diff, backend="VHD")
        disk.write(MiB, b"\x02" * 4096)
    return base, diff


def test_diff_records_its_parent(chain):
    base, diff = chain
    f, h = read_footer(diff), read_header(diff)
    assert f["disk_type"] == 4 and f["current_size"] == 6 * MiB
    assert h["parent_uuid"] == read_footer(base)["uuid"]  # the raw 16 bytes
    assert h["parent_timestamp"] == vf.to_vhd_time(os.stat(base).st_mtime)
    assert h["parent_name"].decode("utf-16-be").rstrip("\0") == "base.vhd"
    entries = vf.unpack_locators(h["locators"])
    assert [loc.code_name(e["code"]) for e in entries[:2]] == ["W2ku", "W2ru"]
    raw = diff.read_bytes()
    ku, ru = (raw[e["data_offset"]:e["data_offset"] + e["data_length"]] for e in entries[:2])
    assert ku.decode("utf-16-le") == str(base.resolve())
    assert ru.decode("utf-16-le") == ".\\base.vhd"
    assert entries[0]["data_space"] == 1024 and entries[0]["data_offset"] == 0x800
    with Disk() as disk:
        disk.open(diff, flags=OpenFlags.READONLY | OpenFlags.INFO)
        image = disk.image(0)
        assert disk[0].image_flags & ImageFlags.DIFF
        assert image.parent_filename == ".\\base.vhd"
        assert abs(image.parent_timestamp - os.stat(base).st_mtime) < 1
        assert dict(image.parent_locators()) == {"W2ku": str(base.resolve()),
                                                 "W2ru": ".\\base.vhd"}


def test_diff_reads_through_and_writes_at_sector_granularity(chain):
    base, diff = chain
    with open_chain(diff) as disk:
        assert disk.read(0, 4) == b"\x01" * 4
        assert disk.read(MiB, 4096) == b"\x02" * 4096
        # the whole block was filled from the parent when it was allocated
        assert disk.read(MiB + 4096, 10) == b"\x01" * 10
    # clear the bits of sectors 2048..2055 (the write) and 4000: they fall through
    entry = bat(diff)[0]
    poke(diff, entry * 512 + 256, b"\x00")
    poke(diff, entry * 512 + 500, b"\x7f")
    with open_chain(diff) as disk:
        assert disk.block_status(MiB - 512, 4096) == (1, Status.DATA, 512)
        assert disk.block_status(MiB, 8192) == (0, Status.DATA, 4096)
        assert disk.read(MiB, 4096) == b"\x01" * 4096
        assert disk.block_status(4000 * 512, 1024)[0] == 0
        # writing into clear sectors fills only those and sets their bits
        disk.write(MiB + 512, b"\x03" * 512)
        assert disk.read(MiB, 1536) == b"\x01" * 512 + b"\x03" * 512 + b"\x01" * 512
        assert disk.read(MiB + 4096, 4) == b"\x01" * 4
    raw = diff.read_bytes()
    assert raw[entry * 512 + 256] == 0xFF and raw[entry * 512 + 500] == 0xFF
    assert len(bat(diff)) == 3 and bat(diff)[1:] == [0xFFFFFFFF, 0xFFFFFFFF]


def test_zero_writes_in_a_diff_hide_the_parent_after_reopen(chain):
    base, diff = chain
    with open_chain(diff) as disk:
        disk.write(2 * MiB, bytes(2 * MiB))  # a whole block of zeros
        disk.write(4 * MiB + 512, bytes(512))
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(2 * MiB, 2 * MiB) == bytes(2 * MiB)
        assert disk.read(4 * MiB, 1536) == b"\x01" * 512 + bytes(512) + b"\x01" * 512
    assert bat(diff)[1] != 0xFFFFFFFF


def test_vhd_diff_on_a_vdi_base(tmp_path):
    base, diff = tmp_path / "base.vdi", tmp_path / "top.vhd"
    size = 5 * MiB + 512
    with Disk() as disk:
        disk.create_base(base, size)
        disk.write(0, b"\x05" * size)
        disk.create_diff(diff, backend="VHD")
        disk.write(size - 512, bytes(512))
        disk.write(100, b"top")
    raw = base.read_bytes()
    vdi_uuid = HEADER_V1.unpack(raw, PRE_HEADER_SIZE)["uuid"]
    assert read_header(diff)["parent_uuid"] == vdi_uuid
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert [im.backend for im in disk.images] == ["VDI", "VHD"]
        assert disk.size == size
        expected = bytearray(b"\x05" * size)
        expected[100:103] = b"top"
        expected[size - 512:] = bytes(512)
        assert disk.read(0, size) == expected


def test_vdi_diff_on_a_vhd_base_links_by_the_same_raw_uuid(tmp_path):
    base = make(tmp_path / "base.vhd", 4 * MiB, writes=[(0, b"\x09" * 4096)])
    diff = tmp_path / "top.vdi"
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(diff, backend="VDI")
        disk.write(4096, b"\x0a" * 512)
    raw = diff.read_bytes()
    assert HEADER_V1.unpack(raw, PRE_HEADER_SIZE)["parent_uuid"] == read_footer(base)["uuid"]
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert [im.backend for im in disk.images] == ["VHD", "VDI"]
        assert disk.read(0, 4608) == b"\x09" * 4096 + b"\x0a" * 512


def test_chain_survives_moving_the_folder_and_prefers_absolute_outside_it(tmp_path):
    (tmp_path / "a").mkdir()
    base = make(tmp_path / "a" / "base.vhd", 2 * MiB, writes=[(0, b"B")])
    sub = tmp_path / "a" / "sub"
    sub.mkdir()
    outer = tmp_path / "outer.vhd"
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(sub / "inner.vhd", backend="VHD")
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(outer, backend="VHD")
    inner_locators = dict(VhdImage.open(default_provider(), str(sub / "inner.vhd"),
                                        OpenFlags.READONLY).parent_locators())
    assert inner_locators["W2ru"] == "..\\base.vhd"
    image = VhdImage.open(default_provider(), str(outer), OpenFlags.READONLY)
    try:
        assert image.parent_filename == ".\\a\\base.vhd"
    finally:
        image.close()
    shutil.move(tmp_path / "a", tmp_path / "moved")
    with open_chain(tmp_path / "moved" / "sub" / "inner.vhd", OpenFlags.READONLY) as disk:
        assert disk.count == 2 and disk.read(0, 1) == b"B"


def test_all_locator_kinds_read_and_rewritten(chain, tmp_path):
    base, diff = chain
    target = str(base)
    add_locators(diff, [
        (loc.WI2R, loc.encode(loc.WI2R, target, str(diff)), 2),
        (loc.WI2K, loc.encode(loc.WI2K, target, str(diff)), 3),
        (loc.MACX, loc.encode(loc.MACX, target, str(diff)), 4),
        (loc.MAC, loc.encode(loc.MAC, target, str(diff)), 5),
    ])
    absolute = str(base.resolve())
    with Disk() as disk:
        disk.open(diff, flags=OpenFlags.READONLY | OpenFlags.INFO)
        kinds = dict(disk.image(0).parent_locators())
    assert kinds == {"W2ku": absolute, "W2ru": ".\\base.vhd", "Wi2r": ".\\base.vhd",
                     "Wi2k": absolute, "MacX": absolute, "Mac ": absolute}
    # point everything at a new, long path: locators that no longer fit move to the end
    longer = tmp_path / ("deep" * 60) / "renamed parent é.vhd"
    longer.parent.mkdir()
    shutil.copy(base, longer)
    with Disk() as disk:
        disk.open(diff, flags=OpenFlags.INFO)
        disk.image(0).parent_filename = str(longer)
        disk.write(0, b"still writable")
    with Disk() as disk:
        disk.open(diff, flags=OpenFlags.READONLY | OpenFlags.INFO)
        image = disk.image(0)
        kinds = dict(image.parent_locators())
        rel = "." + "\\" + "deep" * 60 + "\\renamed parent é.vhd"
        assert kinds == {"W2ku": str(longer), "W2ru": rel, "Wi2r": rel,
                         "Wi2k": str(longer), "MacX": str(longer), "Mac ": str(longer)}
        assert image.parent_unicode_name == "renamed parent é.vhd"
        assert image.parent_filename == rel
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.images[0].path.endswith("renamed parent é.vhd")
        assert disk.read(0, 14) == b"still writable"


def test_locator_codecs_round_trip(tmp_path):
    child = str(tmp_path / "c" / "child.vhd")
    parent = str(tmp_path / "p q" / "parent.vhd")
    for code in loc.KNOWN:
        decoded = loc.decode(code, loc.encode(code, parent, child))
        if code in loc.RELATIVE:
            assert decoded == "..\\p q\\parent.vhd"
        else:
            assert decoded == parent
    assert loc.decode(loc.MACX, b"file://localhost/Users/me/My%20Disk.vhd\0") == \
        "/Users/me/My Disk.vhd"
    assert loc.capacity(1, 24) == 512 and loc.capacity(1024, 24) == 1024
    assert loc.alias_path(b"\0" * 10) is None


# -- damage ---------------------------------------------------------------------------

def test_bad_footer_checksum_with_intact_copy(tmp_path, caplog):
    path = make(tmp_path / "c.vhd", writes=[(0, b"data")])
    poke(path, len(path.read_bytes()) - 512 + 64, b"\0\0\0\0")
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        with Disk() as disk:
            disk.open(path, flags=OpenFlags.READONLY)
            assert disk.read(0, 4) == b"data"
    assert "bad checksum" in caplog.text
    assert path.read_bytes() == before
    with Disk() as disk:
        with pytest.raises(errors.Corrupted, match="intact.*vdimg repair") as info:
            disk.open(path)
    assert info.value.status == "VERR_VD_IMAGE_CORRUPTED"
    # a read-only image cannot be switched to read/write either
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        with pytest.raises(errors.Corrupted, match="repair"):
            disk.set_open_flags(0, OpenFlags.NORMAL)


def test_missing_footer_uses_the_copy_read_only(tmp_path, caplog):
    path = make(tmp_path / "t.vhd", writes=[(MiB, b"abc")])
    path.write_bytes(path.read_bytes()[:-512])
    with caplog.at_level(logging.WARNING):
        with Disk() as disk:
            disk.open(path, flags=OpenFlags.READONLY)
            assert disk.read(MiB, 3) == b"abc"
    assert "missing" in caplog.text
    with Disk() as disk:
        with pytest.raises(errors.Corrupted, match="copy of it at the start of the file"):
            disk.open(path)


def test_fixed_footer_and_dynamic_header_checksums(tmp_path):
    fixed = make(tmp_path / "f.vhd", MiB, ImageFlags.FIXED, writes=[(0, b"F")])
    poke(fixed, MiB + 64, b"\1\2\3\4")
    dyn = make(tmp_path / "d.vhd", writes=[(0, b"D")])
    poke(dyn, 512 + 36, b"\1\2\3\4")
    for path, first in ((fixed, b"F"), (dyn, b"D")):
        with Disk() as disk:
            disk.open(path, flags=OpenFlags.READONLY)
            assert disk.read(0, 1) == first
        with Disk() as disk:
            with pytest.raises(errors.Corrupted, match="checksum.*vdimg repair"):
                disk.open(path)


def _hostile(tmp_path, name):
    return make(tmp_path / name, 4 * MiB, writes=[(0, b"x" * 512)])


@pytest.mark.parametrize("change, message", [
    (dict(header=dict(table_offset=1 << 40)), "beyond the end"),
    (dict(header=dict(block_size=0)), "power of two"),
    (dict(header=dict(block_size=3 * MiB)), "power of two"),
    (dict(header=dict(block_size=1 << 30)), "not supported"),
    (dict(header=dict(max_table_entries=0xFFFFFFFF)), "absurd"),
    (dict(header=dict(max_table_entries=1)), "too few"),
    (dict(footer=dict(data_offset=1 << 50)), "outside the file"),
    (dict(footer=dict(disk_type=5)), "not supported"),
    (dict(footer=dict(current_size=0)), "size of 0"),
    (dict(footer=dict(current_size=1 << 62)), "too few"),
])
def test_hostile_headers_give_clear_errors(tmp_path, change, message):
    path = _hostile(tmp_path, "h.vhd")
    if "header" in change:
        patch_header(path, **change["header"])
    if "footer" in change:
        patch_footer(path, **change["footer"])
    for flags in (OpenFlags.READONLY, OpenFlags.NORMAL):
        with Disk() as disk:
            with pytest.raises(errors.VDError, match=message) as info:
                disk.open(path, "VHD", flags=flags)
            assert str(path) in str(info.value)


def test_bat_entry_into_the_metadata(tmp_path):
    path = _hostile(tmp_path, "meta.vhd")
    poke(path, read_header(path)["table_offset"] + 4, (2).to_bytes(4, "big"))  # the header
    with Disk() as disk:
        with pytest.raises(errors.Corrupted, match="block 1 .*own metadata"):
            disk.open(path)


def test_bat_entry_past_the_end(tmp_path):
    path = _hostile(tmp_path, "bat.vhd")
    table = read_header(path)["table_offset"]
    poke(path, table + 4, (0x100000).to_bytes(4, "big"))
    with Disk() as disk:
        with pytest.raises(errors.Corrupted, match="block 1 .*beyond the footer"):
            disk.open(path)
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk.read(0, 1) == b"x"
        with pytest.raises(errors.Corrupted, match="beyond the end"):
            disk.read(2 * MiB, 10)


def test_truncated_files_never_raise_foreign_errors(tmp_path):
    path = _hostile(tmp_path, "cut.vhd")
    raw = path.read_bytes()
    for keep in (0, 100, 511, 512, 1000, 1600, 3000, len(raw) - 600):
        cut = tmp_path / f"cut{keep}.vhd"
        cut.write_bytes(raw[:keep])
        for flags in (OpenFlags.READONLY, OpenFlags.NORMAL):
            try:
                with Disk() as disk:
                    disk.open(cut, "VHD", flags=flags)
                    disk.read(0, disk.size)
            except errors.VDError:
                pass


# -- re-linking (merges) ----------------------------------------------------------------

def test_forward_merge_turns_a_diff_into_a_dynamic_base(tmp_path):
    from vdgui.engine.ops.merge import merge
    base = make(tmp_path / "base.vhd", 6 * MiB, writes=[(0, b"\x01" * MiB)])
    diff = tmp_path / "diff.vhd"
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(diff, backend="VHD")
        disk.write(2 * MiB, b"\x02" * 512)
    # sector 100 of block 1: absent in the diff (the parent's zeros show) over stale bytes
    entry = bat(diff)[1]
    poke(diff, entry * 512 + 12, b"\xf7")
    poke(diff, entry * 512 + 512 + 100 * 512, b"\x77" * 512)
    with open_chain(diff) as disk:
        expected = disk.read(0, 6 * MiB)
        assert expected[2 * MiB + 100 * 512:2 * MiB + 101 * 512] == bytes(512)
        merge(disk, 0, 1)
        assert disk.count == 1 and not base.exists()
    assert read_footer(diff)["disk_type"] == 3 and read_header(diff)["parent_uuid"] == bytes(16)
    with Disk() as disk:
        disk.open(diff, flags=OpenFlags.READONLY)
        assert disk[0].parent_filename is None and not disk[0].image_flags & ImageFlags.DIFF
        assert disk.read(0, 6 * MiB) == expected


def test_backward_merge_relinks_the_child(chain, tmp_path):
    from vdgui.engine.ops.merge import merge
    base, mid = chain
    top = tmp_path / "top.vhd"
    with open_chain(mid) as disk:
        disk.create_diff(top, backend="VHD")
        disk.write(5 * MiB, b"\x03" * 512)
        expected = disk.read(0, 6 * MiB)
        merge(disk, 1, 0)
        assert disk.count == 2 and not mid.exists()
    assert read_header(top)["parent_uuid"] == read_footer(base)["uuid"]
    image = VhdImage.open(default_provider(), str(top), OpenFlags.READONLY)
    try:
        assert dict(image.parent_locators())["W2ru"] == ".\\base.vhd"
        assert image.parent_unicode_name == "base.vhd"
    finally:
        image.close()
    with open_chain(top, OpenFlags.READONLY) as disk:
        assert disk.read(0, 6 * MiB) == expected


# -- metadata setters -------------------------------------------------------------------

def test_uuid_geometry_and_parent_setters(chain):
    base, diff = chain
    new = uuid.uuid4()
    with Disk() as disk:
        disk.open(base)
        disk[0].uuid = new
        disk.set_pchs(0, Geometry(100, 16, 63))
        disk.set_parent_uuid(0, None)  # nil on a base: nothing to do
        with pytest.raises(errors.NotSupported, match="differencing"):
            disk.set_parent_uuid(0, uuid.uuid4())
        with pytest.raises(errors.NotSupported):
            disk.set_lchs(0, Geometry(10, 16, 63))
        with pytest.raises(errors.NotSupported):
            disk.set_modification_uuid(0, uuid.uuid4())
    raw = base.read_bytes()
    assert raw[:512] == raw[-512:]
    f = read_footer(base)
    assert f["uuid"] == new.bytes_le and vf.checksum(raw[-512:], 64) == f["checksum"]
    assert (f["cylinders"], f["heads"], f["sectors"]) == (100, 16, 63)
    with Disk() as disk:
        disk.open(diff, flags=OpenFlags.INFO)
        disk.set_parent_uuid(0, new)
        disk.image(0).parent_timestamp = 946684800 + 1000
    assert read_header(diff)["parent_uuid"] == new.bytes_le
    assert read_header(diff)["parent_timestamp"] == 1000
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.count == 2
    # an image sized by its geometry (qemu's, Virtual PC's) keeps it
    g = chs_geometry(6 * MiB)
    patch_footer(base, creator_app=b"qemu", cylinders=g.cylinders, heads=g.heads,
                 sectors=g.sectors)
    with Disk() as disk:
        disk.open(base)
        with pytest.raises(errors.NotSupported, match="size from the geometry"):
            disk.set_pchs(0, Geometry(50, 16, 63))


# -- interruptions ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["crash", "enospc"])
def test_interrupted_writes_leave_a_writable_image_with_old_or_new_data(tmp_path, kind):
    from vdgui.engine.io import Fault, FaultyProvider, FileProvider
    from vdgui.engine.io.faulty import SimulatedCrash
    pristine = make(tmp_path / "p.vhd", 8 * MiB, writes=[(0, b"\x01" * MiB)])
    writes = [(3 * MiB, b"\x02" * 4096), (512, b"\x03" * 512), (4 * MiB, b"\x04" * (2 * MiB)),
              (7 * MiB - 512, b"\x05" * 1024)]
    for budget in range(8):
        path = tmp_path / f"w{budget}.vhd"
        shutil.copy(pristine, path)
        provider = FaultyProvider(FileProvider(), Fault(after_writes=budget, kind=kind))
        try:
            with Disk(io=provider) as disk:
                disk.open(path)
                for offset, data in writes:
                    disk.write(offset, data)
        except (SimulatedCrash, errors.VDError):
            pass
        with Disk() as disk:
            disk.open(path)  # read/write: footer, BAT and bitmaps are consistent
            for offset, data in writes:
                got = disk.read(offset, len(data))
                old = bytes(len(data)) if offset >= MiB else b"\x01" * len(data)
                assert got in (data, old), (budget, offset)
