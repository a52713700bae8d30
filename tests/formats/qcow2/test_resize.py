"""Resizing: growing (in the L1 table's clusters, or moving it), shrinking when nothing
stored is lost, with internal snapshots; qemu agrees and crashes leak at worst."""

from __future__ import annotations

import shutil

import pytest

from tests import qemu
from tests.formats.qcow2.layout import Layout
from tests.formats.qcow2.util import MiB, assert_clean, create, qemu_create, read_all
from vdgui.engine.container import Disk
from vdgui.engine.errors import InvalidSize, ShrinkNotSupported
from vdgui.engine.io import Fault, FaultyProvider, FileProvider
from vdgui.engine.io.faulty import SimulatedCrash
from vdgui.engine.ops.resize import resize

pytestmark = pytest.mark.interop

KiB = 1024


@pytest.mark.parametrize("config, new_size, moves", [
    ({"cluster_size": "65536"}, 40 * 1024 * MiB, False),     # room in the L1 cluster
    ({"cluster_size": "512"}, 64 * MiB, True),              # 2 -> 32 L1 clusters
    ({"cluster_size": "4096", "compat": "0.10"}, 3 * 1024 * MiB, True),
])
def test_grow(tmp_path, config, new_size, moves):
    path = create(tmp_path / "g.qcow2", 4 * MiB, **config)
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x51" * (4 * MiB))
        before = Layout.read(path)
        resize(disk, new_size)
        assert disk.size == new_size
        disk.write(new_size - 4096, b"\x52" * 4096)
    after = Layout.read(path)
    assert (after.l1_offset != before.l1_offset) == moves
    assert after.l1_size > before.l1_size
    assert qemu.info(path)["virtual-size"] == new_size
    assert_clean(path)
    qemu.qemu_io(path, "qcow2", "read -P 0x51 0 4M", "read -P 0 4M 1M",
                 f"read -P 0 {new_size - MiB} {MiB - 4096}",
                 f"read -P 0x52 {new_size - 4096} 4096")


def test_grow_qemu_image_ending_in_its_l1_table(tmp_path):
    """qemu's fresh images end inside the L1 table's cluster."""
    path = qemu_create(tmp_path / "q.qcow2", 64 * MiB, "write -P 7 0 64k")
    with Disk() as disk:
        disk.open(str(path))
        resize(disk, 100 * 1024 * MiB)
        disk.write(90 * 1024 * MiB, b"far")
    assert_clean(path)
    assert qemu.info(path)["virtual-size"] == 100 * 1024 * MiB


def test_shrink(tmp_path):
    path = create(tmp_path / "s.qcow2", 16 * MiB, cluster_size="4096")
    with Disk() as disk:
        disk.open(str(path))
        disk.write(MiB, b"keep")
        disk.write(12 * MiB, b"data beyond")
        with pytest.raises(ShrinkNotSupported, match=str(12 * MiB)):
            resize(disk, 8 * MiB)
        disk.write(12 * MiB, bytes(11))            # in place: still stored data
        with pytest.raises(ShrinkNotSupported):
            resize(disk, 8 * MiB)
        disk.image(0).unmap(12 * MiB, 4096, zero=True)
        disk.write(8 * MiB - 100, b"tail")           # the last cluster: data before the end
        with pytest.raises(ShrinkNotSupported, match="last cluster"):
            resize(disk, 8 * MiB - 1024)
        resize(disk, 8 * MiB)
        assert disk.size == 8 * MiB and disk.read(MiB, 4) == b"keep"
        # What lay beyond the old end does not come back when growing again.
        resize(disk, 16 * MiB)
        assert disk.read(8 * MiB, 8 * MiB) == bytes(8 * MiB)
    assert_clean(path)
    assert qemu.info(path)["virtual-size"] == 16 * MiB


def test_shrink_drops_tables_beyond(tmp_path):
    path = create(tmp_path / "t.qcow2", 8 * MiB, cluster_size="512")
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x61" * 4096)
        disk.write(6 * MiB, b"\x62" * (64 * KiB))
        disk.image(0).unmap(6 * MiB, 64 * KiB, zero=True)  # zero clusters beyond 1 MiB
    size = path.stat().st_size
    with Disk() as disk:
        disk.open(str(path))
        resize(disk, MiB)
        disk.image(0).pack()
    assert path.stat().st_size < size
    assert_clean(path)
    assert read_all(path)[:4096] == b"\x61" * 4096


def test_resize_with_snapshots(tmp_path):
    path = qemu_create(tmp_path / "n.qcow2", 8 * MiB, "write -P 1 0 1M", "write -P 2 6M 1M",
                       options="cluster_size=4096")
    qemu.qemu_img("snapshot", "-c", "s1", path)
    qemu.qemu_img("convert", "-l", "s1", "-O", "raw", path, tmp_path / "s1.raw")
    with Disk() as disk:
        disk.open(str(path))
        resize(disk, 3 * 1024 * MiB)           # the L1 table moves
        with pytest.raises(ShrinkNotSupported):
            resize(disk, 4 * MiB)
        disk.image(0).unmap(6 * MiB, MiB, zero=False)
        resize(disk, 4 * MiB)                   # the shared L2 table is copied first
        content = disk.read(0, 4 * MiB)
    assert_clean(path)
    assert content[:MiB] == b"\x01" * MiB
    copy = tmp_path / "applied.qcow2"  # applying the snapshot brings back its size too
    shutil.copy(path, copy)
    qemu.qemu_img("snapshot", "-a", "s1", copy)
    qemu.qemu_img("convert", "-O", "raw", copy, tmp_path / "after.raw")
    assert (tmp_path / "after.raw").read_bytes() == (tmp_path / "s1.raw").read_bytes()


def test_invalid_sizes(tmp_path):
    path = create(tmp_path / "i.qcow2", MiB, cluster_size="512")
    with Disk() as disk:
        disk.open(str(path))
        with pytest.raises(InvalidSize, match="holds 1 byte to"):
            disk.image(0).resize(1 << 50)


def test_grow_crash_leaves_leaks_at_worst(tmp_path):
    template = create(tmp_path / "template.qcow2", 2 * MiB, cluster_size="512")
    with Disk() as disk:
        disk.open(str(template))
        disk.write(0, b"\x71" * (2 * MiB))
    n = 0
    while True:
        folder = tmp_path / f"run{n}"
        folder.mkdir()
        path = folder / "img.qcow2"
        shutil.copy(template, path)
        disk = Disk(io=FaultyProvider(FileProvider(), Fault(after_writes=n)))
        disk.open(str(path))
        try:
            resize(disk, 256 * MiB)
            disk.close_all()
            completed = True
        except SimulatedCrash:
            disk.image(0).abandon()
            completed = False
        result = qemu.check(path, "qcow2")
        assert result.returncode in (0, 3), f"crash after {n} writes: {result.stderr}"
        content = read_all(path)
        assert content[:2 * MiB] == b"\x71" * (2 * MiB) and not any(content[2 * MiB:])
        assert len(content) in (2 * MiB, 256 * MiB)
        if completed:
            assert result.returncode == 0 and len(content) == 256 * MiB
            break
        n += 1
    assert n >= 3
