"""Compaction, discard, shrinking and re-linking of VMDK images, against a bytearray
model and qemu-img (check, compare, info)."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from tests import qemu
from vdgui.engine import Disk, ImageFlags, OpenFlags, open_chain
from vdgui.engine.errors import InvalidParameter, NotSupported, ShrinkNotSupported
from vdgui.engine.formats.base import ParentLink
from vdgui.engine.formats.vmdk.packing import Movable, plan_pack
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.merge import merge
from vdgui.engine.ops.resize import resize

MiB = 1 << 20
GRAIN = 65536
ZEROED = {"ZeroedGrain": "1"}

pytestmark = pytest.mark.skipif(not qemu.have_qemu(), reason="qemu-img is not installed")


def header(path: Path) -> dict:
    names = ("version", "flags", "capacity", "grain", "desc_offset", "desc_size", "gtes",
             "rgd", "gd", "overhead")
    return dict(zip(names, struct.unpack_from("<IIQQQQIQQQ", path.read_bytes(), 4)))


def tables(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every grain table entry, then every redundant one (in directory order)."""
    raw = path.read_bytes()
    h = header(path)
    count = -(-h["capacity"] // (h["gtes"] * h["grain"]))

    def walk(directory: int) -> np.ndarray:
        gd = np.frombuffer(raw, "<u4", count, directory * 512)
        return np.concatenate([np.frombuffer(raw, "<u4", h["gtes"], int(s) * 512)
                               if s else np.zeros(h["gtes"], "<u4") for s in gd])
    return walk(h["gd"]), walk(h["rgd"])


def raw_of(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "model.raw"
    path.write_bytes(content)
    return path


def agrees_with_qemu(path: Path, model: bytes, tmp_path: Path) -> None:
    assert qemu.check(path, "vmdk").returncode == 0, qemu.check(path, "vmdk").stdout
    assert qemu.compare(path, "vmdk", raw_of(tmp_path, model), "raw")


@pytest.mark.parametrize("config", [{}, ZEROED], ids=["v1", "zeroed"])
def test_unmap_and_pack_match_the_model(tmp_path: Path, config: dict) -> None:
    path = tmp_path / "d.vmdk"
    size = 8 * MiB
    rng = random.Random(7)
    model = bytearray(size)
    with Disk() as disk:
        disk.create_base(path, size, "VMDK", config=config)
        for grain in rng.sample(range(size // GRAIN), 60):
            data = bytes([rng.randrange(1, 256)]) * GRAIN
            disk.write(grain * GRAIN, data)
            model[grain * GRAIN:(grain + 1) * GRAIN] = data
        image = disk.image(0)
        assert image.can_mark_zero == bool(config)
        before = os.path.getsize(path)
        held = [g for g in range(size // GRAIN) if model[g * GRAIN]]
        freed = held[::3]
        for grain in freed:
            image.unmap(grain * GRAIN, GRAIN, zero=bool(config))
            model[grain * GRAIN:(grain + 1) * GRAIN] = bytes(GRAIN)
        assert disk.read(0, size) == model  # released, not yet packed
        assert os.path.getsize(path) == before
        image.pack()
        assert disk.read(0, size) == model
        assert os.path.getsize(path) == before - len(freed) * GRAIN
        disk.write(freed[0] * GRAIN + 5, b"after")  # new grains go to the new end
        model[freed[0] * GRAIN + 5:freed[0] * GRAIN + 10] = b"after"
    assert os.path.getsize(path) == before - (len(freed) - 1) * GRAIN
    primary, mirror = tables(path)
    assert np.array_equal(primary, mirror)
    if config:
        assert int(np.count_nonzero(primary == 1)) == len(freed) - 1
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(0, size) == model
    agrees_with_qemu(path, bytes(model), tmp_path)


def test_compact_a_chain(tmp_path: Path) -> None:
    base, diff = tmp_path / "base.vmdk", tmp_path / "diff.vmdk"
    with Disk() as disk:
        disk.create_base(base, 4 * MiB, "VMDK")
        disk.write(0, b"\x11" * (2 * MiB))
        disk.write(MiB, bytes(MiB))  # zeros, allocated (version 1: no zero grains)
        disk.create_diff(diff, "VMDK", config=ZEROED,
                         open_flags=OpenFlags.HONOR_SAME | OpenFlags.HONOR_ZEROES)
        disk.write(0, b"\x11" * (4 * GRAIN))          # same as the parent
        disk.write(8 * GRAIN, bytes(2 * GRAIN))       # zeros over the parent's data
        disk.write(20 * GRAIN, b"\x22" * (3 * GRAIN))  # real data
        model = disk.read(0, 4 * MiB)
    size_before = os.path.getsize(diff)
    with open_chain(diff) as disk:
        plan = compact(disk)
        assert (plan.same_as_below, plan.zero) == (4 * GRAIN, 2 * GRAIN)
        assert disk.read(0, 4 * MiB) == model
        held = [(e.offset, e.length, e.zero) for e in disk.map() if e.depth == 1]
        assert held == [(8 * GRAIN, 2 * GRAIN, True), (20 * GRAIN, 3 * GRAIN, False)]
    assert os.path.getsize(diff) == size_before - 6 * GRAIN
    with open_chain(base) as disk:
        plan = compact(disk)
        assert plan.same_as_below == MiB  # a free grain of a base reads zeros
    assert os.path.getsize(base) == header(base)["overhead"] * 512 + MiB
    assert qemu.check(base, "vmdk").returncode == 0
    assert qemu.check(diff, "vmdk").returncode == 0
    assert qemu.compare(diff, "vmdk", raw_of(tmp_path, model), "raw")


def test_discard(tmp_path: Path) -> None:
    base, diff = tmp_path / "base.vmdk", tmp_path / "diff.vmdk"
    with Disk() as disk:
        disk.create_base(base, 4 * MiB, "VMDK")
        disk.write(0, b"\x33" * (4 * MiB))
        disk.create_diff(diff, "VMDK", config=ZEROED)
        disk.write(0, b"\x44" * (2 * MiB))
    ranges = [(GRAIN, 4 * GRAIN), (7 * GRAIN + 512, 1024), (40 * GRAIN, 3 * GRAIN)]
    expected = bytearray(b"\x44" * (2 * MiB) + b"\x33" * (2 * MiB))
    for offset, length in ranges:
        expected[offset:offset + length] = bytes(length)
    with open_chain(diff, OpenFlags.DISCARD) as disk:
        discard(disk, ranges)
        assert disk.read(0, 4 * MiB) == expected
    assert os.path.getsize(diff) == header(diff)["overhead"] * 512 + 2 * MiB - 4 * GRAIN
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(0, 4 * MiB) == expected
    assert qemu.check(diff, "vmdk").returncode == 0
    assert qemu.compare(diff, "vmdk", raw_of(tmp_path, bytes(expected)), "raw")


def test_split_image_packs_each_extent(tmp_path: Path) -> None:
    path = tmp_path / "s.vmdk"
    size = 2047 * MiB + 4 * MiB
    with Disk() as disk:
        disk.create_base(path, size, "VMDK", ImageFlags.VMDK_SPLIT_2G)
        for offset in (0, 2 * GRAIN, 2047 * MiB - GRAIN, 2047 * MiB, 2047 * MiB + 3 * GRAIN):
            disk.write(offset, b"\x55" * GRAIN)
        disk.write(0, bytes(GRAIN))
        disk.write(2047 * MiB, bytes(GRAIN))
        compact(disk)
        assert disk.read(2 * GRAIN, 1) == b"\x55"
        assert disk.read(2047 * MiB - GRAIN, GRAIN) == b"\x55" * GRAIN
        assert disk.read(2047 * MiB + 3 * GRAIN, GRAIN) == b"\x55" * GRAIN
    for name, grains in (("s-s001.vmdk", 2), ("s-s002.vmdk", 1)):
        extent = tmp_path / name
        assert os.path.getsize(extent) == header(extent)["overhead"] * 512 + grains * GRAIN
    assert qemu.check(path, "vmdk").returncode == 0


def test_pack_leaves_tables_after_the_grains_in_place(tmp_path: Path) -> None:
    """A grown image has its directories and new tables among the grains."""
    path = tmp_path / "g.vmdk"
    with Disk() as disk:
        disk.create_base(path, 8 * MiB, "VMDK", config=ZEROED)
        disk.write(0, b"\x01" * (4 * GRAIN))
        resize(disk, 5 << 30)  # the directories move to the end of the file
        disk.write(3 << 30, b"\x02" * (4 * GRAIN))  # a new table, then grains
        disk.write(GRAIN, bytes(2 * GRAIN))
        disk.write((3 << 30) + GRAIN, bytes(GRAIN))
        before = os.path.getsize(path)
        compact(disk)
        assert os.path.getsize(path) == before - 3 * GRAIN
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(0, 4 * GRAIN) == b"\x01" * GRAIN + bytes(2 * GRAIN) + b"\x01" * GRAIN
        assert disk.read(3 << 30, 4 * GRAIN) == b"\x02" * GRAIN + bytes(GRAIN) + \
            b"\x02" * (2 * GRAIN)
    assert qemu.check(path, "vmdk").returncode == 0


def test_plan_pack_fills_holes_lowest_first() -> None:
    def plan(grains, tables, fixed):
        return plan_pack([Movable(np.array(grains), np.arange(len(grains)), 4),
                          Movable(np.array(tables), np.arange(len(tables)), 2)], fixed, 4)

    # Grains of 4 sectors, a table of 2 at 20; holes at 8..12 and 22..26.
    result = plan([4, 12, 16, 26, 30], [20], [(0, 4)])
    assert result.moves == [[(26, 8, 3), (30, 22, 4)], []]
    assert result.end == 26
    # A table after the grains moves down too, once the grains are in place.
    result = plan([4, 12], [30], [(0, 4)])
    assert result.moves == [[(12, 8, 1)], [(30, 12, 0)]] and result.end == 14
    assert plan([4, 8], [], [(0, 4)]).moves == [[], []]
    with pytest.raises(ValueError):
        plan([4, 6], [], [])


@pytest.mark.parametrize("flags", [ImageFlags.VMDK_STREAM_OPTIMIZED, ImageFlags.FIXED])
def test_streams_and_flat_images_cannot_be_compacted(tmp_path: Path, flags) -> None:
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB, "VMDK", flags)
        disk.write(0, bytes(GRAIN))
    stream = bool(flags & ImageFlags.VMDK_STREAM_OPTIMIZED)
    words = "streamOptimized" if stream else "FLAT"
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with open_chain(path) as disk:
        if not stream:  # a complete stream opens read-only: compact refuses that first
            with pytest.raises(NotSupported, match=words):
                compact(disk)
        for call in (lambda: disk.image(0).pack(),
                     lambda: disk.image(0).unmap(0, GRAIN, False)):
            with pytest.raises(NotSupported, match=words):
                call()
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


# -- shrinking -------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [ImageFlags.NONE, ImageFlags.FIXED])
def test_shrink_when_nothing_is_lost(tmp_path: Path, flags) -> None:
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, 16 * MiB, "VMDK", flags, config={} if flags else ZEROED)
        disk.write(MiB, b"keep")
        disk.write(12 * MiB + 100, b"data beyond")
        with pytest.raises(ShrinkNotSupported, match=str(12 * MiB + (0 if not flags else 100))):
            resize(disk, 8 * MiB)
        assert disk.size == 16 * MiB
        disk.write(12 * MiB + 100, bytes(11))
        if not flags:
            with pytest.raises(ShrinkNotSupported):  # the grain stays allocated
                resize(disk, 8 * MiB)
            compact(disk)
        # The new end cuts a grain holding "keep": only zeros may follow in it.
        with pytest.raises(ShrinkNotSupported, match=str(MiB)):
            resize(disk, MiB)
        resize(disk, MiB + 512)
        assert disk.size == MiB + 512 and disk.read(MiB, 4) == b"keep"
        resize(disk, 3 * MiB)  # and grow again: the new part reads zeros
        assert disk.read(MiB, 2 * MiB) == b"keep" + bytes(2 * MiB - 4)
    info = qemu.info(path, "vmdk")
    assert info["virtual-size"] == 3 * MiB
    assert qemu.check(path, "vmdk").returncode == 0
    model = bytearray(3 * MiB)
    model[MiB:MiB + 4] = b"keep"
    assert qemu.compare(path, "vmdk", raw_of(tmp_path, bytes(model)), "raw")


def test_shrink_split_drops_extents(tmp_path: Path) -> None:
    path = tmp_path / "s.vmdk"
    with Disk() as disk:
        disk.create_base(path, 2047 * MiB + 4 * MiB, "VMDK", ImageFlags.VMDK_SPLIT_2G)
        disk.write(10 * MiB, b"x" * 100)
        resize(disk, 20 * MiB)
        assert disk.size == 20 * MiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-s001.vmdk", "s.vmdk"]
    assert header(tmp_path / "s-s001.vmdk")["capacity"] == 20 * MiB // 512
    assert qemu.info(path, "vmdk")["virtual-size"] == 20 * MiB
    assert qemu.check(path, "vmdk").returncode == 0
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(10 * MiB, 100) == b"x" * 100


def test_shrink_flat_truncates_its_file(tmp_path: Path) -> None:
    path = tmp_path / "f.vmdk"
    with Disk() as disk:
        disk.create_base(path, 8 * MiB, "VMDK", ImageFlags.FIXED)
        disk.write(0, b"y" * 512)
        resize(disk, 2 * MiB)
    assert os.path.getsize(tmp_path / "f-flat.vmdk") == 2 * MiB
    assert qemu.info(path, "vmdk")["virtual-size"] == 2 * MiB
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.size == 2 * MiB and disk.read(0, 512) == b"y" * 512


def test_streams_cannot_shrink(tmp_path: Path) -> None:
    with Disk() as disk:
        disk.create_base(tmp_path / "s.vmdk", 4 * MiB, "VMDK",
                         ImageFlags.VMDK_STREAM_OPTIMIZED)
        with pytest.raises(NotSupported, match="streamOptimized"):
            disk.image(0).resize(2 * MiB)


# -- re-linking ------------------------------------------------------------------------


def test_check_parent_refuses_what_the_descriptor_cannot_hold(tmp_path: Path) -> None:
    deep = tmp_path / ("p" * 200) / ("q" * 200) / ("r" * 200)
    deep.mkdir(parents=True)
    far = deep / "far.vdi"
    child = tmp_path / "child.vmdk"
    with Disk() as disk:
        disk.create_base(far, 4 * MiB, "VDI")
        disk.create_diff(child, "VMDK")
        image = disk.image(1)
        link = ParentLink(disk.image(0).uuid, None, str(far) * 30, "VDI")
        before = child.read_bytes()
        with pytest.raises(InvalidParameter, match="reserved"):
            image.check_parent(link)
        with pytest.raises(InvalidParameter, match="reserved"):
            image.set_parent(link)
        assert child.read_bytes() == before
        image.check_parent(disk.parent_link(0))  # what it has fits, of course
        image.check_parent(None)


def test_merge_into_a_vmdk_child(tmp_path: Path) -> None:
    base, child = tmp_path / "b.vmdk", tmp_path / "c.vmdk"
    with Disk() as disk:
        disk.create_base(base, 4 * MiB, "VMDK")
        disk.write(0, b"\x01" * MiB)
        disk.create_diff(child, "VMDK")
        disk.write(GRAIN, b"\x02" * GRAIN)
        model = disk.read(0, 4 * MiB)
        merge(disk, 0, 1)
        assert disk.count == 1 and disk.read(0, 4 * MiB) == model
    assert not base.exists()
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.count == 1 and not disk.image(0).image_flags & ImageFlags.DIFF
    agrees_with_qemu(child, model, tmp_path)


def test_an_interrupted_shrink_leaves_a_usable_image(tmp_path: Path) -> None:
    from vdgui.engine.io import Fault, FaultyProvider, FileProvider
    from vdgui.engine.io.faulty import SimulatedCrash
    n = 0
    while True:
        folder = tmp_path / f"run{n}"
        folder.mkdir()
        path = folder / "s.vmdk"
        with Disk() as disk:
            disk.create_base(path, 2047 * MiB + 4 * MiB, "VMDK", ImageFlags.VMDK_SPLIT_2G)
            disk.write(MiB, b"kept" * 128)
        disk = Disk(io=FaultyProvider(FileProvider(), Fault(after_writes=n)))
        disk.open(path)
        try:
            resize(disk, 2 * MiB)
            disk.close_all()
            finished = True
        except SimulatedCrash:
            for index in range(len(disk)):
                disk.image(index).abandon()
            finished = False
        with open_chain(path, OpenFlags.READONLY) as disk:
            assert disk.size in (2 * MiB, 2047 * MiB + 4 * MiB)
            assert disk.read(MiB, 512) == b"kept" * 128
        if finished:
            break
        n += 1
    assert n >= 2
    assert qemu.check(path, "vmdk").returncode == 0


@pytest.mark.parametrize("zeroed", ["off", "on"])
def test_compact_an_image_qemu_made(tmp_path: Path, zeroed: str) -> None:
    path = tmp_path / "q.vmdk"
    qemu.qemu_img("create", "-f", "vmdk", "-o", f"zeroed_grain={zeroed}", path, "8M")
    qemu.qemu_io(path, "vmdk", "write -P 0x11 0 256k", "write -P 0x22 1M 128k",
                 "write -P 0 64k 64k", "write -P 0 1M 64k")
    model = bytearray(8 * MiB)
    model[:256 * 1024] = b"\x11" * (256 * 1024)
    model[MiB:MiB + 128 * 1024] = b"\x22" * (128 * 1024)
    model[GRAIN:2 * GRAIN] = bytes(GRAIN)
    model[MiB:MiB + GRAIN] = bytes(GRAIN)
    size = os.path.getsize(path)
    with open_chain(path) as disk:
        assert disk.image(0).can_mark_zero == (zeroed == "on")
        compact(disk)
        assert disk.read(0, 8 * MiB) == model
    assert os.path.getsize(path) == size - 2 * GRAIN
    agrees_with_qemu(path, bytes(model), tmp_path)
    qemu.qemu_io(path, "vmdk", "write -P 0x33 4M 64k")  # qemu goes on writing after us
    model[4 * MiB:4 * MiB + GRAIN] = b"\x33" * GRAIN
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(0, 8 * MiB) == model


def test_pack_brings_stale_mirrors_up_to_date(tmp_path: Path) -> None:
    """A crash between a grain table and its mirror leaves the mirror behind; packing
    (which reuses the space it may still point at) first makes them equal."""
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB, "VMDK")
        disk.write(0, b"\x01" * (3 * GRAIN))
        disk.write(0, bytes(GRAIN))
    raw = bytearray(path.read_bytes())
    mirror = struct.unpack_from("<I", raw, header(path)["rgd"] * 512)[0] * 512
    struct.pack_into("<I", raw, mirror + 8, 0)  # the mirror lost grain 2
    path.write_bytes(raw)
    with open_chain(path) as disk:
        compact(disk)
        assert disk.read(0, 3 * GRAIN) == bytes(GRAIN) + b"\x01" * (2 * GRAIN)
    primary, mirror_entries = tables(path)
    assert np.array_equal(primary, mirror_entries)
    assert os.path.getsize(path) == header(path)["overhead"] * 512 + 2 * GRAIN
    assert qemu.check(path, "vmdk").returncode == 0


def test_table_updates_spanning_many_tables_are_all_written(tmp_path: Path) -> None:
    """Changed tables wait in the table cache until written: an allocation spanning
    more tables than the cache holds (8 GiB of data at the default size) must lose
    none of them."""
    path = tmp_path / "d.vmdk"
    count = 150
    with Disk() as disk:
        disk.create_base(path, count * 32 * MiB, "VMDK", config=ZEROED)
        extent = disk.image(0).extents[0]
        extent.gts.capacity = 100
        pending: dict = {}
        extent._set_entries(0, np.full(count * 512, 1, dtype=np.int64), pending)
        extent._persist(pending)
    primary, mirror = tables(path)
    assert int(np.count_nonzero(primary == 1)) == count * 512
    assert np.array_equal(primary, mirror)
