"""Releasing clusters (unmap), compaction (pack), discard: against a bytearray model,
``qemu-img check`` and ``qemu-img compare``; crashes leave leaks at worst."""

from __future__ import annotations

import random
import shutil

import pytest

from tests import qemu
from tests.formats.qcow2.layout import Layout
from tests.formats.qcow2.util import (MiB, assert_clean, assert_same_as_raw, create, qemu_create,
                                      read_all)
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.errors import Corrupted, NotSupported
from vdgui.engine.io import Fault, FaultyProvider, FileProvider
from vdgui.engine.io.faulty import SimulatedCrash
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.resize import resize
from vdgui.engine.types import OpenFlags, Status

pytestmark = pytest.mark.interop

KiB = 1024


def _filled(path, size: int, seed: int, **config) -> bytearray:
    """An image full of random data, then zeros written over random ranges (in place:
    the clusters stay allocated).  Returns the content."""
    rnd = random.Random(seed)
    create(path, size, **config)
    expected = bytearray(rnd.randbytes(size))
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, expected)
        for _ in range(30):
            offset = rnd.randrange(0, size - 256 * KiB) // 512 * 512
            length = rnd.randrange(1, 400) * 512
            disk.write(offset, bytes(length))
            expected[offset:offset + length] = bytes(length)
    return expected


def _end_offset(path) -> int:
    return qemu.info(path)["actual-size"] and int(
        qemu.qemu_img("check", "--output=json", "-f", "qcow2", path).stdout.split(
            '"image-end-offset":')[1].split(",")[0])


@pytest.mark.parametrize("config", [
    {"cluster_size": "4096"}, {"cluster_size": "512", "refcount_bits": "64"},
    {"cluster_size": "65536", "compat": "0.10"}, {"cluster_size": "8192", "refcount_bits": "1"},
])
def test_compact_frees_zeros_and_shrinks(tmp_path, config):
    path = tmp_path / "c.qcow2"
    size = 6 * MiB
    expected = _filled(path, size, seed=len(config), **config)
    before = path.stat().st_size
    with Disk() as disk:
        disk.open(str(path))
        plan = compact(disk)
        assert disk.read(0, size) == expected
    assert plan.zero + plan.same_as_below > 0 or config.get("compat") == "0.10"
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)
    assert read_all(path) == expected
    assert path.stat().st_size < before or config.get("compat") == "0.10"
    # The file ends right after its last used cluster.
    assert path.stat().st_size == _end_offset(path)


