"""VHD compaction, discard, resize and re-linking, against a bytearray model and qemu."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tests import qemu
from vdgui.engine import (
    Capability,
    Disk,
    Geometry,
    ImageFlags,
    OpenFlags,
    errors,
    open_chain,
)
from vdgui.engine.formats.vhd import VhdImage, space
from vdgui.engine.formats.vhd import footer as vf
from vdgui.engine.formats.vhd.geometry import chs_bytes, chs_geometry
from vdgui.engine.io import Fault, FaultyProvider, FileProvider, default_provider
from vdgui.engine.io.faulty import SimulatedCrash
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.rebase import rebase
from vdgui.engine.ops.repair import repair
from vdgui.engine.ops.resize import resize
from vdgui.engine.types import RepairFlags

from .helpers import MiB, bat, patch_footer, poke, read_footer, read_header

KiB = 1024
BLOCK = 256 * KiB
SPAN = BLOCK + 512
SMALL = {"BlockSize": str(BLOCK)}


def make(path, size, writes=(), flags=OpenFlags.NORMAL, image_flags=ImageFlags.NONE):
    """A base image with ``writes``; returns its model (the disk's bytes)."""
    model = bytearray(size)
    with Disk() as disk:
        disk.create_base(path, size, backend="VHD", config=SMALL, image_flags=image_flags,
                         open_flags=flags)
        for offset, data in writes:
            disk.write(offset, data)
            model[offset:offset + len(data)] = data
    return model


def content(path) -> bytes:
    with open_chain(path, OpenFlags.READONLY) as disk:
        return disk.read(0, disk.size)


def footers_agree(path) -> bool:
    raw = path.read_bytes()
    return raw[:512] == raw[-512:] and vf.checksum(raw[-512:], 64) == read_footer(path)[
        "checksum"]


def qemu_reads(path, model, tmp_path) -> bool:
    reference = tmp_path / "model.raw"
    reference.write_bytes(bytes(model))
    return (qemu.info(path, "vpc")["virtual-size"] == len(model)
            and qemu.compare(path, "vpc", reference, "raw"))


def clean(path) -> bool:
    return repair(path, flags=RepairFlags.DRY_RUN).clean


# -- what the backend declares --------------------------------------------------------------

def test_declared_hooks_and_fields(tmp_path):
    info = VhdImage.info
    assert info.has(Capability.DISCARD)
    assert info.stores == {"uuid", "parent_uuid", "pchs", "parent_path"}
    make(tmp_path / "f.vhd", MiB, image_flags=ImageFlags.FIXED)
    image = VhdImage.open(default_provider(), str(tmp_path / "f.vhd"), OpenFlags.NORMAL)
    try:
        assert not image.can_mark_zero
        with pytest.raises(errors.NotSupported, match="fixed"):
            image.unmap(0, MiB, zero=False)
        with pytest.raises(errors.NotSupported, match="fixed"):
            image.pack()
        from vdgui.engine.formats.base import ParentLink
        with pytest.raises(errors.NotSupported, match="fixed"):
            image.check_parent(ParentLink(None, None, "p.vhd", "VHD"))
        image.check_parent(None)
        image.set_parent(None)  # nothing to do
    finally:
        image.close()


# -- compaction --------------------------------------------------------------------------------

@pytest.mark.interop
def test_compacting_a_base_frees_zero_blocks_moves_the_last_ones_and_cuts_the_file(tmp_path):
    path = tmp_path / "b.vhd"
    writes = [(i * BLOCK, bytes([i + 1]) * BLOCK) for i in range(8)]
    writes += [(2 * BLOCK, bytes(BLOCK)), (5 * BLOCK, bytes(BLOCK)), (3 * BLOCK + 7, b"x")]
    model = make(path, 3 * MiB, writes, OpenFlags.HONOR_ZEROES)
    assert len([e for e in bat(path) if e != vf.BAT_FREE]) == 8
    with open_chain(path) as disk:
        plan = compact(disk)
        assert (plan.zero, plan.same_as_below) == (0, 2 * BLOCK)  # a base: "same as below"
        assert disk.read(0, 3 * MiB) == model
    entries = [e for e in bat(path) if e != vf.BAT_FREE]
    assert len(entries) == 6
    # every block lies back to back after the BAT; the footer right after the last one
    assert sorted(e * 512 for e in entries) == [0x800 + i * SPAN for i in range(6)]
    assert path.stat().st_size == 0x800 + 6 * SPAN + 512
    assert footers_agree(path) and clean(path)
    assert content(path) == model
    assert qemu_reads(path, model, tmp_path)


@pytest.mark.interop
def test_compacting_qemus_image(tmp_path):
    path = tmp_path / "q.vhd"
    qemu.qemu_img("create", "-f", "vpc", path, "8M")  # 2 MiB blocks
    qemu.qemu_io(path, "vpc", "write -P 0 0 2M", "write -P 0x41 2M 4k",
                 "write -P 0 4M 2M", "write -P 0x42 6M 4k")  # qemu stores zeros too
    model = qemu.to_raw(path, "vpc", tmp_path / "before.raw")
    size = path.stat().st_size
    with open_chain(path) as disk:
        assert compact(disk).same_as_below == 4 * MiB
    assert path.stat().st_size == size - 2 * (2 * MiB + 512)
    assert qemu_reads(path, model, tmp_path) and clean(path)
    assert read_footer(path)["creator_app"] == b"qemu"  # unchanged: no resize


def test_compacting_a_diff_keeps_zeros_that_hide_the_parent(tmp_path):
    """VirtualBox freed all-zero blocks of differencing VHDs, showing the parent's
    data again; here they stay unless the parent reads zeros there too."""
    base, diff = tmp_path / "base.vhd", tmp_path / "diff.vhd"
    make(base, 2 * MiB, [(0, b"\x11" * (4 * BLOCK))])
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(diff, backend="VHD", config=SMALL, open_flags=OpenFlags.HONOR_SAME)
        disk.write(0, bytes(BLOCK))                    # zeros over parent data: kept
        disk.write(BLOCK, b"\x11" * BLOCK)             # same as the parent: freed
        disk.write(5 * BLOCK, bytes(BLOCK))            # zeros over parent zeros: freed
        disk.write(6 * BLOCK, b"\x22" * BLOCK)         # data: kept
        model = disk.read(0, 2 * MiB)
    assert len([e for e in bat(diff) if e != vf.BAT_FREE]) == 4
    with open_chain(diff) as disk:
        plan = compact(disk)
        assert (plan.same_as_below, plan.kept_zero) == (2 * BLOCK, BLOCK)
        assert disk.read(0, 2 * MiB) == model
    assert [i for i, e in enumerate(bat(diff)) if e != vf.BAT_FREE] == [0, 6]
    assert content(diff) == model and clean(diff) and footers_agree(diff)


def test_pack_moves_locator_data_down_too(tmp_path):
    base, diff = tmp_path / "base.vhd", tmp_path / "diff.vhd"
    make(base, MiB)
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(diff, backend="VHD", config=SMALL)
        disk.write(0, b"\x01" * (3 * BLOCK))
    deep = tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 200)
    deep.mkdir(parents=True)
    shutil.copy(base, deep / "base.vhd")
    with Disk() as disk:
        disk.open(diff, flags=OpenFlags.INFO)
        disk.image(0).parent_filename = str(deep / "base.vhd")  # too long: data appended
        image = disk.image(0)
        locator_end = max(stop for _, stop in image._locator_ranges().values())
        assert locator_end > max(e * 512 + SPAN for e in bat(diff) if e != vf.BAT_FREE)
        image.unmap(BLOCK, BLOCK, zero=False)
        image.pack()
        ranges = image._locator_ranges()
    top = max(e * 512 + SPAN for e in bat(diff) if e != vf.BAT_FREE)
    assert all(stop <= top for _, stop in ranges.values())
    assert diff.stat().st_size == top + 512 and clean(diff)
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.images[0].path == str(deep / "base.vhd")
        assert disk.read(0, 3 * BLOCK) == b"\x01" * BLOCK + bytes(BLOCK) + b"\x01" * BLOCK


