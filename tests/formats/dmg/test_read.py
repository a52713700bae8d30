"""DMG: every chunk type reads back, probing, device types, read-only, caching, dump."""

from __future__ import annotations

import pytest

from tests.formats.dmg import builder as b
from vdgui.engine import (Capability, Disk, DiskType, OpenFlags, Status, backend_info,
                          open_chain, probe)
from vdgui.engine import errors
from vdgui.engine.formats.dmg import decompress
from vdgui.engine.formats.dmg import image as dmg_image

S = b.SECTOR


def read_all(path, disk_type: DiskType = DiskType.DVD,
             flags: OpenFlags = OpenFlags.READONLY) -> bytes:
    with Disk(disk_type) as disk:
        disk.open(path, "DMG", flags)
        return disk.read(0, disk.size)


@pytest.mark.parametrize("metadata", ["xml", "rsrc", "both"])
def test_every_chunk_type_reads_back(tmp_path, unchanged, metadata):
    path = tmp_path / "all.dmg"
    expected = b.build(path, b.every_kind(), metadata=metadata)
    unchanged(path)
    assert read_all(path) == expected


def test_probe_and_open_chain(tmp_path, unchanged):
    path = tmp_path / "disc.dmg"
    expected = b.build(path, b.every_kind(seed=7))
    unchanged(path)
    assert probe(str(path)) == ("DMG", DiskType.DVD)
    assert probe(str(path), DiskType.HDD) == ("DMG", DiskType.HDD)
    with open_chain(path) as disk:
        assert disk.disk_type == DiskType.DVD
        assert disk.count == 1 and disk[0].backend == "DMG"
        assert disk.is_read_only
        assert disk.image(0).sector_size == 2048
        assert disk.size == len(expected)
        assert disk.read(0, disk.size) == expected
        # unaligned pieces across chunk boundaries
        assert disk.read(1000, 20000) == expected[1000:21000]


def test_detected_by_its_trailer_whatever_the_name(tmp_path):
    path = tmp_path / "disk.img"  # RAW would claim a .img by extension
    b.build(path, [[b.Piece(b.RAW, b.noise(4, 1))]])
    assert probe(str(path)) == ("DMG", DiskType.DVD)


def test_device_types(tmp_path, unchanged):
    path = tmp_path / "x.dmg"
    expected = b.build(path, b.every_kind(seed=3))
    unchanged(path)
    assert read_all(path, DiskType.HDD) == expected  # a Mac hard disk image
    with Disk(DiskType.HDD) as disk:
        disk.open(path, "DMG", OpenFlags.READONLY)
        assert disk.image(0).sector_size == 512
    with pytest.raises(errors.InvalidType, match="floppies"):
        Disk(DiskType.FLOPPY).open(path, "DMG", OpenFlags.READONLY)


@pytest.mark.parametrize("layout", [dict(prefix=b"\x55" * 1000),
                                    dict(table_data_offsets=True),
                                    dict(prefix=b"P" * 512, table_data_offsets=True,
                                         metadata="rsrc")])
def test_payload_offsets_are_relative_to_the_data_fork_and_table(tmp_path, unchanged, layout):
    path = tmp_path / "offsets.dmg"
    expected = b.build(path, b.every_kind(seed=11), **layout)
    unchanged(path)
    assert read_all(path) == expected


def test_empty_partition_tables_are_allowed(tmp_path):
    path = tmp_path / "empty.dmg"
    expected = b.build(path, [[], [b.Piece(b.ZLIB, b.text(3, 1))], []])
    assert read_all(path) == expected


def test_sectors_past_the_tables_read_as_zeros(tmp_path):
    path = tmp_path / "tail.dmg"
    expected = b.build(path, [[b.Piece(b.ZLIB, b.text(4, 1))]], extra_sectors=20)
    assert expected.endswith(bytes(20 * S))
    assert read_all(path) == expected


