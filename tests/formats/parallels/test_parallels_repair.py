"""Parallels check and repair: at least what ``qemu-img check`` finds (the in-use flag,
clusters outside the file, space leaked at the end), plus what it does not look for
(entries into the BAT, shared clusters, holes, a file cut short); repaired images
pass qemu's check."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.findings import ERROR, LEAK
from vdgui.engine.ops.repair import repair
from vdgui.engine.types import OpenFlags, RepairFlags

from tests import qemu
from tests.formats.clustered import (MiB, at_least_qemu, crash_repair, create, engine_read,
                                     our_findings, peek, poke, qemu_findings, qemu_write)

pytestmark = pytest.mark.interop

SIZE = 16 * MiB
CS = 64 << 10
INUSE = b"Ynot"


def qemu_image(path: Path) -> bytes:
    """qemu's image with 64 KiB clusters: data_off 1 cluster, clusters for guest 0, 64K,
    1 MiB and 3 MiB at 1, 2, 3, 4 (in clusters)."""
    qemu.qemu_img("create", "-f", "parallels", "-o", "cluster_size=64k", path, str(SIZE))
    qemu_write(path, "parallels", [(0, 2 * CS, 0x01), (MiB, CS, 0x02), (3 * MiB, 100, 0x03)])
    assert struct.unpack("<4I", peek(path, 64, 16)) == (1, 2, 0, 0)
    return engine_read(path)


def set_entry(path: Path, index: int, value: int) -> None:
    poke(path, 64 + 4 * index, struct.pack("<I", value))


def repaired(path: Path, want: bytes | None = None):
    before, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
    dry = repair(path, flags=RepairFlags.DRY_RUN)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime
    assert not dry.clean
    fixed = repair(path)
    assert fixed.repaired and fixed.clean, fixed.problems
    result = qemu.check(path, "parallels")
    assert result.returncode == 0, result.stdout + result.stderr
    if want is not None:
        assert engine_read(path) == want == qemu.to_raw(path, "parallels", path.with_suffix(".raw"))
    return dry


def test_clean_images_are_clean(tmp_path: Path) -> None:
    qemu_image(tmp_path / "q.hds")
    create(tmp_path / "o.hdd", SIZE, "Parallels", {"cluster_size": "65536"},
           [(0, 3 * MiB, 0x11)])
    for name in ("q.hds", "o.hdd"):
        assert our_findings(tmp_path / name, "Parallels") == []
        assert qemu.check(tmp_path / name, "parallels").returncode == 0


def test_left_in_use_with_space_leaked_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "u.hds"
    content = qemu_image(path)
    poke(path, 44, INUSE)
    with open(path, "ab") as f:
        f.truncate(os.path.getsize(path) + 3 * CS)  # qemu's preallocated tail
    assert qemu_findings(path, "parallels") == (2, 1, 3)
    ours = at_least_qemu(path, "parallels", "Parallels", CS)
    assert sorted(f.severity for f in ours) == [ERROR, LEAK]
    repaired(path, content)
    assert peek(path, 44, 4) == bytes(4)


def test_cluster_outside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "o.hds"
    content = qemu_image(path)
    set_entry(path, 16, 1000)  # guest 1 MiB: far past the end; its cluster 3 leaks
    rc, corruptions, _ = qemu_findings(path, "parallels")
    assert rc == 2 and corruptions == 1
    ours = at_least_qemu(path, "parallels", "Parallels", CS)
    assert "BAT entry 16" in ours[0].what and "beyond the end of the file" in ours[0].what
    assert [f.leaked_bytes for f in ours if f.severity == LEAK] == [CS]  # qemu misses it
    want = bytearray(content)
    want[MiB:MiB + CS] = bytes(CS)
    repaired(path, want)
    assert os.path.getsize(path) == 4 * CS


@pytest.mark.parametrize("case", ["shared", "hole", "cut short"])
def test_what_qemu_does_not_look_for(tmp_path: Path, case: str) -> None:
    path = tmp_path / "x.hds"
    content = bytearray(qemu_image(path))
    why: str | None
    if case == "shared":
        set_entry(path, 7, 2)  # guest 7 * 64K reads the cluster of guest 64K
        content[7 * CS:8 * CS] = content[CS:2 * CS]
        why = "uses too"
    elif case == "hole":
        set_entry(path, 1, 0)
        content[CS:2 * CS] = bytes(CS)
        why = None
    else:
        os.truncate(path, os.path.getsize(path) - CS + 100)
        content[3 * MiB + 100:3 * MiB + CS] = bytes(CS - 100)
        why = "cut short"
    assert qemu.check(path, "parallels").returncode == 0  # qemu sees nothing wrong
    ours = our_findings(path, "Parallels")
    if why:
        assert any(why in f.what for f in ours if f.severity == ERROR), ours
    else:
        assert [f.severity for f in ours] == [LEAK]
    repaired(path, bytes(content))


def test_entry_into_the_bat_of_a_classic_image(tmp_path: Path) -> None:
    path = tmp_path / "c.hdd"
    create(path, SIZE, "Parallels", {"cluster_size": "65536"}, [(0, 2 * CS, 0x41)])
    set_entry(path, 9, 1)  # sector 1: inside the BAT
    ours = our_findings(path, "Parallels")
    assert [f.severity for f in ours] == [ERROR]
    assert "BAT entry 9" in ours[0].what and "overlaps the header or the BAT" in ours[0].what
    repaired(path, b"\x41" * 2 * CS + bytes(SIZE - 2 * CS))


def test_broken_format_extension_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "e.hds"
    content = qemu_image(path)
    poke(path, 56, struct.pack("<Q", 1 << 30))
    ours = our_findings(path, "Parallels")
    assert [f.severity for f in ours] == [ERROR] and "format extension" in ours[0].what
    repaired(path, content)
    assert peek(path, 56, 8) == bytes(8)


def test_header_damage_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "h.hds"
    qemu_image(path)
    poke(path, 28, struct.pack("<I", 0))  # cluster size 0
    before = path.read_bytes()
    report = repair(path, "Parallels")
    assert not report.repaired and report.problems[0].fix is None
    assert path.read_bytes() == before


def test_read_write_open_of_an_image_left_in_use_copies_shared_clusters(tmp_path: Path) -> None:
    path = tmp_path / "s.hds"
    qemu_image(path)
    set_entry(path, 7, 2)
    poke(path, 44, INUSE)
    with open_chain(path) as disk:
        disk.write(CS, b"\x09" * 10)
        assert disk.read(7 * CS, 10) == b"\x01" * 10
    assert qemu.check(path, "parallels").returncode == 0
    assert our_findings(path, "Parallels") == []
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(CS, 10) == b"\x09" * 10


def test_repair_cut_short_after_every_write(tmp_path: Path) -> None:
    def build(folder: Path) -> Path:
        path = folder / "r.hds"
        qemu_image(path)
        set_entry(path, 7, 2)  # shared
        set_entry(path, 1, 0)  # a hole
        poke(path, 44, INUSE)
        with open(path, "ab") as f:
            f.truncate(os.path.getsize(path) + 2 * CS)
        return path

    assert crash_repair(tmp_path, build, "Parallels") > 5
