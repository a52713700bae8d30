"""VDRepair on damaged VDI images: the dry run reports and changes nothing, the
repair fixes exactly what it reported, and qemu-img agrees with the result."""

from __future__ import annotations

import os
import struct

import pytest

from tests import qemu
from vdgui.engine import Disk, OpenFlags, RepairFlags, open_chain
from vdgui.engine.ops.repair import repair

MiB = 1 << 20
MAP = 0x100000


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "d.vdi"
    with Disk() as disk:
        disk.create_base(path, 8 * MiB)
        for block in range(4):
            disk.write(block * MiB, bytes([block + 1]) * MiB)
    return path


def poke(path, offset, fmt, value):
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(bytes(raw))


def dry_then_repair(path):
    before = path.read_bytes()
    mtime = os.stat(path).st_mtime_ns
    dry = repair(path, flags=RepairFlags.DRY_RUN)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime
    fixed = repair(path)
    return dry, fixed


def test_clean_image_is_clean(image):
    report = repair(image, flags=RepairFlags.DRY_RUN)
    assert report.clean and report.problems == [] and report.format == "VDI"
    assert report.to_json()["clean"] is True


def test_entry_past_the_allocated_blocks(image):
    poke(image, MAP + 4 * 5, "<I", 77)
    dry, fixed = dry_then_repair(image)
    assert [p.severity for p in dry.problems] == ["error"]
    assert "block 5" in dry.problems[0].what and dry.problems[0].offset == MAP + 20
    assert fixed.repaired and fixed.clean
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(5 * MiB, 4) == bytes(4) and disk.read(3 * MiB, 1) == b"\x04"
    assert qemu.check(image, "vdi").returncode == 0


def test_shared_block_and_leak(image):
    poke(image, MAP + 4 * 3, "<I", 1)  # block 3 -> physical 1 (shared); physical 3 leaks
    dry, fixed = dry_then_repair(image)
    kinds = sorted(p.severity for p in dry.problems)
    assert kinds == ["error", "leak"] and dry.leaked_bytes == MiB
    assert fixed.clean
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(MiB, 1) == b"\x02" and disk.read(3 * MiB, 1) == b"\x00"
    assert os.path.getsize(image) == 2 * MiB + 3 * MiB
    assert qemu.check(image, "vdi").returncode == 0


def test_truncated_file(image):
    os.truncate(image, os.path.getsize(image) - MiB // 2)
    dry, fixed = dry_then_repair(image)
    assert any("cut short" in p.what for p in dry.problems)
    assert fixed.clean
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(3 * MiB, 4) == b"\x04" * 4
        assert disk.read(4 * MiB - 4, 4) == bytes(4)


def test_header_damage_cannot_be_repaired(image):
    poke(image, 0x178, "<I", 1000)  # block size
    before = image.read_bytes()
    report = repair(image, "VDI")
    assert not report.clean and not report.repaired
    assert report.problems[0].fix is None and "block size" in report.problems[0].what
    assert image.read_bytes() == before


def test_parent_mismatch_is_reported(tmp_path, image):
    diff = tmp_path / "diff.vdi"
    with open_chain(image) as disk:
        disk.create_diff(diff)
    with Disk() as disk:
        disk.open(image)
        disk.set_uuid(0)
    report = repair(diff, flags=RepairFlags.DRY_RUN)
    assert [p.severity for p in report.problems] == ["error"]
    assert "parent" in report.problems[0].what and report.problems[0].fix is None
