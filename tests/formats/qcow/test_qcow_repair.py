"""QCOW version 1 check and repair (qemu-img has none for this format: repaired images
are verified by reading them back with qemu)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.findings import ERROR, LEAK
from vdgui.engine.ops.repair import repair
from vdgui.engine.types import OpenFlags, RepairFlags, Status

from tests import qemu
from tests.formats.clustered import (MiB, crash_repair, create, engine_read, our_findings,
                                     peek, poke, qemu_write)

pytestmark = pytest.mark.interop

SIZE = 16 * MiB
CS = 4096
L1 = 0x30


def qemu_image(path: Path) -> tuple[int, bytes]:
    """qemu's image: clusters 0-2 (0x01), a compressed cluster 3 (0x07), guest 1 MiB
    (0x02).  Returns (L2 offset, content)."""
    qemu.qemu_img("create", "-f", "qcow", path, str(SIZE))
    qemu_write(path, "qcow", [(0, 3 * CS, 0x01), (MiB, CS, 0x02)])
    qemu.qemu_io(path, "qcow", f"write -c -P 0x07 {3 * CS} {CS}")
    return struct.unpack(">Q", peek(path, L1, 8))[0], engine_read(path)


def entry(path: Path, l2: int, slot: int, value: int | None = None) -> int:
    if value is not None:
        poke(path, l2 + 8 * slot, struct.pack(">Q", value))
    return struct.unpack(">Q", peek(path, l2 + 8 * slot, 8))[0]


def repaired(path: Path, want: bytes, tmp_path: Path):
    before, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
    dry = repair(path, flags=RepairFlags.DRY_RUN)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime
    assert not dry.clean
    fixed = repair(path)
    assert fixed.repaired and fixed.clean, fixed.problems
    assert engine_read(path) == want == qemu.to_raw(path, "qcow", tmp_path / "r.raw")
    return dry


def test_clean_images_are_clean(tmp_path: Path) -> None:
    qemu_image(tmp_path / "q.qcow")
    create(tmp_path / "o.qcow", SIZE, "QCOW", {"cluster_size": "512"}, [(0, 3 * MiB, 0x11)])
    for name in ("q.qcow", "o.qcow"):
        assert our_findings(tmp_path / name, "QCOW") == []


@pytest.mark.parametrize("damage, why", [
    (0x10000000, "beyond the end of the file"),
    (0x1001, "not a multiple of 512"),
    ("own table", "overlaps an L2 table"),
    # Compressed descriptors are byte-granular: they can reach the metadata.
    (1 << 63 | 100 << 51 | 1 << 40, "beyond the end of the file"),
    (1 << 63 | 100 << 51 | (L1 + 8), "overlaps the L1 table"),
    (1 << 63 | 100 << 51 | 16, "overlaps the header"),
    (1 << 63 | 0 << 51 | 0x5000, "compressed length of 0"),
])
def test_unusable_entries_read_as_zeros_after_repair(tmp_path: Path, damage, why) -> None:
    path = tmp_path / "d.qcow"
    l2, content = qemu_image(path)
    entry(path, l2, 1, l2 if damage == "own table" else damage)
    ours = our_findings(path, "QCOW")
    errors = [f for f in ours if f.severity == ERROR]
    assert len(errors) == 1 and why in errors[0].what and errors[0].offset == l2 + 8
    assert [f.leaked_bytes for f in ours if f.severity == LEAK] == [CS]  # the old cluster 1
    want = bytearray(content)
    want[CS:2 * CS] = bytes(CS)
    repaired(path, want, tmp_path)


def test_a_bad_entry_of_a_child_gets_a_zero_cluster(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qcow", tmp_path / "child.qcow"
    create(base, SIZE, "QCOW", writes=[(0, SIZE, 0x33)])
    with open_chain(base, OpenFlags.READONLY) as disk:
        disk.create_diff(child, "QCOW")
        disk.write(0, b"\x44" * 4 * CS)
    l2 = struct.unpack(">Q", peek(child, 0x30 + 256, 8))[0]  # the L1 after the room
    assert l2
    entry(child, l2, 2, 0x7FFF0000)
    want = engine_read(base)
    want = b"\x44" * 2 * CS + bytes(CS) + b"\x44" * CS + want[4 * CS:]
    repaired(child, want, tmp_path)
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.block_status(2 * CS, CS)[:2] == (1, Status.DATA)


def test_shared_clusters_get_copies(tmp_path: Path) -> None:
    path = tmp_path / "s.qcow"
    l2, content = qemu_image(path)
    entry(path, l2, 5, entry(path, l2, 0))  # plain cluster, shared
    entry(path, l2, 6, entry(path, l2, 3))  # compressed cluster, shared
    ours = our_findings(path, "QCOW")
    assert sorted(f.what.split(" uses")[0] for f in ours if f.severity == ERROR) == \
        [f"guest offset {5 * CS}", f"guest offset {6 * CS}"]
    want = bytearray(content)
    want[5 * CS:6 * CS] = b"\x01" * CS
    want[6 * CS:7 * CS] = b"\x07" * CS
    repaired(path, want, tmp_path)
    with open_chain(path) as disk:  # writes through one sharer no longer show in the other
        disk.write(0, b"\x09" * 10)
        assert disk.read(5 * CS, 10) == b"\x01" * 10
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.image(0).tables.entries(6, 1)[0] >> 63 == 1  # still compressed


def test_compressed_cluster_cut_short_and_leaks(tmp_path: Path) -> None:
    path = tmp_path / "c.qcow"
    l2, content = qemu_image(path)
    size = os.path.getsize(path)
    os.truncate(path, size - 10)  # into the last range: the compressed cluster
    entry(path, l2, 2, 0)          # cluster 2: a hole in the middle
    found = our_findings(path, "QCOW")
    assert [f.what.split("which ")[1] for f in found if f.severity == ERROR] == \
        [f"runs past the end of the file ({size - 10} bytes)"]
    # The hole, and what is left of the compressed cluster (it cannot be used).
    assert [f.leaked_bytes for f in found if f.severity == LEAK] == [CS, size - 10 - 0x6000]
    want = bytearray(content)
    want[2 * CS:4 * CS] = bytes(2 * CS)
    repaired(path, want, tmp_path)
    assert os.path.getsize(path) == 0x5000


def test_plain_cluster_cut_short_keeps_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "p.qcow"
    # Cluster 0, its table, then cluster 1: the file ends with cluster 1.
    create(path, SIZE, "QCOW", writes=[(0, CS, 0x61), (CS, CS, 0x61)])
    os.truncate(path, os.path.getsize(path) - 100)
    found = our_findings(path, "QCOW")
    assert [f.severity for f in found] == [ERROR] and "cut short" in found[0].what
    want = bytearray(SIZE)
    want[:2 * CS - 100] = b"\x61" * (2 * CS - 100)
    repaired(path, want, tmp_path)


def test_header_damage_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.qcow"
    qemu_image(path)
    poke(path, 32, b"\x40")  # cluster bits
    before = path.read_bytes()
    report = repair(path, "QCOW")
    assert not report.repaired and report.problems[0].fix is None
    assert path.read_bytes() == before


def test_repair_cut_short_after_every_write(tmp_path: Path) -> None:
    def build(folder: Path) -> Path:
        path = folder / "r.qcow"
        l2, _ = qemu_image(path)
        entry(path, l2, 5, entry(path, l2, 3))  # a shared compressed cluster
        entry(path, l2, 1, 0)                   # a hole
        return path

    assert crash_repair(tmp_path, build, "QCOW") > 5
