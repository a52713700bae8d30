"""VHDX operations: releasing blocks, compaction, discard, resizing and re-linking,
against a bytearray model, qemu-img, and crashes after every write."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Callable

import pytest

from vdgui.engine import Disk, ImageFlags, OpenFlags, RepairFlags, errors, open_chain
from vdgui.engine.formats.vhdx import bat as vb
from vdgui.engine.formats.vhdx import headers as vh
from vdgui.engine.formats.vhdx import metadata as vm
from vdgui.engine.io import FileProvider
from vdgui.engine.io.faulty import Fault, FaultyProvider, SimulatedCrash
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.merge import merge
from vdgui.engine.ops.repair import repair
from vdgui.engine.ops.resize import resize

from tests import qemu
from tests.formats.clustered import engine_read, expected, poke, qemu_write
from tests.formats.vhdx import helpers as h
from tests.formats.vhdx.test_vhdx_diff import make_partial

MiB = 1 << 20
GiB = 1 << 30
SIZE = 12 * MiB
#: Blocks 0-2 data, 3 zeros (stored), 4 data, 6 zeros (stored), 9 data, last sector.
WRITES = [(0, 3 * MiB, 0x21), (3 * MiB, MiB, 0x00), (4 * MiB + 512, 4096, 0x22),
          (6 * MiB, MiB, 0x00), (9 * MiB, MiB, 0x23), (SIZE - 512, 512, 0x24)]


def make_base(path: Path, size: int = SIZE, writes=WRITES, fixed: bool = False) -> None:
    """A base with 1 MiB blocks; all-zero writes allocate blocks too."""
    with Disk() as disk:
        disk.create_base(path, size, "VHDX", config={"block_size": "1M"},
                         image_flags=ImageFlags.FIXED if fixed else ImageFlags.NONE,
                         open_flags=OpenFlags.HONOR_ZEROES | OpenFlags.HONOR_SAME)
        for offset, length, byte in writes:
            disk.write(offset, bytes([byte]) * length)


def states(path: Path, blocks: int) -> list[int]:
    return [e & 7 for e in h.bat(path, blocks)]


def assert_qemu_agrees(path: Path, model: bytes, tmp_path: Path) -> None:
    result = qemu.check(path, "vhdx")
    assert result.returncode == 0, result.stdout + result.stderr
    raw = tmp_path / "model.raw"
    raw.write_bytes(model)
    assert qemu.compare(path, "vhdx", raw, "raw")
    assert qemu.info(path, "vhdx")["virtual-size"] == len(model)


def assert_checks_clean(path: Path) -> None:
    report = repair(path, flags=RepairFlags.DRY_RUN)
    assert report.clean, report.problems


# -- unmap, compact, discard ---------------------------------------------------------

def test_unmap_marks_blocks_through_the_log(tmp_path):
    path = tmp_path / "u.vhdx"
    make_base(path)
    model = bytearray(expected(SIZE, WRITES))
    with open_chain(path) as disk:
        image = disk.image(0)
        assert image.can_mark_zero
        image.unmap(0, MiB, zero=False)
        image.unmap(MiB + 4096, 10, zero=True)  # the unit holding the offset
    model[0:2 * MiB] = bytes(2 * MiB)
    entries = h.bat(path, 12)
    assert entries[0] == vb.NOT_PRESENT and entries[1] == vb.ZERO  # no stale offsets
    assert h.current_header(path).log_guid.int == 0
    assert engine_read(path) == model


@pytest.mark.interop
def test_compact_frees_zero_blocks_and_packs_the_file(tmp_path):
    path = tmp_path / "c.vhdx"
    make_base(path)
    model = expected(SIZE, WRITES)
    assert states(path, 12) == [6, 6, 6, 6, 6, 0, 6, 0, 0, 6, 0, 6]
    before = os.path.getsize(path)
    with open_chain(path) as disk:
        plan = compact(disk)
        assert plan.same_as_below == 2 * MiB  # zeros, like nothing in a base
        assert disk.read(0, SIZE) == model
    assert os.path.getsize(path) == before - 2 * MiB
    assert states(path, 12) == [6, 6, 6, 0, 6, 0, 0, 0, 0, 6, 0, 6]
    assert_qemu_agrees(path, model, tmp_path)
    assert_checks_clean(path)
    with open_chain(path) as disk:  # new blocks go after the packed ones
        disk.write(7 * MiB, b"\x25" * MiB)
    assert os.path.getsize(path) == before - MiB
    assert_qemu_agrees(path, expected(SIZE, [*WRITES, (7 * MiB, MiB, 0x25)]), tmp_path)


@pytest.mark.interop
def test_discard_reads_zeros_and_shrinks_the_file(tmp_path):
    path = tmp_path / "d.vhdx"
    make_base(path)
    model = bytearray(expected(SIZE, WRITES))
    ranges = [(MiB - 512, 2 * MiB + 1024), (9 * MiB + 4096, 512), (SIZE - 512, 512)]
    with open_chain(path, OpenFlags.DISCARD) as disk:
        discard(disk, ranges)
    for offset, length in ranges:
        model[offset:offset + length] = bytes(length)
    assert engine_read(path) == model
    assert states(path, 12)[1:3] == [0, 0]
    assert os.path.getsize(path) < 4 * MiB + 8 * MiB
    assert_qemu_agrees(path, bytes(model), tmp_path)
    assert_checks_clean(path)


def test_compacting_a_diff_keeps_the_parent_hidden(tmp_path):
    base, diff = tmp_path / "b.vhdx", tmp_path / "d.vhdx"
    make_base(base)
    with open_chain(base) as disk:
        disk.create_diff(diff, "VHDX", config={"block_size": "1M"},
                         open_flags=OpenFlags.HONOR_SAME | OpenFlags.HONOR_ZEROES)
        disk.write(0, b"\x21" * MiB)          # same as the parent
        disk.write(MiB, bytes(MiB))           # zeros over parent data
        disk.write(5 * MiB, b"\x31" * MiB)    # new data
        model = disk.read(0, SIZE)
    with open_chain(diff) as disk:
        compact(disk)
        assert disk.read(0, SIZE) == model
    assert states(diff, 6) == [0, 2, 0, 0, 0, 6]
    assert os.path.getsize(diff) == 4 * MiB + MiB
    assert engine_read(diff) == model


def test_fixed_images_keep_their_blocks(tmp_path):
    path = tmp_path / "f.vhdx"
    make_base(path, fixed=True)
    with open_chain(path) as disk:
        for action in (lambda: disk.image(0).unmap(0, MiB, zero=True),
                       lambda: disk.image(0).pack(), lambda: compact(disk)):
            with pytest.raises(errors.NotSupported, match="fixed"):
                action()
        with pytest.raises(errors.ShrinkNotSupported, match="fixed"):
            resize(disk, 4 * MiB)


# -- resizing ----------------------------------------------------------------------

@pytest.mark.interop
def test_grow_in_place_zeroes_the_old_tail(tmp_path):
    path = tmp_path / "g.vhdx"
    size = 3 * MiB + MiB // 2
    make_base(path, size, [(0, size, 0x41)])
    block = h.bat(path, 4)[3] >> 20 << 20
    poke(path, block + MiB // 2, b"\xee" * 4096)  # junk past the end of the disk
    with open_chain(path) as disk:
        resize(disk, 64 * MiB)
        disk.write(40 * MiB, b"\x42" * 512)
    model = expected(64 * MiB, [(0, size, 0x41), (40 * MiB, 512, 0x42)])
    assert h.regions(path)["BAT"].offset == 2 * MiB  # it had room
    assert engine_read(path) == model
    assert_qemu_agrees(path, model, tmp_path)
    assert_checks_clean(path)


@pytest.mark.interop
def test_grow_moves_a_bat_that_has_no_room(tmp_path):
    """256 GiB in 1 MiB blocks needs a 3 MiB BAT: it goes after the last block, both
    region tables name it, and compaction later fills the old BAT's place."""
    path = tmp_path / "big.vhdx"
    make_base(path)
    with open_chain(path) as disk:
        resize(disk, 256 * GiB)
        disk.write(200 * GiB, b"\x51" * 4096)
        disk.write(0, bytes(3 * MiB))
    assert h.regions(path, 0) == h.regions(path, 1)
    bat = h.regions(path)["BAT"]
    assert (bat.offset, bat.length) == (4 * MiB + 8 * MiB, 3 * MiB)
    result = qemu.check(path, "vhdx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert qemu.info(path, "vhdx")["virtual-size"] == 256 * GiB
    qemu.qemu_io(path, "vhdx", "read -P 0x51 200G 4k", "read -P 0 0 3M",
                 "read -P 0x23 9M 1M", "read -P 0 12M 1M")
    with open_chain(path) as disk:
        compact(disk)
    # 4 blocks are left: one in the old BAT's place, the BAT moved down after it.
    assert h.regions(path, 0) == h.regions(path, 1)
    assert h.regions(path)["BAT"].offset == 4 * MiB
    assert h.bat(path, 204851)[204850] >> 20 == 2
    assert os.path.getsize(path) == 4 * MiB + 3 * MiB + 3 * MiB
    qemu.qemu_io(path, "vhdx", "read -P 0x51 200G 4k", "read -P 0x23 9M 1M")
    assert_checks_clean(path)


@pytest.mark.interop
def test_grow_a_fixed_image_allocates_the_new_blocks(tmp_path):
    path = tmp_path / "f.vhdx"
    make_base(path, fixed=True)
    model = expected(SIZE, WRITES)
    with open_chain(path) as disk:
        resize(disk, SIZE + 3 * MiB)
    assert states(path, 15) == [6] * 15
    assert os.path.getsize(path) == 4 * MiB + 15 * MiB
    assert_qemu_agrees(path, model + bytes(3 * MiB), tmp_path)


@pytest.mark.interop
def test_shrink_only_when_nothing_is_lost(tmp_path):
    path = tmp_path / "s.vhdx"
    make_base(path)
    with open_chain(path) as disk:
        with pytest.raises(errors.ShrinkNotSupported, match=str(9 * MiB)):
            resize(disk, 8 * MiB)
        disk.image(0).unmap(5 * MiB, SIZE - 5 * MiB, zero=False)
        with pytest.raises(errors.ShrinkNotSupported, match="last block"):
            resize(disk, 4 * MiB + 512)
        resize(disk, 4 * MiB + 8192 + 512)  # the rest of block 4 is zeros
        assert disk.size == 4 * MiB + 8704
    model = expected(4 * MiB + 8704, WRITES[:3])
    assert engine_read(path) == model
    assert_qemu_agrees(path, model, tmp_path)
    with open_chain(path) as disk:  # growing again shows zeros, not old blocks
        resize(disk, SIZE)
    assert engine_read(path) == model + bytes(SIZE - len(model))


def test_sizes_the_format_cannot_hold(tmp_path):
    path = tmp_path / "s.vhdx"
    h.create(path, 8 * MiB, logical_sector_size="4096")
    with open_chain(path) as disk:
        for size in (8 * MiB + 512, 65 << 40):
            with pytest.raises(errors.InvalidSize):
                disk.image(0).resize(size)


@pytest.mark.interop
def test_qemu_images_are_resized_and_compacted(tmp_path):
    path = tmp_path / "q.vhdx"
    qemu.qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", path, str(10 * MiB))
    writes = [(0, 2 * MiB, 0x61), (5 * MiB, 4096, 0x62), (9 * MiB, MiB, 0x63)]
    qemu_write(path, "vhdx", writes)
    assert_checks_clean(path)  # qemu's 4 MiB gap after the metadata is not a leak
    with open_chain(path) as disk:
        disk.write(0, bytes(MiB))
        compact(disk)
        resize(disk, 30 * MiB)
    model = expected(30 * MiB, [*writes, (0, MiB, 0)])
    assert_qemu_agrees(path, model, tmp_path)
    assert os.path.getsize(path) == 4 * MiB + 3 * MiB  # moved into qemu's gap
    assert_checks_clean(path)


# -- re-linking -----------------------------------------------------------------------

def test_a_base_with_a_full_bat_becomes_a_diff_by_moving_its_bat(tmp_path):
    """131041 blocks fill a 1 MiB BAT exactly; as a diff it needs 32 more entries."""
    parent, child = tmp_path / "p.vhdx", tmp_path / "c.vhdx"
    size = 131041 * MiB
    writes = [(0, 4096, 0x71), (size - MiB, MiB, 0x72)]
    make_base(parent, size, [(MiB, MiB, 0x70)])  # its BAT is 1 MiB too
    make_base(child, size, writes)
    assert h.regions(child)["BAT"].length == MiB
    with Disk() as disk:
        disk.open(parent, flags=OpenFlags.READONLY)
        link = disk.parent_link(0)
        disk.open(child, flags=OpenFlags.INFO)
        disk.image(1).check_parent(link)
        disk.image(1).set_parent(link)
    assert h.regions(child, 0) == h.regions(child, 1)
    assert h.regions(child)["BAT"] == vh.Region(vh.BAT_GUID, 6 * MiB, 2 * MiB, True)
    assert struct.unpack("<II", h.metadata_item(child, vm.FILE_PARAMETERS))[1] == \
        vm.FILE_HAS_PARENT
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert len(disk) == 2
        assert disk.read(0, 2 * MiB) == b"\x71" * 4096 + bytes(MiB - 4096) + b"\x70" * MiB
        assert disk.read(size - MiB, MiB) == b"\x72" * MiB
    assert_checks_clean(child)


def test_relinking_is_refused_up_front_when_it_cannot_be_stored(tmp_path):
    """A diff with a partially present block cannot become a base: merge says so
    before moving any data."""
    base, diff = tmp_path / "b.vhdx", tmp_path / "d.vhdx"
    make_base(base)
    with open_chain(base) as disk:
        disk.create_diff(diff, "VHDX", config={"block_size": "1M"})
        disk.write(5 * MiB, b"\x61" * MiB)
    make_partial(diff, 5, [(0, 8)])
    before = diff.read_bytes()
    with open_chain(diff) as disk:
        with pytest.raises(errors.NotSupported, match="partially present"):
            disk.image(1).check_parent(None)
        with pytest.raises(errors.NotSupported, match="partially present"):
            merge(disk, 0, 1)
    assert diff.read_bytes() == before


def test_a_diff_becoming_a_base_drops_its_sector_bitmaps(tmp_path):
    """Merged into its parent's place, a diff keeps no sector bitmap: the space is
    reported as a leak, and the repair gives it back."""
    base, diff = tmp_path / "b.vhdx", tmp_path / "d.vhdx"
    make_base(base)
    with open_chain(base) as disk:
        disk.create_diff(diff, "VHDX", config={"block_size": "1M"})
        disk.write(5 * MiB, b"\x61" * MiB)
    make_partial(diff, 5, [(0, 8)])
    with open_chain(diff) as disk:
        disk.write(5 * MiB, b"\x62" * MiB)  # the block is whole again
        model = disk.read(0, SIZE)
        merge(disk, 0, 1)
    assert h.bat(diff, 4097)[4096] == 0
    report = repair(diff, flags=RepairFlags.DRY_RUN)
    assert [p.severity for p in report.problems] == ["leak"]
    assert repair(diff).clean
    assert_qemu_agrees(diff, model, tmp_path)


# -- crashes ----------------------------------------------------------------------------

def crash_everywhere(tmp_path: Path, make: Callable[[Path], None],
                     operation: Callable[[Disk], None], look: Callable[[Disk], bytes],
                     after: bytes | None = None) -> int:
    """Run ``operation`` cut short after N writes for N = 0, 1, ... until it
    completes: every outcome opens, and ``look`` sees it as before or after."""
    make(tmp_path / "original.vhdx")
    with open_chain(tmp_path / "original.vhdx", OpenFlags.READONLY) as disk:
        before = look(disk)
    n = 0
    while True:
        path = tmp_path / f"run{n}.vhdx"
        shutil.copyfile(tmp_path / "original.vhdx", path)
        disk = open_chain(path, io=FaultyProvider(FileProvider(), Fault(after_writes=n)))
        try:
            operation(disk)
            disk.close_all()
            completed = True
        except SimulatedCrash:
            for index in range(len(disk)):
                disk.image(index).abandon()
            completed = False
        with open_chain(path, OpenFlags.READONLY) as disk:
            seen = look(disk)
        assert seen in (before, after or before), f"crash after {n} writes"
        with open_chain(path) as disk:  # replays what a crash left in the log
            assert look(disk) == seen
        if completed:
            assert seen == (after or before)
            return n
        path.unlink()
        n += 1


def with_free_space(path: Path) -> None:
    """Blocks 0-2 read zeros: compaction frees them and moves the last blocks down."""
    make_base(path)
    with open_chain(path) as disk:
        disk.write(0, bytes(3 * MiB))


def test_compaction_survives_a_crash_anywhere(tmp_path):
    def look(disk):
        return disk.read(0, SIZE)

    assert crash_everywhere(tmp_path, with_free_space, compact, look) > 5


def grown(path: Path) -> None:
    """Grown to 160 GiB (the BAT moved after the blocks, one block far out), then
    blocks 0-2 released: packing moves the BAT back down too."""
    make_base(path)
    with open_chain(path) as disk:
        resize(disk, 160 * GiB)
        disk.write(100 * GiB, b"\x51" * 4096)
        disk.image(0).unmap(0, 3 * MiB, zero=False)


def test_moving_the_bat_down_survives_a_crash_anywhere(tmp_path):
    def look(disk):
        return disk.read(0, SIZE) + disk.read(100 * GiB, MiB)

    last = crash_everywhere(tmp_path, grown, lambda disk: disk.image(0).pack(), look)
    assert last > 5
    assert h.regions(tmp_path / f"run{last}.vhdx")["BAT"].offset == 4 * MiB


def test_growing_and_moving_the_bat_survives_a_crash_anywhere(tmp_path):
    def look(disk):
        return disk.size.to_bytes(8, "little") + disk.read(0, SIZE) + \
            disk.read(disk.size - MiB, MiB)

    after = (256 * GiB).to_bytes(8, "little") + expected(SIZE, WRITES) + bytes(MiB)
    assert crash_everywhere(tmp_path, make_base, lambda d: resize(d, 256 * GiB), look,
                            after) > 3


@pytest.mark.interop
def test_qemu_replays_a_pending_move_of_the_bat(tmp_path):
    """A crash can leave the log entry that names the moved BAT (both region tables
    and the disk size, below 1 MiB and in the metadata) unapplied: qemu replays it."""
    make_base(tmp_path / "original.vhdx")
    for n in range(40):
        path = tmp_path / f"run{n}.vhdx"
        shutil.copyfile(tmp_path / "original.vhdx", path)
        disk = open_chain(path, io=FaultyProvider(FileProvider(), Fault(after_writes=n)))
        try:
            resize(disk, 160 * GiB)
        except SimulatedCrash:
            disk.image(0).abandon()
        with open_chain(path, OpenFlags.READONLY) as disk:
            replayed_size = disk.size
        if h.current_header(path).log_guid.int and replayed_size == 160 * GiB:
            break
    else:
        pytest.fail("no crash point left the move of the BAT in the log")
    assert h.regions(path)["BAT"].offset == 2 * MiB  # not applied yet
    result = qemu.qemu_img("check", "-r", "all", "-f", "vhdx", path, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert h.regions(path, 0) == h.regions(path, 1)
    assert h.regions(path)["BAT"].offset == 12 * MiB
    assert qemu.info(path, "vhdx")["virtual-size"] == 160 * GiB
    qemu.qemu_io(path, "vhdx", "read -P 0x23 9M 1M", "read -P 0x21 0 3M", "read -P 0 150G 1M")
