"""Images qemu writes read identically in ours (qemu-img convert -O raw is the truth)."""

from __future__ import annotations

import json

import pytest

from tests import qemu
from tests.formats.qcow2.util import MiB, qemu_create, read_all
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.types import OpenFlags, Status

pytestmark = pytest.mark.interop

SIZES = {"512": 512, "4k": 4096, "64k": 65536, "2M": 2 * MiB}


def _writes(cs: int, size: int) -> list[str]:
    """qemu-io commands at awkward places: first and last sector, sizes that are not
    multiples of the cluster, runs across cluster and L2-table boundaries, zeros."""
    cs = max(cs, 4096)
    return [
        "write -P 0x11 0 512",
        f"write -P 0x22 {size - 512} 512",
        f"write -P 0x33 {cs - 1024} {3 * cs + 1536}",
        f"write -P 0x44 {5 * cs + 7 * 512} 4608",
        f"write -P 0x55 {size // 2 - 3 * 512} {cs * 2 + 512}",
        f"write -z {8 * cs} {2 * cs}",
        f"write -P 0x66 {12 * cs} {cs}",
        f"write -z {12 * cs} {cs}",  # a zero write over data: a preallocated zero cluster
    ]


@pytest.mark.parametrize("cluster, compat, refcount_bits", [
    ("4k", "1.1", 1), ("4k", "0.10", 16), ("64k", "1.1", 16), ("64k", "0.10", 16),
    ("64k", "1.1", 64), ("2M", "1.1", 16), ("2M", "0.10", 16), ("512", "1.1", 64),
])
def test_reads_like_qemu(tmp_path, cluster, compat, refcount_bits):
    cs = SIZES[cluster]
    size = max(16 * MiB, 32 * cs)
    path = qemu_create(tmp_path / "img.qcow2", size, *_writes(cs, size),
                       options=f"cluster_size={cs},compat={compat},"
                               f"refcount_bits={refcount_bits}")
    expected = qemu.to_raw(path, "qcow2", tmp_path / "out.raw")
    assert read_all(path) == expected
    _assert_map_agrees(path)


def _assert_map_agrees(path) -> None:
    """Where qemu says data, we say data; where qemu has nothing, we have nothing."""
    extents = json.loads(qemu.qemu_img("map", "--output=json", "-f", "qcow2", path).stdout)
    with open_chain(str(path), OpenFlags.READONLY) as disk:
        for extent in extents:
            pos, end = extent["start"], extent["start"] + extent["length"]
            while pos < end:
                depth, status, run = disk.block_status(pos, end - pos)
                if extent["data"]:
                    assert status is Status.DATA, (extent, pos)
                elif not extent.get("present", True):
                    assert status is Status.FREE, (extent, pos)
                else:
                    assert status.reads_zero, (extent, pos)
                pos += run


def test_zero_clusters(tmp_path):
    path = qemu_create(tmp_path / "z.qcow2", 4 * MiB, "write -P 0x77 0 256k",
                       "write -z 64k 64k", "write -z 1M 128k")
    with Disk() as disk:
        disk.open(str(path), flags=OpenFlags.READONLY)
        assert disk.block_status(0, 65536)[1] is Status.DATA
        # Zeroed over allocated data: the cluster stays reserved.
        assert disk.block_status(65536, 65536)[1:] == (Status.ALLOCATED_ZERO, 65536)
        assert disk.block_status(MiB, 128 << 10)[1:] == (Status.ZERO, 128 << 10)
        assert disk.read(65536, 65536) == bytes(65536)
    assert read_all(path) == qemu.to_raw(path, "qcow2", tmp_path / "z.raw")


@pytest.mark.parametrize("cluster, ctype", [("4k", "zlib"), ("64k", "zlib"),
                                            ("64k", "zstd"), ("2M", "zlib")])