def test_unmap_against_a_model(tmp_path):
    """Free clusters fall through to the backing file; zero clusters hide it."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    cs = 4096
    with Disk() as disk:
        disk.create_base(str(base), 2 * MiB, "QCOW2", config={"cluster_size": str(cs)})
        disk.write(0, b"\xbb" * (2 * MiB))
        disk.create_diff(str(top), "QCOW2", config={"cluster_size": str(cs)})
        disk.write(0, b"\x77" * MiB)
        image = disk.image(1)
        model = bytearray(b"\x77" * MiB + b"\xbb" * MiB)
        rnd = random.Random(5)
        for _ in range(40):
            first = rnd.randrange(0, 2 * MiB // cs)
            count = rnd.randrange(1, 40)
            zero = rnd.random() < 0.5
            image.unmap(first * cs, count * cs, zero)
            start, end = first * cs, min((first + count) * cs, 2 * MiB)
            model[start:end] = bytes(end - start) if zero else b"\xbb" * (end - start)
        assert disk.read(0, 2 * MiB) == model
        image.unmap(0, cs, zero=False)
        image.unmap(cs, cs, zero=True)
        assert image.block_status(0, cs) == (Status.FREE, cs)
        assert image.block_status(cs, cs) == (Status.ZERO, cs)
        model[:2 * cs] = b"\xbb" * cs + bytes(cs)
        # Unaligned edges are never released: only whole clusters inside the range.
        image.unmap(MiB + 100, cs, zero=True)
        assert disk.read(0, 2 * MiB) == model
    assert_clean(top)
    assert_same_as_raw(top, bytes(model), tmp_path)
    assert read_all(top) == model


def test_unmap_without_table_allocates_nothing(tmp_path):
    path = create(tmp_path / "e.qcow2", 64 * MiB)
    size = path.stat().st_size
    with Disk() as disk:
        disk.open(str(path))
        disk.image(0).unmap(0, 64 * MiB, zero=False)
    assert path.stat().st_size == size
    assert_clean(path)


def test_version_2_has_no_zero_clusters(tmp_path):
    path = create(tmp_path / "v2.qcow2", MiB, compat="0.10", cluster_size="4096")
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x12" * MiB)
        image = disk.image(0)
        assert not image.can_mark_zero
        with pytest.raises(NotSupported, match="zero clusters"):
            image.unmap(0, 4096, zero=True)
        image.unmap(0, 8192, zero=False)
        assert disk.read(0, 8192) == bytes(8192)
    assert_clean(path)


def test_discard(tmp_path):
    path = tmp_path / "d.qcow2"
    size = 4 * MiB
    expected = _filled(path, size, seed=9, cluster_size="4096")
    ranges = [(100, 3000), (MiB + 512, MiB), (3 * MiB, MiB)]
    with Disk() as disk:
        disk.open(str(path), flags=OpenFlags.DISCARD)
        discard(disk, ranges)
        for offset, length in ranges:
            expected[offset:offset + length] = bytes(length)
        assert disk.read(0, size) == expected
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)
    assert path.stat().st_size < 3 * MiB + 200 * KiB


def test_pack_moves_the_tables_back(tmp_path):
    """A grown refcount table and a moved L1 table at the end of the file come back
    into the holes; the file ends at its last used cluster."""
    path = create(tmp_path / "t.qcow2", 2 * MiB, cluster_size="512", refcount_bits="64")
    layout = Layout.read(path)
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x31" * (2 * MiB))     # grows the refcount table
        resize(disk, 64 * MiB)                   # moves the L1 table to the end
        disk.write(60 * MiB, b"\x32" * 4096)
        disk.write(0, bytes(2 * MiB))            # everything before: zeros
        moved = Layout.read(path)
        assert moved.reftable > layout.reftable and moved.l1_offset > layout.l1_offset
        compact(disk)
        assert disk.read(60 * MiB, 4096) == b"\x32" * 4096
    packed = Layout.read(path)
    assert packed.reftable < moved.reftable and packed.l1_offset < moved.l1_offset
    assert path.stat().st_size < 200 * KiB
    assert_clean(path)
    expected = bytearray(64 * MiB)
    expected[60 * MiB:60 * MiB + 4096] = b"\x32" * 4096
    assert_same_as_raw(path, expected, tmp_path)


def test_pack_keeps_snapshots_and_compressed_clusters(tmp_path):
    path = qemu_create(tmp_path / "s.qcow2", 8 * MiB, "write -P 1 0 2M", "write -c -P 2 2M 256k",
                       "write -P 3 4M 2M", options="cluster_size=4096")
    qemu.qemu_img("snapshot", "-c", "s1", path)
    qemu.qemu_io(path, "qcow2", "write -P 4 5M 512k")
    qemu.qemu_img("convert", "-l", "s1", "-O", "raw", path, tmp_path / "s1.raw")
    with Disk() as disk:
        disk.open(str(path))
        disk.write(5 * MiB, bytes(512 * KiB))   # the snapshot's copies stay
        disk.write(2 * MiB, bytes(128 * KiB))   # compressed clusters become zero clusters
        expected = disk.read(0, 8 * MiB)
        compact(disk)
        assert disk.read(0, 8 * MiB) == expected
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)
    qemu.qemu_img("convert", "-l", "s1", "-O", "raw", path, tmp_path / "after.raw")
    assert (tmp_path / "after.raw").read_bytes() == (tmp_path / "s1.raw").read_bytes()


def test_pack_frees_leaks(tmp_path):
    path = create(tmp_path / "l.qcow2", MiB, cluster_size="4096")
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x44" * 64 * KiB)
    layout = Layout.read(path)
    cluster = layout.clusters
    with open(path, "r+b") as f:
        f.truncate((cluster + 3) * 4096)
    for c in range(cluster, cluster + 3):
        layout.set_refcount(c, 1)
    assert qemu.check(path, "qcow2").returncode == 3  # leaks
    with Disk() as disk:
        disk.open(str(path))
        disk.image(0).pack()
    assert_clean(path)
    assert path.stat().st_size == cluster * 4096


def test_pack_refuses_a_damaged_image(tmp_path):
    path = create(tmp_path / "x.qcow2", MiB, cluster_size="4096")
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x44" * 64 * KiB)
        layout = Layout.read(path)
        layout.set_refcount(layout.host_cluster(0), 0)
        with pytest.raises(Corrupted, match="repaired before it can be compacted"):
            disk.image(0).pack()


def _holey_template(path) -> bytes:
    """Random data, the L1 and refcount tables moved to the end, then clusters released
    here and there: a pack moves data, L2 tables, refcount blocks and both tables."""
    rnd = random.Random(1)
    size, cs = 3 * MiB // 2, 512
    create(path, size, cluster_size=str(cs), refcount_bits="64")
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, rnd.randbytes(size))
        resize(disk, 40 * MiB)
        for _ in range(30):
            first = rnd.randrange(size // cs)
            disk.image(0).unmap(first * cs, rnd.randrange(1, 100) * cs, rnd.random() < 0.5)
        return disk.read(0, 40 * MiB)


def _pack_run(template, folder, n: int) -> bool:
    path = folder / "img.qcow2"
    shutil.copy(template, path)
    disk = Disk(io=FaultyProvider(FileProvider(), Fault(after_writes=n)))
    disk.open(str(path))
    try:
        disk.image(0).pack()
        disk.close_all()
        return True
    except SimulatedCrash:
        disk.image(0).abandon()
        return False


def _pack_sweep(tmp_path, step: int) -> int:
    template = tmp_path / "template.qcow2"
    expected = _holey_template(template)
    n = 0
    while True:
        folder = tmp_path / f"run{n}"
        folder.mkdir()
        completed = _pack_run(template, folder, n)
        path = folder / "img.qcow2"
        result = qemu.check(path, "qcow2")
        assert result.returncode in (0, 3), f"crash after {n} writes: {result.stderr}"
        assert read_all(path) == expected, f"crash after {n} writes changed the content"
        if completed:
            assert result.returncode == 0 and path.stat().st_size < template.stat().st_size
            return n
        if result.returncode == 3:  # the next compaction frees the leaks
            with Disk() as disk:
                disk.open(str(path))
                disk.image(0).pack()
            assert_clean(path)
        shutil.rmtree(folder)
        n += step


def test_pack_crash_leaves_leaks_at_worst(tmp_path):
    """Cut short after its n-th write (sampled), a pack leaves an image that reads as
    before and that qemu-img check finds clean or leaking."""
    assert _pack_sweep(tmp_path, step=9) > 100


@pytest.mark.stress
def test_pack_crash_every_write(tmp_path):
    _pack_sweep(tmp_path, step=1)


@pytest.mark.parametrize("options", ["cluster_size=4096", "compat=0.10,cluster_size=4096",
                                     "preallocation=metadata,cluster_size=65536"])
def test_compact_qemu_images(tmp_path, options):
    path = qemu_create(tmp_path / "q.qcow2", 8 * MiB, "write -P 0x21 0 3M",
                       "write -P 0 1M 1M", "write -P 0x22 6M 64k", options=options)
    before = path.stat().st_size
    expected = read_all(path)
    with Disk() as disk:
        disk.open(str(path))
        compact(disk)
    assert_clean(path)
    assert read_all(path) == expected
    assert_same_as_raw(path, expected, tmp_path)
    assert path.stat().st_size < before


def test_discard_in_a_qemu_overlay(tmp_path):
    base = qemu_create(tmp_path / "b.qcow2", "4M", "write -P 1 0 4M")
    top = qemu_create(tmp_path / "t.qcow2", "4M", "write -P 2 0 2M", backing=base,
                      options="cluster_size=4096")
    with open_chain(str(top), OpenFlags.DISCARD) as disk:
        discard(disk, [(MiB, 2 * MiB)])
    expected = b"\x02" * MiB + bytes(2 * MiB) + b"\x01" * MiB
    assert_clean(top)
    assert read_all(top) == expected
    assert_same_as_raw(top, expected, tmp_path)
