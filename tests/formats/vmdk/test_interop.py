"""VMDK interoperability with qemu-img / qemu-io, both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import qemu
from tests.formats.vmdk.helpers import (GRAIN_PLAN, MiB, PLAN, SIZE, apply, qemu_commands,
                                        read_all, write_plan)
from vdgui.engine import Disk, ImageFlags, OpenFlags, Status, open_chain
from vdgui.engine.errors import InvalidState

pytestmark = pytest.mark.interop

SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]

OURS = {
    "standard": ImageFlags.NONE,
    "fixed": ImageFlags.FIXED,
    "split2g": ImageFlags.VMDK_SPLIT_2G,
    "split2g-fixed": ImageFlags.VMDK_SPLIT_2G | ImageFlags.FIXED,
    "stream": ImageFlags.VMDK_STREAM_OPTIMIZED,
    "esx": ImageFlags.FIXED | ImageFlags.VMDK_ESX,
}


def _plan(subformat: str) -> list[tuple[int, int, int]]:
    # qemu writes compressed (stream) images only in whole grains, front to back.
    return GRAIN_PLAN if subformat == "streamOptimized" else PLAN


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_qemu_images_read_identically(tmp_path: Path, subformat: str) -> None:
    path = tmp_path / "q.vmdk"
    qemu.qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", path,
                  str(SIZE))
    plan = _plan(subformat)
    qemu.qemu_io(path, "vmdk", *qemu_commands(plan))
    expected = qemu.to_raw(path, "vmdk", tmp_path / "q.raw")
    assert expected == apply(plan)
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.size == qemu.info(path)["virtual-size"]
        assert read_all(disk) == expected
        assert disk.block_status(4 * MiB, 65536)[1] in (Status.FREE, Status.DATA,
                                                        Status.ALLOCATED_ZERO)


@pytest.mark.parametrize("variant", OURS)
def test_our_images_pass_qemu_check(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "o.vmdk"
    plan = sorted(PLAN)
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", OURS[variant])
        write_plan(disk, plan)
    raw = tmp_path / "ref.raw"
    raw.write_bytes(bytes(apply(plan)))
    assert qemu.check(path, "vmdk").returncode == 0, qemu.check(path, "vmdk").stdout
    assert qemu.compare(path, "vmdk", raw, "raw")
    assert qemu.info(path, "vmdk")["virtual-size"] == SIZE


def test_unaligned_size_agrees(tmp_path: Path) -> None:
    path = tmp_path / "odd.vmdk"
    size = SIZE + 3 * 512
    with Disk() as disk:
        disk.create_base(path, size, "VMDK")
        disk.write(size - 512, b"\x42" * 512)
    assert qemu.info(path, "vmdk")["virtual-size"] == size
    assert qemu.check(path, "vmdk").returncode == 0
    assert qemu.to_raw(path, "vmdk", tmp_path / "odd.raw")[-512:] == b"\x42" * 512


def test_qemu_reads_our_vmdk_chain(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK")
        write_plan(disk, PLAN[:3])
        disk.create_diff(child, "VMDK")
        write_plan(disk, PLAN[3:])
    assert qemu.info(child, "vmdk")["backing-filename"] == "base.vmdk"
    assert qemu.check(child, "vmdk").returncode == 0
    assert qemu.to_raw(child, "vmdk", tmp_path / "c.raw") == apply(PLAN)
    with Disk() as disk:  # a later write to the child keeps the chain valid for qemu
        disk.open(base, flags=OpenFlags.READONLY)
        disk.open(child)
        disk.write(8 * MiB, b"\x99" * 512)
    expected = apply(PLAN + [(8 * MiB, 512, 0x99)])
    assert qemu.to_raw(child, "vmdk", tmp_path / "c2.raw") == expected


def test_qemu_child_on_qemu_base(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    qemu.qemu_img("create", "-q", "-f", "vmdk", base, str(SIZE))
    qemu.qemu_io(base, "vmdk", *qemu_commands(PLAN[:4]))
    qemu.qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
    qemu.qemu_io(child, "vmdk", *qemu_commands(PLAN[3:]))
    expected = qemu.to_raw(child, "vmdk", tmp_path / "c.raw")
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.count == 2
        assert read_all(disk) == expected == apply(PLAN)
        assert disk[1].parent_filename == "base.vmdk"


def test_qemu_child_on_our_base(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK")
        write_plan(disk, PLAN[:3])
    qemu.qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
    qemu.qemu_io(child, "vmdk", *qemu_commands(PLAN[3:]))
    with open_chain(child) as disk:  # read/write: the child gets UUIDs, qemu does not mind
        assert read_all(disk) == apply(PLAN)
    assert qemu.to_raw(child, "vmdk", tmp_path / "c.raw") == apply(PLAN)


def test_qemu_zeroed_grains(tmp_path: Path) -> None:
    path = tmp_path / "z.vmdk"
    qemu.qemu_img("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", path, str(SIZE))
    qemu.qemu_io(path, "vmdk", "write -P 1 0 128k", "write -z 64k 64k")
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk.block_status(65536, 65536)[1] == Status.ZERO
        assert disk.read(0, 131072) == b"\1" * 65536 + bytes(65536)
        assert disk[0].version == 2


def test_writing_a_qemu_stream_image(tmp_path: Path) -> None:
    """qemu's streamOptimized layout keeps tables in place: new grains can be appended;
    compressed grains are replaced whole, never patched."""
    path = tmp_path / "s.vmdk"
    qemu.qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", path,
                  str(SIZE))
    qemu.qemu_io(path, "vmdk", "write -P 0x11 0 64k")
    with Disk() as disk:
        disk.open(path)
        disk.write(MiB + 100, b"\x22" * 1000)  # a new grain (filled around, compressed)
        with pytest.raises(InvalidState) as info:
            disk.write(512, b"\x33" * 512)  # part of a compressed grain
        assert info.value.status == "VERR_VD_VMDK_INVALID_STATE"
        disk.write(0, b"\x44" * 65536)  # a whole grain: a new record
    expected = apply([(0, 65536, 0x44), (MiB + 100, 1000, 0x22)])
    assert qemu.check(path, "vmdk").returncode == 0
    assert qemu.to_raw(path, "vmdk", tmp_path / "s.raw") == expected
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert read_all(disk) == expected


@pytest.mark.parametrize("variant, new_size", [("standard", 100 * MiB),
                                               ("standard", 5 << 30),
                                               ("fixed", 12 * MiB),
                                               ("split2g", 2047 * MiB + 10 * MiB)])
def test_qemu_reads_resized_images(tmp_path: Path, variant: str, new_size: int) -> None:
    from vdgui.engine.ops.resize import resize
    path = tmp_path / "r.vmdk"
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", OURS[variant])
        write_plan(disk, PLAN)
        resize(disk, new_size)
        disk.write(new_size - 512, b"\x77" * 512)
    assert qemu.info(path, "vmdk")["virtual-size"] == new_size
    assert qemu.check(path, "vmdk").returncode == 0
    qemu.qemu_io(path, "vmdk", "read -P 0x77 %d 512" % (new_size - 512),
                 "read -P 0x44 %d 100000" % (MiB + 4096), "read -P 0 %d 65536" % SIZE)
