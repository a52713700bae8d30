"""QED check and repair on damaged images: at least what ``qemu-img check`` finds, a
dry run that writes nothing, and repaired images that qemu finds clean."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.findings import ERROR, LEAK, WARNING
from vdgui.engine.ops.repair import repair
from vdgui.engine.types import OpenFlags, RepairFlags, Status

from tests import qemu
from tests.formats.clustered import (MiB, at_least_qemu, crash_repair, create, engine_read,
                                     our_findings, our_repair, peek, poke, qemu_findings,
                                     qemu_write)

pytestmark = pytest.mark.interop

SIZE = 16 * MiB
CS = 4096
L1 = 0x1000
NEED_CHECK = 0x2


def qemu_image(path: Path) -> tuple[int, bytes]:
    """qemu's image: clusters 0 and 1 (0x01), guest 1 MiB (0x02); returns (L2 offset,
    content).  Layout: L1 at 0x1000 (2 clusters), data at 0x3000, 0x4000, L2 at 0x5000."""
    qemu.qemu_img("create", "-f", "qed", "-o", "cluster_size=4k,table_size=2", path,
                  str(SIZE))
    qemu_write(path, "qed", [(0, 2 * CS, 0x01), (MiB, CS, 0x02)])
    l2 = struct.unpack("<Q", peek(path, L1, 8))[0]
    assert l2 == 0x5000
    return l2, engine_read(path)


def entry(path: Path, l2: int, slot: int, value: int | None = None) -> int:
    if value is not None:
        poke(path, l2 + 8 * slot, struct.pack("<Q", value))
    return struct.unpack("<Q", peek(path, l2 + 8 * slot, 8))[0]


def dry_then_repair(path: Path, backend: str = "QED"):
    before, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
    dry = repair(path, flags=RepairFlags.DRY_RUN)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime
    fixed = repair(path)
    assert fixed.repaired and fixed.clean, fixed.problems
    assert our_findings(path, backend) == []
    assert qemu.check(path, "qed").returncode == 0, qemu.check(path, "qed").stdout
    return dry, fixed


def test_clean_images_are_clean(tmp_path: Path) -> None:
    ours = tmp_path / "ours.qed"
    create(ours, SIZE, "QED", {"cluster_size": "4096", "table_size": "2"},
           [(0, 3 * MiB, 0x11), (5 * MiB, 100, 0)])
    qemu_image(tmp_path / "q.qed")
    for path in (ours, tmp_path / "q.qed"):
        assert our_findings(path, "QED") == []
        assert repair(path, flags=RepairFlags.DRY_RUN).clean


def test_bad_and_shared_entries_as_qemu_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "d.qed"
    l2, content = qemu_image(path)
    entry(path, l2, 1, entry(path, l2, 0))   # cluster 1 shares cluster 0's; 0x4000 leaks
    entry(path, l2, 256, 0x900000)           # guest 1 MiB: past the end; 0x3000.. leaks
    entry(path, l2, 300, L1)                 # into the L1 table
    assert qemu_findings(path, "qed") == (2, 3, 2)
    ours = at_least_qemu(path, "qed", "QED", CS)
    errors = sorted(f.what for f in ours if f.severity == ERROR)
    assert len(errors) == 3
    assert any("beyond the end of the file" in e for e in errors)
    assert any("overlaps the L1 table" in e for e in errors)
    assert any(f"guest offset {CS} uses the cluster at file offset 0x3000" in e for e in errors)
    # A hole (0x4000) and the last cluster (0x7000): two leaks, as qemu counts.
    assert [f.leaked_bytes for f in ours if f.severity == LEAK] == [CS, CS]
    dry_then_repair(path)
    # Each sharer kept what it read; the unusable entries read as zeros (a base image).
    want = bytearray(content)
    want[CS:2 * CS] = b"\x01" * CS
    want[MiB:MiB + CS] = bytes(CS)
    assert engine_read(path) == want
    assert qemu.to_raw(path, "qed", tmp_path / "r.raw") == want
    assert os.path.getsize(path) == 0x7000  # header, L1, 2 clusters, L2: leaks packed


def test_a_bad_entry_of_a_child_becomes_a_zero_cluster(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qed", tmp_path / "child.qed"
    create(base, SIZE, "QED", writes=[(0, SIZE, 0x33)])
    with open_chain(base, OpenFlags.READONLY) as disk:
        disk.create_diff(child, "QED", config={"cluster_size": "4096", "table_size": "2"})
        disk.write(0, b"\x44" * 4 * CS)
    l2 = struct.unpack("<Q", peek(child, L1, 8))[0]
    entry(child, l2, 2, 0x100000000)
    assert qemu_findings(child, "qed")[1] == 1
    at_least_qemu(child, "qed", "QED", CS)
    dry_then_repair(child)
    with open_chain(child, OpenFlags.READONLY) as disk:
        # Not the parent's 0x33: what the child held is lost, the parent stays hidden.
        assert disk.read(2 * CS, CS) == bytes(CS)
        assert disk.block_status(2 * CS, CS)[:2] == (1, Status.ZERO)
        assert disk.read(3 * CS, CS) == b"\x44" * CS


def test_shared_table_and_stray_l1_entry(tmp_path: Path) -> None:
    path = tmp_path / "t.qed"
    l2, content = qemu_image(path)
    poke(path, L1 + 8, struct.pack("<Q", l2))       # region 2 uses region 1's table
    poke(path, L1 + 8 * 10, struct.pack("<Q", l2))  # past the disk's 4 entries too
    rc, corruptions, _ = qemu_findings(path, "qed")
    assert rc == 2 and corruptions >= 2
    ours = at_least_qemu(path, "qed", "QED", CS)
    assert [f.severity for f in ours] == [ERROR, WARNING]
    assert "L1 entry 1" in ours[0].what and "L1 entry 10" in ours[1].what
    dry_then_repair(path)
    assert engine_read(path) == content


def test_need_check_flag_and_leaked_cluster(tmp_path: Path) -> None:
    path = tmp_path / "n.qed"
    _, content = qemu_image(path)
    poke(path, 16, struct.pack("<Q", NEED_CHECK))
    with open(path, "ab") as f:
        f.write(b"\xee" * CS)
    assert qemu_findings(path, "qed") == (3, 0, 1)
    ours = at_least_qemu(path, "qed", "QED", CS)
    assert sorted(f.severity for f in ours) == [LEAK, WARNING]
    dry_then_repair(path)
    assert struct.unpack("<Q", peek(path, 16, 8))[0] == 0
    assert engine_read(path) == content


def test_file_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "c.qed"
    _, content = qemu_image(path)
    os.truncate(path, 0x5000 + 100)  # the L2 table cut after its first entries
    # qemu drops the table (a corruption; its clusters then count as leaks); we keep
    # the entries that survived by extending the file.
    assert qemu_findings(path, "qed")[:2] == (2, 1)
    ours = our_findings(path, "QED")
    assert [f.severity for f in ours] == [ERROR] and "cut short" in ours[0].what
    dry_then_repair(path)
    want = bytearray(content)
    want[MiB:MiB + CS] = bytes(CS)  # its entry and its cluster were cut off
    assert engine_read(path) == want


def test_hole_in_the_middle_is_a_leak_that_repair_packs(tmp_path: Path) -> None:
    path = tmp_path / "h.qed"
    l2, content = qemu_image(path)
    entry(path, l2, 0, 0)  # cluster 0x3000 is now used by nothing
    assert qemu_findings(path, "qed") == (3, 0, 1)
    dry, _ = dry_then_repair(path)
    assert dry.leaked_bytes == CS
    assert os.path.getsize(path) == 0x7000  # the last cluster moved into the hole
    assert engine_read(path) == bytes(CS) + content[CS:]


def test_header_damage_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.qed"
    qemu_image(path)
    poke(path, 4, struct.pack("<I", 3000))  # cluster size
    before = path.read_bytes()
    report = repair(path, "QED")
    assert not report.repaired and report.problems[0].fix is None
    assert "cluster size" in report.problems[0].what
    assert path.read_bytes() == before


def test_read_write_open_repairs_shared_clusters_too(tmp_path: Path) -> None:
    path = tmp_path / "s.qed"
    l2, _ = qemu_image(path)
    entry(path, l2, 1, entry(path, l2, 0))
    poke(path, 16, struct.pack("<Q", NEED_CHECK))
    with open_chain(path) as disk:
        assert disk.read(0, 2 * CS) == b"\x01" * 2 * CS
        disk.write(0, b"\x05" * 10)  # no longer visible through cluster 1
        assert disk.read(CS, 10) == b"\x01" * 10
    assert qemu.check(path, "qed").returncode == 3  # the old cluster 1 leaked
    our_repair(path, "QED")
    assert qemu.check(path, "qed").returncode == 0


def test_repair_cut_short_after_every_write(tmp_path: Path) -> None:
    def build(folder: Path) -> Path:
        path = folder / "r.qed"
        l2, _ = qemu_image(path)
        entry(path, l2, 1, entry(path, l2, 0))  # shared, and a leak
        poke(path, 16, struct.pack("<Q", NEED_CHECK))
        return path

    assert crash_repair(tmp_path, build, "QED") > 5