def test_compaction_plan_fills_holes_from_the_end():
    fixed = [(0, 512), (512, 1536), (1536, 2048)]
    starts = np.array([2048, 2048 + 3 * 100, 2048 + 5 * 100], dtype=np.int64)
    moves, end = space.plan_compaction(fixed, {3: (2048 + 100, 2048 + 150)},
                                       np.array([0, 1, 2]), starts, 100)
    # the last block goes to the first hole big enough (after the locator's data, the
    # hole at 2198 is 150 bytes); the locator, last but one, stays below it
    assert [(m.block, m.source, m.target) for m in moves] == [(2, 2548, 2198)]
    assert end == 2048 + 4 * 100
    starts, ends = np.array([200, 0]), np.array([300, 10])
    assert space.leaked(starts, ends, 1000, 100) == (190 + 700, 10)
    assert space.leaked(starts, ends, 1000, 200) == (700, 300)
    assert space.leaked(np.array([0, 5]), np.array([400, 50]), 1000, 100) == (600, 400)


# -- discard -------------------------------------------------------------------------------------

@pytest.mark.interop
def test_discard_frees_blocks_of_a_base_and_zeros_a_diff(tmp_path):
    base, diff = tmp_path / "base.vhd", tmp_path / "diff.vhd"
    model = make(base, 2 * MiB, [(0, b"\x33" * (2 * MiB))])
    ranges = [(BLOCK + 512, 2 * BLOCK), (6 * BLOCK, 2 * BLOCK)]
    for offset, length in ranges:
        model[offset:offset + length] = bytes(length)
    size = base.stat().st_size
    with open_chain(base, OpenFlags.DISCARD) as disk:
        discard(disk, ranges)
        assert disk.read(0, 2 * MiB) == model
    assert bat(base)[2] == bat(base)[6] == bat(base)[7] == vf.BAT_FREE
    assert base.stat().st_size == size - 3 * SPAN
    assert qemu_reads(base, model, tmp_path) and clean(base)
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(diff, backend="VHD", config=SMALL)
        disk.write(0, b"\x44" * MiB)
    model[:MiB] = b"\x44" * MiB
    with open_chain(diff, OpenFlags.DISCARD) as disk:
        discard(disk, [(0, BLOCK)])  # no zero marker: the diff stores zeros
        model[:BLOCK] = bytes(BLOCK)
        assert disk.read(0, 2 * MiB) == model
    assert bat(diff)[0] != vf.BAT_FREE and content(diff) == model


