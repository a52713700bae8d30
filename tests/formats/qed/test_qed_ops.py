"""QED operations: releasing clusters, packing, discard, resizing; against a model and qemu."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.errors import InvalidSize, ShrinkNotSupported
from vdgui.engine.findings import ERROR
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.resize import resize
from vdgui.engine.types import OpenFlags, Status

from tests import qemu
from tests.formats.clustered import (MiB, crash_everywhere, create, engine_read, our_findings,
                                     peek, raw_file)

SIZE = 16 * MiB
CS = 4096
#: Two-cluster tables (qemu 7.2 cannot open one-cluster ones): 1024 entries, 4 MiB each.
CONFIG = {"cluster_size": "4096", "table_size": "2"}
L1 = 0x1000


def l1_entries(path: Path, count: int = 4) -> list[int]:
    return list(struct.unpack(f"<{count}Q", peek(path, L1, 8 * count)))


def child_of(base: Path, child: Path, writes=(), flags=OpenFlags.NORMAL) -> None:
    """A differencing image with the small clusters of ``CONFIG``."""
    with open_chain(base, OpenFlags.READONLY) as disk:
        disk.create_diff(child, "QED", config=CONFIG, open_flags=flags)
        for offset, length, byte in writes:
            disk.write(offset, bytes([byte]) * length)


def qemu_clean(path: Path) -> None:
    assert qemu.check(path, "qed").returncode == 0, qemu.check(path, "qed").stdout


def matches(path: Path, content: bytes, tmp_path: Path) -> None:
    """Both readers see ``content``."""
    assert engine_read(path) == content
    assert qemu.compare(path, "qed", raw_file(tmp_path / "model.raw", content), "raw")


@pytest.mark.interop
def test_release_free_and_zero_clusters_then_pack(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qed", tmp_path / "child.qed"
    create(base, SIZE, "QED", CONFIG, [(0, SIZE, 0x11)])
    data = os.urandom(3 * MiB)
    child_of(base, child, [(MiB, 3 * MiB, 0)])
    model = bytearray(b"\x11" * SIZE)
    with open_chain(child) as disk:
        disk.write(MiB, data)
        model[MiB:4 * MiB] = data
        image = disk.image(1)
        assert image.can_mark_zero
        image.unmap(MiB, 64 * CS, zero=False)             # falls through to the base
        model[MiB:MiB + 64 * CS] = b"\x11" * 64 * CS
        image.unmap(2 * MiB + 3 * CS, 5 * CS, zero=True)  # reads zeros, hides the base
        model[2 * MiB + 3 * CS:2 * MiB + 8 * CS] = bytes(5 * CS)
        assert disk.block_status(2 * MiB + 3 * CS, MiB)[:2] == (1, Status.ZERO)
        assert disk.read(0, SIZE) == model
        size = child.stat().st_size
        image.pack()
        assert disk.read(0, SIZE) == model
    assert child.stat().st_size == size - 69 * CS
    assert our_findings(child, "QED") == []
    qemu_clean(child)
    assert qemu.to_raw(child, "qed", tmp_path / "c.raw") == model


def two_regions(path: Path) -> None:
    """Cluster 0 (data at 0x3000, its table at 0x4000) and a cluster 4 MiB in (data at
    0x6000, its table at 0x7000): one table per region, each after its data."""
    create(path, SIZE, "QED", CONFIG, [(0, CS, 0x01), (4 * MiB, CS, 0x02)])
    assert l1_entries(path)[:2] == [0x4000, 0x7000] and path.stat().st_size == 0x9000


@pytest.mark.interop
def test_pack_fills_a_hole_below_a_table_by_moving_the_table_twice(tmp_path: Path) -> None:
    path = tmp_path / "t.qed"
    two_regions(path)
    create(tmp_path / "x.qed", SIZE, "QED", CONFIG)
    with open_chain(path) as disk:
        disk.write(2 * CS, b"\x03" * CS)       # data at 0x9000, in the first table
        disk.image(0).unmap(4 * MiB, CS, zero=False)   # 0x6000 is free; table 2 empties
        disk.write(4 * MiB + CS, b"\x04" * CS)  # a new table 2 at 0xB000, data at 0xA000
        want = disk.read(0, SIZE)
        disk.image(0).pack()
        assert disk.read(0, SIZE) == want
    # header, L1, 3 clusters, 2 tables: no hole left.
    assert path.stat().st_size == 0x3000 + 3 * CS + 2 * 0x2000
    assert our_findings(path, "QED") == []
    qemu_clean(path)
    matches(path, want, tmp_path)


@pytest.mark.interop
def test_an_emptied_table_is_unlinked_and_its_space_given_back(tmp_path: Path) -> None:
    path = tmp_path / "t.qed"
    two_regions(path)
    with open_chain(path) as disk:
        disk.image(0).unmap(0, CS, zero=False)
        assert l1_entries(path)[:2] == [0, 0x7000]
        disk.image(0).pack()
    # The second cluster went to 0x3000 and its table into the first table's place.
    assert l1_entries(path)[:2] == [0, 0x4000] and path.stat().st_size == 0x6000
    qemu_clean(path)
    matches(path, bytes(4 * MiB) + b"\x02" * CS + bytes(SIZE - 4 * MiB - CS), tmp_path)


def holes(folder: Path) -> Path:
    """An image with data, zero clusters and released clusters spread over three tables."""
    path = folder / "h.qed"
    create(path, SIZE, "QED", CONFIG, [(0, 10 * MiB, 0x21), (5 * MiB, 2 * MiB, 0x00)])
    with open_chain(path) as disk:
        for start in (0, MiB, 3 * MiB + 5 * CS, 9 * MiB):
            disk.image(0).unmap(start, 40 * CS, zero=False)
    return path


def no_errors(path: Path) -> None:
    """After any crash: at worst leaked space (qemu's exit 3), never damage."""
    assert not [f for f in our_findings(path, "QED") if f.severity == ERROR]
    assert qemu.check(path, "qed").returncode in (0, 3)


@pytest.mark.interop
def test_pack_cut_short_after_every_write(tmp_path: Path) -> None:
    assert crash_everywhere(tmp_path, holes, lambda disk: disk.image(0).pack(),
                            inspect=no_errors) > 5


@pytest.mark.interop
def test_compact_and_discard_through_the_operations(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qed", tmp_path / "child.qed"
    create(base, SIZE, "QED", CONFIG, [(0, SIZE, 0x31)])
    child_of(base, child, [(0, 2 * MiB, 0x31), (4 * MiB, 4 * MiB, 0x32)], OpenFlags.HONOR_SAME)
    size = child.stat().st_size
    with open_chain(child) as disk:
        plan = compact(disk)  # the first 2 MiB only repeat the base
        assert plan.same_as_below == 2 * MiB
    assert child.stat().st_size == size - 2 * MiB - 2 * CS  # and the emptied table
    with open_chain(child, OpenFlags.DISCARD) as disk:
        discard(disk, [(5 * MiB, MiB + 100)])
        want = disk.read(0, SIZE)
    assert want[5 * MiB:6 * MiB + 100] == bytes(MiB + 100)
    assert want[6 * MiB + 100:8 * MiB] == b"\x32" * (2 * MiB - 100)
    qemu_clean(child)
    assert qemu.to_raw(child, "qed", tmp_path / "c.raw") == want


@pytest.mark.interop
def test_shrink_only_when_nothing_is_stored_beyond(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qed", tmp_path / "child.qed"
    create(base, SIZE, "QED", CONFIG, [(0, SIZE, 0x41)])
    child_of(base, child, [(MiB, CS, 0x42), (13 * MiB, CS, 0x43)])
    with open_chain(child) as disk:
        image = disk.image(1)
        with pytest.raises(ShrinkNotSupported, match=str(13 * MiB)):
            image.resize(8 * MiB)
        with pytest.raises(InvalidSize, match="multiple of 512"):
            image.resize(8 * MiB + 100)
        image.unmap(13 * MiB, CS, zero=True)  # a zero cluster past the end is dropped
        disk.write(6 * MiB + 1000, b"\x45" * 10)  # its cluster copies the rest from below
        with pytest.raises(ShrinkNotSupported, match="last cluster"):
            image.resize(6 * MiB + 512)
        image.unmap(6 * MiB, CS, zero=False)
        image.resize(6 * MiB + 512)
        assert image.size == 6 * MiB + 512
        # Growing again: the dropped zero cluster does not come back.
        image.resize(SIZE)
        assert image.block_status(13 * MiB, CS)[0] is Status.FREE
        image.resize(6 * MiB + 512)
    # Only the first two tables remain; the file ends after them.
    assert l1_entries(child)[2:] == [0, 0]
    assert qemu.info(child)["virtual-size"] == 6 * MiB + 512
    qemu_clean(child)
    assert our_findings(child, "QED") == []
    want = bytearray(b"\x41" * (6 * MiB + 512))
    want[MiB:MiB + CS] = b"\x42" * CS
    assert qemu.to_raw(child, "qed", tmp_path / "c.raw") == want == engine_read(child)


@pytest.mark.interop
def test_grow_through_the_resize_operation(tmp_path: Path) -> None:
    path = tmp_path / "g.qed"
    create(path, SIZE, "QED", CONFIG, [(0, MiB, 0x51)])
    with open_chain(path) as disk:
        resize(disk, 64 * MiB)
        disk.write(60 * MiB, b"\x52" * CS)
        disk.write(MiB, b"\x53" * CS)
        with pytest.raises(ShrinkNotSupported):
            resize(disk, 2 * MiB)
        disk.write(60 * MiB, bytes(CS))
        compact(disk)
        resize(disk, 2 * MiB)
    assert qemu.info(path)["virtual-size"] == 2 * MiB
    assert engine_read(path) == b"\x51" * MiB + b"\x53" * CS + bytes(MiB - CS)
    qemu_clean(path)