def test_block_status_zero_and_data_runs(tmp_path):
    path = tmp_path / "map.dmg"
    b.build(path, b.every_kind())
    # sectors: raw 0-1, zero 2-4 | zlib 5-20, ignore 21-25, bzip2 26-33, raw 34-40
    #          | lzma 41-52, adc 53-58, zero 59-65, zlib 66-67
    with Disk(DiskType.DVD) as disk:
        disk.open(path, "DMG", OpenFlags.READONLY)
        image = disk.image(0)
        size = image.size
        assert image.block_status(0, size) == (Status.DATA, 2 * S)
        assert image.block_status(2 * S, size) == (Status.ZERO, 3 * S)
        assert image.block_status(5 * S, size) == (Status.DATA, 16 * S)
        assert image.block_status(21 * S, size) == (Status.ZERO, 5 * S)
        assert image.block_status(26 * S, size - 26 * S) == (Status.DATA, 33 * S)
        assert image.block_status(27 * S + 100, size - 27 * S - 100) == (Status.DATA,
                                                                          32 * S - 100)
        assert image.block_status(26 * S, 1000) == (Status.DATA, 1000)
        assert image.block_status(66 * S, 2 * S) == (Status.DATA, 2 * S)


def test_file_contiguous_raw_chunks_are_read_with_one_io(tmp_path):
    path = tmp_path / "raw.dmg"
    pieces = [b.Piece(b.RAW, b.noise(3, i)) for i in range(5)]
    expected = b.build(path, [pieces[:2], pieces[2:]])
    with Disk(DiskType.DVD) as disk:
        disk.open(path, "DMG", OpenFlags.READONLY)
        storage = disk.image(0).storage
        calls = []
        original = storage.readinto_at
        storage.readinto_at = lambda offset, buf: calls.append(offset) or original(offset, buf)
        assert disk.read(0, disk.size) == expected
    assert len(calls) == 1


def test_sequential_reads_decode_each_chunk_once(tmp_path, monkeypatch):
    path = tmp_path / "seq.dmg"
    expected = b.build(path, b.every_kind())
    decoded = []
    original = dmg_image.decode
    monkeypatch.setattr(dmg_image, "decode", lambda kind, payload, size: decoded.append(kind)
                        or original(kind, payload, size))
    with Disk(DiskType.DVD) as disk:
        disk.open(path, "DMG", OpenFlags.READONLY)
        got = b"".join(disk.read(pos, 700) for pos in range(0, disk.size - 700, 700))
    assert got == expected[:len(got)]
    assert sorted(decoded) == sorted([b.ZLIB, b.BZIP2, b.LZMA, b.ADC, b.ZLIB])


def test_decoded_chunk_cache_is_bounded(tmp_path, monkeypatch):
    path = tmp_path / "many.dmg"
    expected = b.build(path, [[b.Piece(b.ZLIB, b.text(8, i)) for i in range(10)]])
    monkeypatch.setattr(dmg_image, "CACHE_BYTES", 3 * 8 * S)
    with Disk(DiskType.DVD) as disk:
        disk.open(path, "DMG", OpenFlags.READONLY)
        image = disk.image(0)
        for pos in range(0, disk.size, S):
            assert disk.read(pos, S) == expected[pos:pos + S]
            assert image._cache.bytes <= 3 * 8 * S
        decoded = []
        original = dmg_image.decode
        monkeypatch.setattr(dmg_image, "decode", lambda *args: decoded.append(1)
                            or original(*args))
        disk.read(disk.size - S, S)  # the last chunk is cached
        disk.read(0, S)  # the first one was dropped
    assert len(decoded) == 1