def test_compressed(tmp_path, cluster, ctype):
    if ctype == "zstd":
        pytest.importorskip("zstandard")
    cs = SIZES[cluster]
    size = max(16 * MiB, 16 * cs)
    src = qemu_create(tmp_path / "src.qcow2", size, *_writes(cs, size),
                      "write -P 0x5a 100k 300k", options=f"cluster_size={cs}")
    dst = tmp_path / "c.qcow2"
    qemu.qemu_img("convert", "-c", "-O", "qcow2", "-o",
                  f"cluster_size={cs},compression_type={ctype}", src, dst)
    check = json.loads(qemu.qemu_img("check", "--output=json", dst).stdout)
    assert check["compressed-clusters"] > 0
    assert read_all(dst) == qemu.to_raw(src, "qcow2", tmp_path / "src.raw")


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
def test_backing_chain(tmp_path, compat):
    options = f"compat={compat}"
    base = qemu_create(tmp_path / "base.qcow2", 8 * MiB, "write -P 0x11 0 4M",
                       options=options)
    mid = qemu_create(tmp_path / "mid.qcow2", 8 * MiB, "write -P 0x22 1M 100k",
                      "write -z 2M 64k", backing=base, options=options)
    top = qemu_create(tmp_path / "top.qcow2", 16 * MiB, "write -P 0x33 1000 3000",
                      f"write -P 0x44 {16 * MiB - 512} 512", backing=mid, options=options)
    assert read_all(top) == qemu.to_raw(top, "qcow2", tmp_path / "top.raw")
    with open_chain(str(top), OpenFlags.READONLY) as disk:
        assert disk.count == 3
        assert disk.image(2).parent_filename == "mid.qcow2"
        assert disk.image(2).parent_format == "qcow2"


def test_child_over_raw_base(tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(range(256)) * (3 * MiB // 256))  # smaller than the child
    child = qemu_create(tmp_path / "child.qcow2", 4 * MiB, "write -P 0x11 100k 3000",
                        "write -z 1M 64k", backing=base, backing_fmt="raw")
    assert read_all(child) == qemu.to_raw(child, "qcow2", tmp_path / "child.raw")


def test_internal_snapshots(tmp_path):
    path = qemu_create(tmp_path / "s.qcow2", 8 * MiB, "write -P 0x11 0 1M")
    qemu.qemu_img("snapshot", "-c", "first", path)
    qemu.qemu_io(path, "qcow2", "write -P 0x22 64k 64k")
    qemu.qemu_img("snapshot", "-c", "second", path)
    qemu.qemu_io(path, "qcow2", "write -z 0 64k")
    assert read_all(path) == qemu.to_raw(path, "qcow2", tmp_path / "s.raw")
    with Disk() as disk:
        disk.open(str(path), flags=OpenFlags.READONLY)
        dump = disk.dump()
    assert "snapshots: 2" in dump
    assert "name 'first'" in dump and "name 'second'" in dump
    names = [s["name"] for s in qemu.info(path)["snapshots"]]
    assert names == ["first", "second"]


@pytest.mark.parametrize("compress", [False, True])
def test_extended_l2_read_only(tmp_path, compress):
    src = qemu_create(tmp_path / "e.qcow2", 4 * MiB, "write -P 0x11 4k 4k", "write -z 64k 4k",
                      "write -P 0x22 1M 300k", "write -P 0x33 200k 1000",
                      options="extended_l2=on,cluster_size=128k")
    path = src
    if compress:
        path = tmp_path / "ec.qcow2"
        qemu.qemu_img("convert", "-c", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=64k",
                      src, path)
    assert read_all(path) == qemu.to_raw(src, "qcow2", tmp_path / "e.raw")
    if not compress:
        with Disk() as disk:
            disk.open(str(path), flags=OpenFlags.READONLY)
            assert disk.block_status(4096, 8192)[1:] == (Status.DATA, 4096)
            assert disk.block_status(65536, 4096)[1] is Status.ZERO
            assert disk.block_status(0, 4096)[1] is Status.FREE
