"""VDI against qemu-img/qemu-io, both ways, on real files."""

from __future__ import annotations

import os

import pytest

from tests import qemu
from vdgui.engine import Disk, ImageFlags, OpenFlags, open_chain

pytestmark = pytest.mark.interop

MiB = 1 << 20

# (offset, length, pattern): first sector, block-straddling, unaligned-size and last sector.
WRITES = [(0, 512, 0x11), (MiB - 4096, 8192, 0x22), (2 * MiB + 512, 70000 // 512 * 512, 0x33)]


def qemu_writes(size: int) -> list[tuple[int, int, int]]:
    return WRITES + [(size - 512, 512, 0x44)]


@pytest.mark.parametrize("static", ["off", "on"])
@pytest.mark.parametrize("size", [5 * MiB, 5 * MiB + 512, 3 * MiB + 64 * 1024])
def test_qemu_written_vdi_reads_identically(tmp_path, size, static):
    image = tmp_path / "q.vdi"
    qemu.qemu_img("create", "-f", "vdi", "-o", f"static={static}", image, str(size))
    qemu.qemu_io(image, "vdi", *(f"write -P {p:#x} {o} {n}" for o, n, p in qemu_writes(size)))
    expected = qemu.to_raw(image, "vdi", tmp_path / "q.raw")
    before = image.read_bytes()
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.size == size == qemu.info(image)["virtual-size"]
        assert disk.read(0, size) == expected
        assert bool(disk[0].image_flags & ImageFlags.FIXED) == (static == "on")
    assert image.read_bytes() == before


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("size", [4 * MiB, 4 * MiB + 512, 9 * MiB - 512])
def test_our_vdi_passes_qemu_check_and_compares_equal(tmp_path, size, fixed):
    image = tmp_path / "ours.vdi"
    raw = bytearray(size)
    chunks = [(0, os.urandom(512)), (MiB - 100, os.urandom(300)),
              (2 * MiB, bytes(MiB)), (3 * MiB + 7, os.urandom(70000)),
              (size - 512, b"\xee" * 512)]
    with Disk() as disk:
        disk.create_base(image, size, image_flags=ImageFlags.FIXED if fixed else ImageFlags.NONE)
        for offset, data in chunks:
            disk.write(offset, data)
            raw[offset:offset + len(data)] = data
    (tmp_path / "ref.raw").write_bytes(raw)
    result = qemu.check(image, "vdi")
    assert result.returncode == 0, result.stdout + result.stderr
    assert qemu.compare(image, "vdi", tmp_path / "ref.raw", "raw")
    assert qemu.info(image, "vdi")["virtual-size"] == size


def test_our_diff_chain_flattens_like_the_model(tmp_path):
    """qemu refuses VDI differencing images ("non-NULL link UUID"), so check the base
    with qemu and the flattened chain against a model."""
    base, diff = tmp_path / "base.vdi", tmp_path / "diff.vdi"
    size = 6 * MiB
    model = bytearray(size)
    with Disk() as disk:
        disk.create_base(base, size)
        disk.write(0, b"\x01" * (3 * MiB))
        model[:3 * MiB] = b"\x01" * (3 * MiB)
        disk.create_diff(diff)
        disk.write(MiB, bytes(MiB))          # zero block hides the parent
        disk.write(2 * MiB + 10, b"\x02" * 10)
        model[MiB:2 * MiB] = bytes(MiB)
        model[2 * MiB + 10:2 * MiB + 20] = b"\x02" * 10
    assert qemu.check(base, "vdi").returncode == 0
    assert "link UUID" in qemu.check(diff, "vdi").stderr
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(0, size) == model
    base_raw = qemu.to_raw(base, "vdi", tmp_path / "base.raw")
    assert base_raw[:3 * MiB] == b"\x01" * (3 * MiB)
