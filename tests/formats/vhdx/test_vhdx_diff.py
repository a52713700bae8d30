"""Differencing VHDX images: linkage, reading through the chain, partial blocks, merges.

qemu-img can neither create nor open differencing VHDX images ("Operation not
supported"), so the chains are checked against a model; whatever becomes a base
again (after a merge) is checked with qemu too.
"""

from __future__ import annotations

import os
import struct

import pytest

from vdgui.engine import Disk, OpenFlags, Status, open_chain
from vdgui.engine.formats.vhdx import bat as vb
from vdgui.engine.formats.vhdx import metadata as vm
from vdgui.engine.ops.merge import merge
from vdgui.engine.ops.rebase import rebase

from tests import qemu
from tests.formats.clustered import create, engine_read, expected, poke
from tests.formats.vhdx import helpers as h

MiB = 1 << 20
SIZE = 16 * MiB
BASE_WRITES = [(0, 3 * MiB, 0x01), (8 * MiB, 2 * MiB, 0x02), (SIZE - 512, 512, 0x03)]
DIFF_WRITES = [(512, 1024, 0x11), (2 * MiB, MiB, 0x00), (8 * MiB + 4096, 8192, 0x12),
               (12 * MiB + 7 * 512, 3 * 512, 0x13), (SIZE - 1024, 512, 0x14)]


def locator(path) -> dict[str, str]:
    return vm.ParentLocator.parse(h.metadata_item(path, vm.PARENT_LOCATOR), str(path)).entries


def make_chain(tmp_path, base_format: str) -> tuple:
    base = tmp_path / f"base.{base_format.lower()}"
    diff = tmp_path / "diff.vhdx"
    create(base, SIZE, base_format, writes=BASE_WRITES)
    with open_chain(base) as disk:
        disk.create_diff(diff, "VHDX", config={"block_size": "1M"})
        for offset, length, byte in DIFF_WRITES:
            disk.write(offset, bytes([byte]) * length)
        parent_mod = disk[0].modification_uuid
    return base, diff, parent_mod


@pytest.mark.parametrize("base_format", ["VHDX", "VDI"])
def test_diff_reads_through_the_chain(tmp_path, base_format):
    base, diff, parent_mod = make_chain(tmp_path, base_format)
    entries = locator(diff)
    assert entries["parent_linkage"] == "{" + str(parent_mod) + "}"
    assert entries["relative_path"] == base.name
    assert entries["absolute_win32_path"] == str(base)
    flags = struct.unpack("<II", h.metadata_item(diff, vm.FILE_PARAMETERS))[1]
    assert flags == vm.FILE_HAS_PARENT
    assert h.regions(diff)["BAT"].length == MiB  # one chunk: 4096 payload + 1 bitmap entry
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert len(disk) == 2 and disk[1].backend == "VHDX"
        assert disk[1].parent_filename == base.name
        assert disk[1].parent_modification_uuid == parent_mod
        assert disk.read(0, SIZE) == expected(SIZE, [*BASE_WRITES, *DIFF_WRITES])
        # The zero write hides the parent with a ZERO block, not with data.
        assert disk.block_status(2 * MiB, MiB)[:2] == (1, Status.ZERO)
        assert disk.block_status(4 * MiB, MiB)[0] != 1  # falls through to the base
    assert h.bat(diff, 3)[2] == vb.ZERO


@pytest.mark.interop
def test_qemu_cannot_open_our_diff_but_checks_the_base(tmp_path):
    base, diff, _ = make_chain(tmp_path, "VHDX")
    assert qemu.check(base, "vhdx").returncode == 0
    assert "not supported" in qemu.check(diff, "vhdx").stderr


def test_parent_outside_the_folder_is_stored_absolute(tmp_path):
    base = tmp_path / "base.vhdx"
    (tmp_path / "sub").mkdir()
    diff = tmp_path / "sub" / "diff.vhdx"
    create(base, SIZE, "VHDX", writes=BASE_WRITES)
    with open_chain(base) as disk:
        disk.create_diff(diff, "VHDX")
    assert "relative_path" not in locator(diff)
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk[1].parent_filename == str(base)
        assert disk.read(0, SIZE) == expected(SIZE, BASE_WRITES)


