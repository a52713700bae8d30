"""RAW: device-type detection, sparse holes, and qemu's view of raw files."""

from __future__ import annotations

import os

import pytest

from tests import qemu
from vdgui.engine import Disk, DiskType, OpenFlags, Status, open_chain, probe
from vdgui.engine import errors

MiB = 1 << 20


def make_iso(path, sectors: int = 40, udf: bool = False) -> None:
    """Volume descriptors at sector 16: primary + terminator (or a UDF sequence)."""
    data = bytearray(sectors * 2048)
    idents = [b"BEA01", b"NSR02", b"TEA01"] if udf else [b"CD001", b"CD001"]
    kinds = [0, 0, 0] if udf else [1, 255]
    for i, (kind, ident) in enumerate(zip(kinds, idents)):
        offset = (16 + i) * 2048
        data[offset:offset + 7] = bytes([kind]) + ident + b"\x01"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("udf", [False, True])
def test_iso_content_is_detected_as_dvd_whatever_the_name(tmp_path, udf):
    path = tmp_path / "disc.bin"
    make_iso(path, udf=udf)
    assert probe(str(path)) == ("RAW", DiskType.DVD)
    with open_chain(path) as disk:
        assert disk.disk_type == DiskType.DVD
        assert disk.is_read_only
        assert disk.image(0).sector_size == 2048


def test_floppy_by_extension_and_size(tmp_path):
    path = tmp_path / "boot.img"
    path.write_bytes(bytes(1474560))
    assert probe(str(path)) == ("RAW", DiskType.FLOPPY)
    big = tmp_path / "disk.img"
    with open(big, "wb") as f:
        f.truncate(100 * MiB)
    assert probe(str(big)) == ("RAW", DiskType.HDD)


def test_optical_extension_size_rules(tmp_path):
    path = tmp_path / "odd.iso"
    path.write_bytes(bytes(40000))
    with pytest.raises(errors.VDError, match="2048"):
        Disk(DiskType.DVD).open(path)


def test_unknown_files_are_not_claimed(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello" * 200)
    with pytest.raises(errors.NotSupported, match="-f raw"):
        probe(str(path))
    with Disk() as disk:  # naming the format explicitly works
        disk.open(path, "raw", OpenFlags.READONLY)
        assert disk.read(0, 5) == b"hello"


def test_holes_are_reported_as_zero_without_reading(tmp_path):
    path = tmp_path / "sparse.raw"
    with Disk() as disk:
        disk.create_base(path, 8 * MiB, "RAW")
        disk.write(3 * MiB, b"\x07" * 4096)
        extents = [(e.offset, e.length, e.depth, e.zero) for e in disk.map()]
    data_extents = [e for e in extents if not e[3]]
    assert len(data_extents) == 1
    start, length, depth, _ = data_extents[0]
    assert depth == 0 and start <= 3 * MiB and start + length >= 3 * MiB + 4096
    assert os.stat(path).st_blocks * 512 < MiB  # created sparse
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.block_status(0, MiB)[1] is Status.ALLOCATED_ZERO
        assert disk.read(3 * MiB, 4096) == b"\x07" * 4096


def test_raw_cannot_be_a_differencing_image(tmp_path):
    with Disk() as disk:
        disk.create_base(tmp_path / "a.vdi", MiB)
        with pytest.raises(errors.InvalidParameter, match="differencing"):
            disk.create_diff(tmp_path / "b.raw", "RAW")


def test_preallocation_option(tmp_path):
    path = tmp_path / "full.raw"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB, "RAW", config={"preallocation": "falloc"})
    assert os.stat(path).st_blocks * 512 >= 4 * MiB
    with Disk() as disk:
        with pytest.raises(errors.InvalidParameter, match="falloc"):
            disk.create_base(tmp_path / "x.raw", MiB, "RAW", config={"preallocation": "full"})


@pytest.mark.interop
def test_raw_interop_both_ways(tmp_path):
    theirs = tmp_path / "theirs.raw"
    qemu.qemu_img("create", "-f", "raw", theirs, "4M")
    qemu.qemu_io(theirs, "raw", "write -P 0x5a 1048576 65536", "write -P 0x01 4193792 512")
    with open_chain(theirs, OpenFlags.READONLY) as disk:
        assert disk.read(0, disk.size) == theirs.read_bytes()
    ours = tmp_path / "ours.raw"
    with Disk() as disk:
        disk.create_base(ours, 4 * MiB, "RAW")
        disk.write(MiB, b"\x5a" * 65536)
        disk.write(4 * MiB - 512, b"\x01" * 512)
    assert qemu.compare(ours, "raw", theirs, "raw")
    assert qemu.info(ours, "raw")["virtual-size"] == 4 * MiB


def test_resize_grows_sparsely_and_shrinks_only_zeros(tmp_path):
    from vdgui.engine.ops.resize import resize
    path = tmp_path / "r.raw"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB, "RAW")
        disk.write(MiB, b"keep")
        disk.write(3 * MiB, b"tail")
        resize(disk, 64 * MiB)
        assert disk.size == 64 * MiB and disk.read(MiB, 4) == b"keep"
        with pytest.raises(errors.ShrinkNotSupported, match=str(3 * MiB)):
            resize(disk, 2 * MiB)
        disk.write(3 * MiB, bytes(4))
        resize(disk, 2 * MiB)
        assert disk.size == 2 * MiB
    assert os.path.getsize(path) == 2 * MiB


def test_check_and_repair_of_a_ragged_raw_file(tmp_path):
    from vdgui.engine import RepairFlags
    from vdgui.engine.ops.repair import repair
    path = tmp_path / "ragged.raw"
    path.write_bytes(b"\x01" * 1000)
    report = repair(path, "RAW", RepairFlags.DRY_RUN)
    assert [p.severity for p in report.problems] == ["warning"]
    assert path.stat().st_size == 1000
    assert repair(path, "RAW").clean
    assert path.read_bytes() == b"\x01" * 1000 + bytes(24)
