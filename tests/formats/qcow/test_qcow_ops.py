"""QCOW version 1 operations: releasing clusters, packing (compressed clusters and the
L1 table included), discard, resizing with an L1 table that grows in place or moves."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.errors import NotSupported, ShrinkNotSupported
from vdgui.engine.findings import ERROR
from vdgui.engine.formats.base import ParentLink
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.resize import resize
from vdgui.engine.types import OpenFlags, Status

from tests import qemu
from tests.formats.clustered import (MiB, crash_everywhere, create, engine_read, expected,
                                     our_findings, peek, raw_file)

SIZE = 16 * MiB
CS = 4096


def l1_offset(path: Path) -> int:
    return struct.unpack(">Q", peek(path, 40, 8))[0]


def qemu_reads(path: Path, content: bytes, tmp_path: Path) -> None:
    assert engine_read(path) == content
    assert qemu.compare(path, "qcow", raw_file(tmp_path / "model.raw", content), "raw")


@pytest.mark.interop
def test_release_and_pack_with_compressed_clusters(tmp_path: Path) -> None:
    path = tmp_path / "c.qcow"
    qemu.qemu_img("create", "-f", "qcow", path, str(SIZE))
    qemu.qemu_io(path, "qcow", *(f"write -c -P {0x61 + i} {i * CS} {CS}" for i in range(8)),
                 f"write -P 0x70 {MiB} {64 * CS}",
                 *(f"write -c -P {0x71 + i} {3 * MiB + i * CS} {CS}" for i in range(4)))
    model = bytearray(engine_read(path))
    size = path.stat().st_size
    with open_chain(path) as disk:
        image = disk.image(0)
        assert not image.can_mark_zero
        with pytest.raises(NotSupported):
            image.unmap(0, CS, zero=True)
        image.unmap(2 * CS, 3 * CS, zero=False)      # compressed clusters
        image.unmap(MiB + 8 * CS, 40 * CS, zero=False)
        model[2 * CS:5 * CS] = bytes(3 * CS)
        model[MiB + 8 * CS:MiB + 48 * CS] = bytes(40 * CS)
        assert disk.read(0, SIZE) == model
        image.pack()
        assert disk.read(0, SIZE) == model
    assert path.stat().st_size < size - 40 * CS
    assert our_findings(path, "QCOW") == []
    qemu_reads(path, model, tmp_path)
    # The compressed clusters are still compressed, wherever they went.
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.image(0).tables.entries(3 * MiB // CS, 1)[0] >> 63 == 1


@pytest.mark.interop
def test_growing_in_place_matches_a_new_qemu_image(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.qcow", tmp_path / "theirs.qcow"
    create(ours, SIZE, "QCOW")
    with open_chain(ours) as disk:
        resize(disk, 64 * MiB)
    qemu.qemu_img("create", "-f", "qcow", theirs, "64M")
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.interop
def test_growing_past_the_room_moves_the_l1_table(tmp_path: Path) -> None:
    path = tmp_path / "g.qcow"
    writes = [(0, 3 * CS, 0x11), (SIZE - CS, CS, 0x12)]
    create(path, SIZE, "QCOW", writes=writes)
    assert l1_offset(path) == 0x30
    with open_chain(path) as disk:
        resize(disk, 4 << 30)   # 2048 entries: no longer fit before the first cluster
        disk.write((4 << 30) - 512, b"\x13" * 512)
    assert l1_offset(path) > 0x30 and l1_offset(path) % 512 == 0
    assert qemu.info(path)["virtual-size"] == 4 << 30
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(0, SIZE) == expected(SIZE, writes)
        assert disk.read((4 << 30) - 512, 512) == b"\x13" * 512
    assert our_findings(path, "QCOW") == []
    qemu.qemu_io(path, "qcow", f"read -P 0x11 0 {3 * CS}", f"read -P 0 {3 * CS} {SIZE - 4 * CS}",
                 f"read -P 0x12 {SIZE - CS} {CS}", f"read -P 0 {SIZE} {MiB}",
                 f"read -P 0x13 {(4 << 30) - 512} 512")


def growing(folder: Path) -> Path:
    """512-byte clusters: the L1 table of 4 MiB (16 entries) has room for 122 entries
    before the first cluster."""
    path = folder / "g.qcow"
    create(path, 4 * MiB, "QCOW", {"cluster_size": "512"},
           writes=[(0, 8 * CS, 0x21), (MiB, CS, 0x22)])
    return path


def no_errors(path: Path) -> None:
    assert not [f for f in our_findings(path, "QCOW") if f.severity == ERROR]


@pytest.mark.interop
def test_l1_move_cut_short_after_every_write(tmp_path: Path) -> None:
    def grow(disk):
        resize(disk, 64 * MiB)
        assert l1_offset(disk.image(0).path) > 1024

    def after(before):
        return before + bytes(60 * MiB)

    assert crash_everywhere(tmp_path, growing, grow, after=after, inspect=no_errors) > 3


@pytest.mark.interop
def test_pack_cut_short_after_every_write(tmp_path: Path) -> None:
    def build(folder: Path) -> Path:
        path = growing(folder)
        with open_chain(path) as disk:
            disk.image(0).unmap(2 * CS, 4 * CS, zero=False)
        return path

    assert crash_everywhere(tmp_path, build, lambda disk: disk.image(0).pack(),
                            inspect=no_errors) > 3


@pytest.mark.interop
def test_shrink_only_when_nothing_is_stored_beyond(tmp_path: Path) -> None:
    path = tmp_path / "s.qcow"
    create(path, SIZE, "QCOW", writes=[(0, CS, 0x31), (12 * MiB, CS, 0x32)])
    with open_chain(path) as disk:
        image = disk.image(0)
        with pytest.raises(ShrinkNotSupported, match=str(12 * MiB)):
            image.resize(4 * MiB)
        image.unmap(12 * MiB, CS, zero=False)  # its emptied table is unlinked too
        resize(disk, 4 * MiB)
        assert image.size == 4 * MiB
        image.pack()
    assert our_findings(path, "QCOW") == []
    assert qemu.info(path)["virtual-size"] == 4 * MiB
    assert qemu.to_raw(path, "qcow", tmp_path / "s.raw") == expected(4 * MiB, [(0, CS, 0x31)])
    assert path.stat().st_size == 0x1000 + 2 * CS  # header and L1, one cluster, one table


@pytest.mark.interop
def test_discard_in_a_child_writes_zeros_it_cannot_mark(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qcow", tmp_path / "child.qcow"
    create(base, SIZE, "QCOW", writes=[(0, SIZE, 0x41)])
    with open_chain(base, OpenFlags.READONLY) as disk:
        disk.create_diff(child, "QCOW")
        disk.write(0, b"\x42" * 2 * MiB)
    with open_chain(child, OpenFlags.DISCARD) as disk:
        discard(disk, [(MiB, 2 * MiB)])
        want = disk.read(0, SIZE)
        assert disk.block_status(2 * MiB, MiB)[:2] == (1, Status.DATA)  # zeros, stored
    assert want == b"\x42" * MiB + bytes(2 * MiB) + b"\x41" * (SIZE - 3 * MiB)
    assert qemu.to_raw(child, "qcow", tmp_path / "c.raw") == want
    assert our_findings(child, "QCOW") == []


@pytest.mark.interop
def test_set_parent_after_the_l1_table_moved_uses_the_room_it_left(tmp_path: Path) -> None:
    base, child = tmp_path / "b.qcow", tmp_path / "child.qcow"
    create(base, SIZE, "QCOW")
    qemu.qemu_img("create", "-f", "qcow", "-b", "b.qcow", "-F", "qcow", child, str(SIZE))
    qemu.qemu_io(child, "qcow", "write -P 0x51 0 64k")  # clusters right after the L1 table
    folder = tmp_path / ("n" * 200) / ("m" * 200)
    folder.mkdir(parents=True)
    os.symlink(base, folder / "b.qcow")
    link = ParentLink(None, None, str(folder / "b.qcow"), "QCOW")
    with open_chain(child) as disk:
        image = disk.image(1)
        with pytest.raises(NotSupported):
            image.check_parent(link)  # qemu left 6 bytes for the name
        resize(disk, 4 << 30)          # the L1 table leaves, and with it the room it took
        image.set_parent(link)
    assert qemu.info(child)["backing-filename"] == str(folder.relative_to(tmp_path) / "b.qcow")
    qemu.qemu_io(child, "qcow", "read -P 0x51 0 64k", f"read -P 0 64k {SIZE - 65536}")
    assert our_findings(child, "QCOW") == []