def make_partial(diff, block: int, present: list[tuple[int, int]]) -> None:
    """Turn fully present ``block`` of ``diff`` into a partially present one whose
    sector bitmap marks the sector ranges ``present``, as Hyper-V would leave it."""
    size = diff.stat().st_size
    bits = bytearray(MiB)
    sectors = MiB // 512
    for first, count in present:
        for s in range(block * sectors + first, block * sectors + first + count):
            bits[s // 8] |= 1 << (s % 8)
    poke(diff, size, bytes(bits))
    entries = h.bat(diff, 4097)
    h.set_bat(diff, block, entries[block] & ~7 | vb.PARTIALLY_PRESENT)
    h.set_bat(diff, 4096, size | vb.SB_PRESENT)  # chunk ratio 4096 for 1 MiB blocks


def test_partially_present_blocks_use_the_sector_bitmap(tmp_path):
    base, diff, _ = make_chain(tmp_path, "VHDX")
    with open_chain(diff) as disk:
        disk.write(5 * MiB, b"\x77" * MiB)
    make_partial(diff, 5, [(0, 8), (100, 20)])
    model = bytearray(expected(SIZE, [*BASE_WRITES, *DIFF_WRITES]))
    for first, count in [(0, 8), (100, 20)]:
        model[5 * MiB + first * 512:5 * MiB + (first + count) * 512] = b"\x77" * count * 512
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(0, SIZE) == model
        assert disk.block_status(5 * MiB, MiB)[1:] == (Status.DATA, 8 * 512)
        assert disk.block_status(5 * MiB + 8 * 512, MiB - 4096)[0] == 0  # the base answers
        image = disk.image(1)
        assert image.block_status(5 * MiB + 8 * 512, MiB) == (Status.FREE, 92 * 512)
        assert image.block_status(5 * MiB + 100 * 512 + 7, 1 << 20) == \
            (Status.DATA, 20 * 512 - 7)
    # Writing where the block lacks sectors makes it whole, keeping its own sectors.
    with open_chain(diff) as disk:
        disk.write(5 * MiB + 50 * 512, b"\x78" * 512)
    model[5 * MiB + 50 * 512:5 * MiB + 51 * 512] = b"\x78" * 512
    assert h.bat(diff, 6)[5] & 7 == vb.FULLY_PRESENT
    assert engine_read(diff) == model


def test_forward_merge_turns_the_diff_into_a_base(tmp_path):
    base, diff, _ = make_chain(tmp_path, "VHDX")
    model = expected(SIZE, [*BASE_WRITES, *DIFF_WRITES])
    with open_chain(diff) as disk:
        merge(disk, 0, 1)
        assert len(disk) == 1
    assert not base.exists()
    assert struct.unpack("<II", h.metadata_item(diff, vm.FILE_PARAMETERS))[1] == 0
    assert vm.PARENT_LOCATOR not in [g for g, *_ in h.metadata_table(diff)]
    assert engine_read(diff) == model
    if qemu.have_qemu():
        assert qemu.check(diff, "vhdx").returncode == 0
        assert qemu.to_raw(diff, "vhdx", tmp_path / "d.raw") == model


def test_backward_merge_relinks_the_child(tmp_path):
    base, d1, _ = make_chain(tmp_path, "VHDX")
    d2 = tmp_path / "d2.vhdx"
    more = [(MiB, 4096, 0x21), (9 * MiB, MiB, 0x22)]
    with open_chain(d1) as disk:
        disk.create_diff(d2, "VHDX")
        for offset, length, byte in more:
            disk.write(offset, bytes([byte]) * length)
        merge(disk, 1, 0)
        base_mod = disk[0].modification_uuid
    assert not d1.exists()
    assert locator(d2)["parent_linkage"] == "{" + str(base_mod) + "}"
    assert locator(d2)["relative_path"] == base.name
    assert engine_read(d2) == expected(SIZE, [*BASE_WRITES, *DIFF_WRITES, *more])


def test_a_base_can_become_a_diff(tmp_path):
    """Rebasing links a base to a parent: the BAT gains its sector-bitmap entries."""
    parent, child = tmp_path / "p.vhdx", tmp_path / "c.vhdx"
    create(parent, SIZE, "VHDX", writes=BASE_WRITES)
    h.create(child, SIZE, block_size="8M")
    with Disk() as disk:
        disk.open(parent, flags=OpenFlags.READONLY)
        link = disk.parent_link(0)
        disk.open(child, flags=OpenFlags.INFO)
        disk.image(1).set_parent(link)
    assert struct.unpack("<II", h.metadata_item(child, vm.FILE_PARAMETERS))[1] == \
        vm.FILE_HAS_PARENT
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.read(0, SIZE) == expected(SIZE, BASE_WRITES)
        assert os.path.samefile(disk[0].path, parent)


def test_safe_rebase_keeps_the_content(tmp_path):
    base, diff, _ = make_chain(tmp_path, "VHDX")
    other = tmp_path / "other.vdi"
    create(other, SIZE, "VDI", writes=[(0, 6 * MiB, 0x5F)])
    model = expected(SIZE, [*BASE_WRITES, *DIFF_WRITES])
    rebase(diff, other)
    entries = locator(diff)
    assert entries["relative_path"] == other.name
    with open_chain(other, OpenFlags.READONLY) as disk:
        assert entries["parent_linkage"] == "{" + str(disk[0].modification_uuid) + "}"
    assert engine_read(diff) == model


def test_relative_paths_below_the_folder_use_backslashes(tmp_path):
    (tmp_path / "parents").mkdir()
    base, diff = tmp_path / "parents" / "base.vhdx", tmp_path / "diff.vhdx"
    create(base, SIZE, "VHDX", writes=BASE_WRITES)
    with open_chain(base) as disk:
        disk.create_diff(diff, "VHDX")
    assert locator(diff)["relative_path"] == "parents\\base.vhdx"
    assert engine_read(diff) == expected(SIZE, BASE_WRITES)
