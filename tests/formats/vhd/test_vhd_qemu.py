"""VHD against qemu-img/qemu-io ("vpc"), both ways, on real files."""

from __future__ import annotations

import os

import pytest

from tests import qemu
from vdgui.engine import Disk, ImageFlags, OpenFlags, open_chain
from vdgui.engine.formats.vhd import footer as vf
from vdgui.engine.formats.vhd.geometry import chs_bytes, chs_geometry
from vdgui.engine.types import Geometry

from .helpers import MiB, patch_footer, read_footer

pytestmark = pytest.mark.interop


def pattern_writes(size: int) -> list[tuple[int, int, int]]:
    """(offset, length, byte): first sector, block-straddling, odd offset, last sector."""
    return [(0, 512, 0x11), (2 * MiB - 4096, 8192, 0x22),
            (3 * MiB + 512, 70000 // 512 * 512, 0x33), (size - 512, 512, 0x44)]


@pytest.mark.parametrize("options", ["subformat=dynamic", "subformat=fixed",
                                     "subformat=dynamic,force_size=on",
                                     "subformat=fixed,force_size=on"])
@pytest.mark.parametrize("size", [10 * MiB, 5 * MiB + 512, 7 * MiB + 64 * 1024])
def test_qemu_written_vhd_reads_identically(tmp_path, size, options):
    image = tmp_path / "q.vhd"
    qemu.qemu_img("create", "-f", "vpc", "-o", options, image, str(size))
    virtual = qemu.info(image, "vpc")["virtual-size"]
    qemu.qemu_io(image, "vpc", *(f"write -P {p:#x} {o} {n}"
                                 for o, n, p in pattern_writes(virtual)))
    expected = qemu.to_raw(image, "vpc", tmp_path / "q.raw")
    before = image.read_bytes()
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.size == virtual == len(expected)
        assert disk.read(0, virtual) == expected
        assert bool(disk[0].image_flags & ImageFlags.FIXED) == ("fixed" in options)
        if "force_size" in options:
            assert virtual == size  # qem2: the current size
        else:
            assert virtual >= size and chs_bytes(disk[0].pchs) == virtual
    assert image.read_bytes() == before
    # qemu's geometry is the specification's algorithm applied to its (rounded) size
    f = read_footer(image)
    if "force_size" not in options:
        assert chs_geometry(f["current_size"]) == Geometry(
            f["cylinders"], f["heads"], f["sectors"])


def test_qemu_uuid_byte_order(tmp_path):
    """qemu writes RFC 4122 bytes; we show the 16 bytes in GUID layout, as VirtualBox."""
    image = tmp_path / "u.vhd"
    qemu.qemu_img("create", "-f", "vpc", image, "4M")
    raw = read_footer(image)["uuid"]
    assert raw[6] >> 4 == 4 and raw[8] >> 6 == 2  # a version 4 UUID in RFC byte order
    with Disk() as disk:
        disk.open(image, flags=OpenFlags.READONLY)
        assert disk[0].uuid.bytes_le == raw


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("size", [4 * MiB, 4 * MiB + 512, 9 * MiB - 512, 10 * MiB])
def test_our_vhd_reads_identically_in_qemu(tmp_path, size, fixed):
    image = tmp_path / "ours.vhd"
    raw = bytearray(size)
    chunks = [(0, os.urandom(512)), (MiB - 100, os.urandom(300)),
              (2 * MiB, bytes(MiB)), (3 * MiB + 7, os.urandom(70000)),
              (size - 512, b"\xee" * 512)]
    with Disk() as disk:
        disk.create_base(image, size, backend="VHD",
                         image_flags=ImageFlags.FIXED if fixed else ImageFlags.NONE)
        for offset, data in chunks:
            disk.write(offset, data)
            raw[offset:offset + len(data)] = data
    (tmp_path / "ref.raw").write_bytes(raw)
    assert qemu.info(image, "vpc")["virtual-size"] == size
    assert qemu.compare(image, "vpc", tmp_path / "ref.raw", "raw")
    assert qemu.to_raw(image, "vpc", tmp_path / "back.raw") == raw
    # qemu-img has no consistency check for vpc; say so rather than skip silently
    check = qemu.check(image, "vpc")
    assert check.returncode == 63 and "does not support checks" in check.stderr


def test_qemu_writes_into_our_image_and_we_read_it(tmp_path):
    image = tmp_path / "mixed.vhd"
    size = 6 * MiB + 512
    with Disk() as disk:
        disk.create_base(image, size, backend="VHD")
        disk.write(MiB, b"\x55" * 4096)
    qemu.qemu_io(image, "vpc", "write -P 0x66 0 512", f"write -P 0x77 {size - 1024} 1024",
                 f"write -P 0x88 {MiB + 4096} 4096")
    expected = qemu.to_raw(image, "vpc", tmp_path / "m.raw")
    with Disk() as disk:
        disk.open(image)
        assert disk.read(0, size) == expected
        disk.write(5 * MiB, b"\x99" * 512)
        expected = expected[:5 * MiB] + b"\x99" * 512 + expected[5 * MiB + 512:]
    assert qemu.to_raw(image, "vpc", tmp_path / "m2.raw") == expected


@pytest.mark.parametrize("size", [127 << 30, 136365219840, 200 << 30, 2040 << 30])
def test_large_sizes_agree_with_qemu(tmp_path, size):
    image = tmp_path / "big.vhd"
    with Disk() as disk:
        disk.create_base(image, size, backend="VHD")
        disk.write(size - 512, b"last")
    assert qemu.info(image, "vpc")["virtual-size"] == size
    qemu_made = tmp_path / "qbig.vhd"
    qemu.qemu_img("create", "-f", "vpc", qemu_made, str(size))
    with Disk() as disk:
        disk.open(qemu_made, flags=OpenFlags.READONLY)
        assert disk.size == qemu.info(qemu_made, "vpc")["virtual-size"]


@pytest.mark.parametrize("creator, same", [
    (b"vpc ", True), (b"qemu", True), (b"qem2", True), (b"win ", True), (b"d2v ", True),
    (b"tap\0", True), (b"CTXS", True),
    # qemu 7.2 sizes unknown creators (VirtualBox's) by CHS; we keep the current size
    (b"vbox", False),
])
def test_size_rule_per_creator_against_qemu(tmp_path, creator, same):
    image = tmp_path / "c.vhd"
    with Disk() as disk:
        disk.create_base(image, 10 * MiB, backend="VHD")  # CHS 301/4/17 < current size
    patch_footer(image, creator_app=creator)
    theirs = qemu.info(image, "vpc")["virtual-size"]
    with Disk() as disk:
        disk.open(image, flags=OpenFlags.READONLY)
        ours = disk.size
    assert (ours == theirs) is same
    assert ours == (301 * 4 * 17 * 512 if creator in (b"vpc ", b"qemu") else 10 * MiB)


def test_qemu_has_no_differencing_vhds_but_reads_ours_as_dynamic(tmp_path):
    base, diff = tmp_path / "base.vhd", tmp_path / "diff.vhd"
    result = qemu.qemu_img("create", "-f", "vpc", "-b", base, "-F", "vpc", diff, check=False)
    assert result.returncode != 0 and "Backing file not supported" in result.stderr
    with Disk() as disk:
        disk.create_base(base, 4 * MiB, backend="VHD")
        disk.write(0, b"\x01" * (4 * MiB))
        disk.create_diff(diff, backend="VHD")
        disk.write(2 * MiB, b"\x02" * (2 * MiB))
    assert qemu.info(diff, "vpc")["virtual-size"] == 4 * MiB
    seen = qemu.to_raw(diff, "vpc", tmp_path / "d.raw")  # only the diff's own blocks
    assert seen == bytes(2 * MiB) + b"\x02" * (2 * MiB)
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(0, 4 * MiB) == b"\x01" * (2 * MiB) + b"\x02" * (2 * MiB)


def test_qemu_refuses_a_bad_first_footer_checksum(tmp_path):
    """Pins why checksums matter: qemu 7.2 reads the copy at 0 first and checks it."""
    image = tmp_path / "k.vhd"
    with Disk() as disk:
        disk.create_base(image, 4 * MiB, backend="VHD")
    raw = bytearray(image.read_bytes())
    raw[64:68] = b"\0\0\0\0"
    image.write_bytes(bytes(raw))
    result = qemu.qemu_img("info", "-f", "vpc", image, check=False)
    assert result.returncode != 0 and "checksum" in result.stderr
    assert vf.checksum(raw[-512:], 64) == read_footer(image)["checksum"]