# -- resizing: dynamic ---------------------------------------------------------------------------

@pytest.mark.interop
def test_growing_moves_the_blocks_the_table_needs_and_reads_in_qemu(tmp_path):
    path = tmp_path / "g.vhd"
    model = make(path, MiB, [(0, os.urandom(MiB))])
    first = min(bat(path)) * 512
    assert first == 0x800  # right after the 4-entry table: in the way of a larger one
    with Disk() as disk:
        disk.open(path)
        resize(disk, 64 * MiB)  # 256 entries: 1024 bytes of table
        assert disk.size == 64 * MiB
        disk.write(64 * MiB - 3, b"end")
    model += bytes(63 * MiB)
    model[-3:] = b"end"
    header = read_header(path)
    assert header["max_table_entries"] == 256
    assert min(e for e in bat(path) if e != vf.BAT_FREE) * 512 >= 0x600 + 1024
    footer = read_footer(path)
    assert footer["current_size"] == 64 * MiB and footer["original_size"] == MiB
    assert footer["creator_app"] == b"qem2" and footers_agree(path)
    assert content(path) == model and clean(path)
    assert qemu_reads(path, model, tmp_path)


@pytest.mark.interop
def test_growing_an_empty_image_moves_the_footer_past_the_new_table(tmp_path):
    path = tmp_path / "e.vhd"
    make(path, MiB)
    assert path.stat().st_size == 0x800 + 512
    with Disk() as disk:
        disk.open(path)
        resize(disk, 2 * 1024 * MiB)  # 8192 entries: 32 KiB of table past the footer
    assert path.stat().st_size == 0x600 + 32 * KiB + 512
    assert set(bat(path)) == {vf.BAT_FREE} and footers_agree(path) and clean(path)
    qemu.qemu_io(path, "vpc", "write -P 0x5a 1G 4k")
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk.read(1024 * MiB, 4096) == b"\x5a" * 4096 and disk.read(0, 4) == bytes(4)