def test_writes_are_refused_and_the_file_never_changes(tmp_path, unchanged):
    path = tmp_path / "ro.dmg"
    expected = b.build(path, b.every_kind())
    unchanged(path)
    with Disk(DiskType.DVD) as disk:
        disk.open(path, "DMG")  # read/write asked: opened read-only instead
        assert disk.is_read_only
        with pytest.raises(errors.ReadOnly):
            disk.write(0, b"x" * S)
        image = disk.image(0)
        image.set_open_flags(OpenFlags.NORMAL)
        assert image.read_only
        with pytest.raises(errors.ReadOnly):
            image.write(0, memoryview(b"x" * S))
        disk.flush()
        assert disk.read(0, disk.size) == expected
    with Disk(DiskType.DVD) as disk, pytest.raises(errors.VDError):
        disk.create_base(tmp_path / "new.dmg", 1 << 20, "DMG")
    assert not (tmp_path / "new.dmg").exists()


def test_backend_info_and_metadata(tmp_path):
    info = backend_info("dmg")
    assert info.name == "DMG"
    assert info.extensions == (("dmg", DiskType.DVD),)
    assert not info.capabilities & (Capability.CREATE_FIXED | Capability.CREATE_DYNAMIC
                                    | Capability.DIFF)
    path = tmp_path / "meta.dmg"
    b.build(path, b.every_kind())
    with open_chain(path, OpenFlags.READONLY) as disk:
        image = disk.image(0)
        assert image.version == 4
        with pytest.raises(errors.NotSupported):
            image.uuid
        with pytest.raises(errors.NotSupported):
            image.comment


def test_describe_lists_trailer_tables_and_chunk_types(tmp_path):
    path = tmp_path / "dump.dmg"
    b.build(path, b.every_kind(), prefix=b"\0" * 512)
    with open_chain(path, OpenFlags.READONLY) as disk:
        fields = dict(disk.image(0).describe())
    assert fields["blkx entries"] == "3"
    assert fields["block tables from"] == "XML property list"
    assert fields["data fork offset"] == "0x200"
    assert int(fields["data fork length"]) > 0
    assert fields["sector count"].startswith("68 ")
    counts = fields["chunks by type"]
    for name in ("zero-fill: 2", "raw: 3", "ignore: 1", "ADC: 1", "zlib: 2", "bzip2: 1",
                 "LZMA: 1"):
        assert name in counts
    assert fields["blkx 2"].startswith("'disk image (Apple_HFS : 2)'")


def test_lzfse_chunks_when_the_package_is_installed(tmp_path):
    pytest.importorskip("lzfse")
    path = tmp_path / "lzfse.dmg"
    expected = b.build(path, b.every_kind(lzfse=True))
    assert read_all(path) == expected


def test_lzfse_without_the_package_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(decompress, "lzfse_decoder",
                        lambda: "LZFSE chunks need the optional Python package 'lzfse'")
    path = tmp_path / "ulfo.dmg"
    expected = b.build(path, [[b.Piece(b.RAW, b.noise(2, 1)),
                               b.Piece(b.LZFSE, b.text(4, 2), payload=b"bvx$")]])
    with Disk(DiskType.DVD) as disk:
        disk.open(path, "DMG", OpenFlags.READONLY)  # opening and the raw part work
        assert disk.read(0, 2 * S) == expected[:2 * S]
        with pytest.raises(errors.NotSupported, match="'lzfse'"):
            disk.read(2 * S, S)


def test_unknown_chunk_types_fail_only_when_read(tmp_path):
    path = tmp_path / "future.dmg"
    expected = b.build(path, [[b.Piece(b.RAW, b.noise(2, 1)),
                               b.Piece(0x80000009, b.text(4, 2), payload=b"?" * 100)]])
    with Disk(DiskType.DVD) as disk:
        disk.open(path, "DMG", OpenFlags.READONLY)
        assert "0x80000009 (unknown): 1" in dict(disk.image(0).describe())["chunks by type"]
        assert disk.read(0, 2 * S) == expected[:2 * S]
        with pytest.raises(errors.NotSupported, match="0x80000009"):
            disk.read(2 * S, S)
