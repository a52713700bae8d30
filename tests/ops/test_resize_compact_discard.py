"""VDResize, VDCompact and VDDiscardRanges on VDI chains."""

from __future__ import annotations

import os

import pytest

from tests import qemu
from vdgui.engine import Disk, Geometry, ImageFlags, OpenFlags, open_chain
from vdgui.engine import errors
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.resize import resize

KiB = 1024
MiB = 1 << 20


def vdi_header(path):
    from vdgui.engine.formats import vdi
    raw = path.read_bytes()[:vdi.PRE_HEADER_SIZE + vdi.HEADER_V1PLUS_SIZE]
    return vdi.HEADER_V1.unpack(raw, vdi.PRE_HEADER_SIZE)


@pytest.mark.parametrize("alignment", ["1M", "512"])
@pytest.mark.parametrize("fixed", [False, True])
def test_grow_keeps_content_even_when_the_map_must_move_data(tmp_path, alignment, fixed):
    path = tmp_path / "g.vdi"
    flags = ImageFlags.FIXED if fixed else ImageFlags.NONE
    with Disk() as disk:
        disk.create_base(path, 4 * MiB, image_flags=flags, lchs=Geometry(8, 16, 63),
                         config={"DataAlignment": alignment})
        payload = os.urandom(4 * MiB)
        disk.write(0, payload)
        # With a 512-byte alignment the map has no room: growing moves data blocks.
        resize(disk, 300 * MiB)
        assert disk.size == 300 * MiB
        assert disk.read(0, 4 * MiB) == payload
        assert disk.read(4 * MiB, MiB) == bytes(MiB)
        assert disk.lchs(0) == Geometry(300 * MiB // 512 // 16 // 63, 16, 63)
        disk.write(290 * MiB, b"new end")
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(0, 4 * MiB) == payload
        assert disk.read(290 * MiB, 7) == b"new end"
    if alignment == "512":
        assert vdi_header(path)["data_offset"] > 1024  # data had to move
    assert qemu.check(path, "vdi").returncode == 0
    assert qemu.info(path, "vdi")["virtual-size"] == 300 * MiB


def test_shrink_only_when_nothing_is_lost(tmp_path):
    path = tmp_path / "s.vdi"
    with Disk() as disk:
        disk.create_base(path, 16 * MiB)
        disk.write(MiB, b"keep")
        disk.write(12 * MiB, b"data beyond")
        with pytest.raises(errors.ShrinkNotSupported, match=str(12 * MiB)):
            resize(disk, 8 * MiB)
        assert disk.size == 16 * MiB
        disk.write(12 * MiB, bytes(11))  # the block stays allocated: still refused
        with pytest.raises(errors.ShrinkNotSupported):
            resize(disk, 8 * MiB)
        compact(disk)  # frees the now-zero block
        resize(disk, 8 * MiB)
        assert disk.size == 8 * MiB and disk.read(MiB, 4) == b"keep"
    assert qemu.check(path, "vdi").returncode == 0


def test_compact_frees_zero_and_duplicate_blocks_and_shrinks_the_file(tmp_path):
    base, diff = tmp_path / "base.vdi", tmp_path / "diff.vdi"
    with Disk() as disk:
        disk.create_base(base, 8 * MiB)
        disk.write(0, b"\x11" * (4 * MiB))
        disk.write(MiB, bytes(MiB))          # block 1: all zeros, allocated
        disk.create_diff(diff, open_flags=OpenFlags.HONOR_SAME | OpenFlags.HONOR_ZEROES)
        disk.write(0, b"\x11" * MiB)          # block 0: same as the parent
        disk.write(2 * MiB, bytes(MiB))       # block 2: zeros over parent data
        disk.write(3 * MiB, b"\x22" * MiB)    # block 3: real data
        disk.write(5 * MiB, bytes(MiB))       # block 5: zeros over parent zeros
        model = disk.read(0, 8 * MiB)
    size_before = os.path.getsize(diff)
    with open_chain(diff) as disk:
        plan = compact(disk, dry_run=True)
        assert os.path.getsize(diff) == size_before
        assert (plan.same_as_below, plan.zero) == (2 * MiB, MiB)
        compact(disk)
        assert disk.read(0, 8 * MiB) == model
        held = [(e.offset, e.length, e.zero) for e in disk.map() if e.depth == 1]
        assert held == [(2 * MiB, MiB, True), (3 * MiB, MiB, False)]
    assert os.path.getsize(diff) == size_before - 3 * MiB
    with open_chain(base) as disk:
        compact(disk)
        assert disk.read(0, MiB) == b"\x11" * MiB and disk.read(MiB, MiB) == bytes(MiB)
    assert qemu.check(base, "vdi").returncode == 0
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(0, 8 * MiB) == model


def test_discard_reads_zero_and_shrinks_the_file(tmp_path):
    base, diff = tmp_path / "base.vdi", tmp_path / "diff.vdi"
    with Disk() as disk:
        disk.create_base(base, 8 * MiB)
        disk.write(0, b"\x33" * (8 * MiB))
        disk.create_diff(diff)
        disk.write(0, b"\x44" * (4 * MiB))
    with open_chain(diff, OpenFlags.DISCARD) as disk:
        discard(disk, [(MiB, 2 * MiB), (3 * MiB + 512, 1024), (5 * MiB, MiB)])
        expected = bytearray(b"\x44" * (4 * MiB) + b"\x33" * (4 * MiB))
        for offset, length in [(MiB, 2 * MiB), (3 * MiB + 512, 1024), (5 * MiB, MiB)]:
            expected[offset:offset + length] = bytes(length)
        assert disk.read(0, 8 * MiB) == expected
    assert os.path.getsize(diff) == 2 * MiB + 2 * MiB  # header+map area, blocks 0 and 3
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(0, 8 * MiB) == expected
    with open_chain(diff) as disk:
        with pytest.raises(errors.NotSupported, match="discard"):
            discard(disk, [(0, MiB)])