def test_growing_a_diff_moves_its_locators(tmp_path):
    base, diff = tmp_path / "base.vhd", tmp_path / "diff.vhd"
    make(base, MiB, [(0, b"\x01" * MiB)])
    with Disk() as disk:
        disk.open(base)
        disk.create_diff(diff, backend="VHD", config=SMALL)
        disk.write(BLOCK, b"\x02" * 512)
    locators = [e["data_offset"] for e in vf.unpack_locators(read_header(diff)["locators"])[:2]]
    assert locators == [0x800, 0xC00]  # right after the table
    with open_chain(diff) as disk:
        resize(disk, 64 * MiB)  # 1024 bytes of table: up to 0xA00
        disk.write(60 * MiB, b"\x03")
    moved, kept = vf.unpack_locators(read_header(diff)["locators"])[:2]
    assert moved["data_offset"] >= 0xA00 and kept["data_offset"] == 0xC00
    assert moved["data_space"] == -(-moved["data_length"] // 512) * 512
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.count == 2 and disk.size == 64 * MiB
        assert disk.read(0, 2) == b"\x01\x01" and disk.read(BLOCK, 1) == b"\x02"
        assert disk.read(MiB, 4) == bytes(4) and disk.read(60 * MiB, 1) == b"\x03"
        assert dict(disk.image(1).parent_locators())["W2ru"] == ".\\base.vhd"
    assert clean(diff) and footers_agree(diff)


def test_shrinking_only_when_nothing_is_stored_beyond(tmp_path):
    path = tmp_path / "s.vhd"
    size = 8 * BLOCK
    make(path, size, [(BLOCK, b"keep"), (6 * BLOCK, b"far"), (3 * BLOCK + 600, b"tail")])
    with Disk() as disk:
        disk.open(path)
        with pytest.raises(errors.ShrinkNotSupported, match=str(6 * BLOCK)):
            resize(disk, 4 * BLOCK)
        disk.write(6 * BLOCK, bytes(3))
        compact(disk)
        # the block of the new end holds data after it: refused, naming the byte
        with pytest.raises(errors.ShrinkNotSupported, match=str(3 * BLOCK + 600)):
            resize(disk, 3 * BLOCK + 512)
        resize(disk, 3 * BLOCK + 1024)
        assert disk.size == 3 * BLOCK + 1024 and disk.read(BLOCK, 4) == b"keep"
    assert read_header(path)["max_table_entries"] == 4
    assert read_footer(path)["current_size"] == 3 * BLOCK + 1024 and clean(path)
    with Disk() as disk:
        disk.open(path)
        resize(disk, 8 * BLOCK)  # growing again: zeros after the old end
        assert disk.read(3 * BLOCK, BLOCK) == bytes(600) + b"tail" + bytes(BLOCK - 604)


@pytest.mark.interop
@pytest.mark.parametrize("creator, size, kept", [
    (b"qemu", chs_bytes(chs_geometry(20 * MiB)), True),   # an exact CHS product
    (b"qemu", 20 * MiB, False),
    (b"vbox", 20 * MiB, False),
    (b"win ", 20 * MiB + 512, True),
])
def test_size_rule_after_resizing(tmp_path, creator, size, kept):
    """qemu takes the size from the geometry for some creators: after a resize it
    must still read the size we do (qemu cannot resize VHD images itself)."""
    path = tmp_path / "c.vhd"
    make(path, 10 * MiB)
    g = chs_geometry(10 * MiB)
    patch_footer(path, creator_app=creator, current_size=chs_bytes(g))
    with Disk() as disk:
        disk.open(path)
        resize(disk, size)
        assert disk.size == size
    f = read_footer(path)
    assert (f["creator_app"] == creator) is kept
    assert qemu.info(path, "vpc")["virtual-size"] == size
    if creator == b"qemu" and kept:
        assert Geometry(f["cylinders"], f["heads"], f["sectors"]) == chs_geometry(size)


@pytest.mark.interop
def test_resizing_qemus_own_image(tmp_path):
    path = tmp_path / "q.vhd"
    qemu.qemu_img("create", "-f", "vpc", path, "4M")
    qemu.qemu_io(path, "vpc", "write -P 0x61 0 1M", "write -P 0x62 3M 512k")
    model = bytearray(qemu.to_raw(path, "vpc", tmp_path / "before.raw"))
    with Disk() as disk:
        disk.open(path)
        resize(disk, 64 * MiB)
        disk.write(60 * MiB, b"\x63" * 4096)
    model += bytes(64 * MiB - len(model))
    model[60 * MiB:60 * MiB + 4096] = b"\x63" * 4096
    assert qemu_reads(path, model, tmp_path) and footers_agree(path) and clean(path)


# -- resizing: fixed -----------------------------------------------------------------------------

@pytest.mark.interop
def test_fixed_grow_and_shrink(tmp_path):
    path = tmp_path / "f.vhd"
    model = make(path, 3 * MiB, [(0, b"\x01" * MiB), (2 * MiB, b"\x02" * 100)],
                 image_flags=ImageFlags.FIXED)
    with Disk() as disk:
        disk.open(path)
        resize(disk, 5 * MiB + 512)
        assert disk.read(0, 3 * MiB) == model and disk.read(3 * MiB, 512) == bytes(512)
        disk.write(5 * MiB, b"\x03" * 512)
    model += bytes(2 * MiB) + b"\x03" * 512
    assert path.stat().st_size == 5 * MiB + 1024
    f = read_footer(path)
    assert (f["disk_type"], f["current_size"]) == (2, 5 * MiB + 512)
    assert qemu_reads(path, model, tmp_path)
    with Disk() as disk:
        disk.open(path)
        with pytest.raises(errors.ShrinkNotSupported, match=str(5 * MiB)):
            resize(disk, 4 * MiB)
        disk.write(5 * MiB, bytes(512))
        resize(disk, 2 * MiB + 512)
    assert path.stat().st_size == 2 * MiB + 1024
    assert qemu_reads(path, model[:2 * MiB + 512], tmp_path) and clean(path)


def test_fixed_grow_zeroes_what_a_geometry_sized_disk_did_not_show(tmp_path):
    path = tmp_path / "v.vhd"
    make(path, 10 * MiB, image_flags=ImageFlags.FIXED)
    patch_footer(path, creator_app=b"vpc ")  # Virtual PC: the size is the CHS product
    shown = chs_bytes(chs_geometry(10 * MiB))
    poke(path, shown, b"\xee" * (10 * MiB - shown))  # invisible bytes past the disk
    with Disk() as disk:
        disk.open(path)
        assert disk.size == shown
        resize(disk, 11 * MiB)
        assert disk.read(shown, 11 * MiB - shown) == bytes(11 * MiB - shown)
    assert read_footer(path)["creator_app"] == b"qem2"


def test_saved_state_forbids_compaction_and_resizing(tmp_path):
    path = tmp_path / "saved.vhd"
    make(path, MiB, [(0, b"x")])
    patch_footer(path, saved_state=1)
    with Disk() as disk:
        disk.open(path)
        with pytest.raises(errors.InvalidState, match="saved state"):
            resize(disk, 2 * MiB)
        with pytest.raises(errors.InvalidState, match="saved state"):
            compact(disk)


# -- interruptions ---------------------------------------------------------------------------------

def test_a_failed_fixed_growth_moves_the_footer_back(tmp_path):
    from vdgui.engine import Cancelled, Progress
    path = tmp_path / "f.vhd"
    make(path, MiB, [(0, b"\x01" * 512)], image_flags=ImageFlags.FIXED)
    before = path.read_bytes()

    def cancel(done, total, stage):
        if stage == "allocating":
            raise Cancelled()

    with Disk() as disk:
        disk.open(path)
        with pytest.raises(Cancelled):
            disk.image(0).resize(200 * MiB, Progress(cancel))
        assert disk.image(0).size == MiB
    assert path.read_bytes() == before


@pytest.mark.parametrize("operation", ["grow fixed", "shrink fixed", "grow dynamic", "pack"])
def test_interrupted_operations_leave_old_or_new(tmp_path, operation):
    fixed = "fixed" in operation
    pristine = tmp_path / "p.vhd"
    model = make(pristine, MiB, [(0, b"\x01" * (BLOCK + 5)), (2 * BLOCK, b"\x03" * 10)],
                 image_flags=ImageFlags.FIXED if fixed else ImageFlags.NONE)

    def run(disk):
        if operation == "pack":
            disk.image(0).unmap(0, 2 * BLOCK, zero=False)  # two holes, then compaction
            disk.image(0).pack()
        else:
            resize(disk, {"grow fixed": 2 * MiB, "shrink fixed": MiB - BLOCK,
                          "grow dynamic": 64 * MiB}[operation])

    after = {"pack": bytes(2 * BLOCK) + bytes(model[2 * BLOCK:]),
             "shrink fixed": bytes(model[:MiB - BLOCK])}.get(operation, bytes(model))
    budget = 0
    while True:
        path = tmp_path / f"w{budget}.vhd"
        shutil.copy(pristine, path)
        try:
            with Disk(io=FaultyProvider(FileProvider(), Fault(after_writes=budget))) as disk:
                disk.open(path)
                run(disk)
            done = True
        except SimulatedCrash:
            done = False
        seen = content(path)
        assert seen[:len(after)] in (bytes(model[:len(after)]), after), budget
        assert seen[len(after):] == bytes(len(seen) - len(after)), budget
        report = repair(path, flags=RepairFlags.DRY_RUN)
        assert all(p.severity != "error" for p in report.problems), (budget, report)
        if done:
            assert clean(path)
            return
        budget += 1


# -- re-linking ---------------------------------------------------------------------------------------

def test_a_base_gaining_a_parent_keeps_reading_its_blocks_whole(tmp_path):
    """A foreign base block with clear bitmap bits reads whole; as a child it must
    not start showing the parent through those sectors."""
    other, path = tmp_path / "other.vhd", tmp_path / "b.vhd"
    make(other, MiB, [(0, b"\x77" * MiB)])
    model = make(path, MiB, [(0, b"\x11" * BLOCK)])
    poke(path, bat(path)[0] * 512, bytes(16))  # sectors 0..127 marked absent
    assert content(path) == model
    rebase(path, other, unsafe=True)
    assert read_footer(path)["disk_type"] == vf.DISK_DIFFERENCING
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.count == 2
        assert disk.read(0, BLOCK) == b"\x11" * BLOCK
        assert disk.read(BLOCK, 4) == b"\x77" * 4
    assert footers_agree(path) and clean(path)


def test_safe_rebase_onto_another_base_keeps_the_content(tmp_path):
    old, new, diff = tmp_path / "old.vhd", tmp_path / "new.vhd", tmp_path / "diff.vhd"
    make(old, MiB, [(0, b"\x01" * MiB)])
    make(new, MiB, [(BLOCK, b"\x02" * BLOCK)])
    with Disk() as disk:
        disk.open(old)
        disk.create_diff(diff, backend="VHD", config=SMALL)
        disk.write(2 * BLOCK + 5, b"diff")
    before = content(diff)
    rebase(diff, new)
    assert content(diff) == before
    assert read_header(diff)["parent_uuid"] == read_footer(new)["uuid"]
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.images[0].path == str(new)
    assert clean(diff) and footers_agree(diff)


def test_random_operations_against_a_model(tmp_path):
    """Writes, releases, compactions, growth and shrinking in random order: the
    image always reads as the model, and ends clean."""
    import random
    rng = random.Random(7)
    unit = 64 * KiB
    path = tmp_path / "r.vhd"
    size = 16 * unit
    model = bytearray(size)
    with Disk() as disk:
        disk.create_base(path, size, backend="VHD", config={"BlockSize": str(unit)})
        image = disk.image(0)
        for _ in range(60):
            action = rng.choice(["write", "write", "release", "pack", "grow", "shrink"])
            if action == "write":
                offset = rng.randrange(0, size - 512)
                data = bytes([rng.randrange(1, 256)]) * rng.randrange(1, 3 * unit)
                data = data[:size - offset]
                disk.write(offset, data)
                model[offset:offset + len(data)] = data
            elif action == "release":
                block = rng.randrange(size // unit)
                image.unmap(block * unit, unit, zero=False)
                model[block * unit:(block + 1) * unit] = bytes(unit)
            elif action == "pack":
                image.pack()
            elif action == "grow":
                new = size + rng.randrange(1, 40) * 4096
                resize(disk, new)
                model += bytes(new - size)
                size = new
            else:
                new = max(unit, size - rng.randrange(1, 8) * 4096)
                try:
                    resize(disk, new)
                except errors.ShrinkNotSupported:
                    assert any(model[new:])
                else:
                    assert not any(model[new:])
                    del model[new:]
                    size = new
            assert disk.size == size and disk.read(0, size) == model, action
        leaks = repair(path, flags=RepairFlags.DRY_RUN).problems
        assert all(p.severity == "leak" for p in leaks)  # released, not yet compacted
        image.pack()
    assert content(path) == model and clean(path) and footers_agree(path)
