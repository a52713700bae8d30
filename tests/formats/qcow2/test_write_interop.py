"""Images we create and write pass ``qemu-img check`` clean and read identically in qemu."""

from __future__ import annotations

import json
import random
import resource
import subprocess

import pytest

from tests import qemu
from tests.formats.qcow2.util import (MiB, assert_clean, assert_same_as_raw, create, get_u64,
                                      qemu_create, read_all)
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.types import OpenFlags, Status

pytestmark = pytest.mark.interop


def _scribble(disk: Disk, expected: bytearray, seed: int, count: int = 12) -> None:
    """Writes at awkward offsets and lengths, zeros over data, first and last sector."""
    rnd = random.Random(seed)
    size = len(expected)

    def put(offset: int, data: bytes) -> None:
        disk.write(offset, data)
        expected[offset:offset + len(data)] = data

    put(0, b"\x11" * 512)
    put(size - 512, b"\x22" * 512)
    for _ in range(count):
        offset = rnd.randrange(0, size - 200_000) // 512 * 512
        put(offset, rnd.randbytes(rnd.randrange(1, 400) * 512))
    put(3 * 4096 + 512, bytes(70_000))  # zeros over data and over nothing
    put(size // 2 + 1536, bytes([7]) * 100_000)
    assert disk.read(0, size) == expected


@pytest.mark.parametrize("cluster, compat, refcount_bits", [
    (4096, "1.1", 1), (65536, "1.1", 16), (65536, "0.10", 16), (2 * MiB, "1.1", 64),
    (512, "1.1", 4),
])
def test_created_and_written(tmp_path, cluster, compat, refcount_bits):
    size = 24 * MiB
    path = create(tmp_path / "new.qcow2", size, cluster_size=str(cluster), compat=compat,
                  refcount_bits=str(refcount_bits))
    expected = bytearray(size)
    with Disk() as disk:
        disk.open(str(path))
        _scribble(disk, expected, seed=cluster)
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)
    info = qemu.info(path)
    assert info["virtual-size"] == size
    assert info["cluster-size"] == cluster
    assert info["format-specific"]["data"]["compat"] == compat
    assert read_all(path) == expected


def test_unaligned_size(tmp_path):
    size = 5 * MiB + 3 * 512  # the last cluster is partial
    path = create(tmp_path / "odd.qcow2", size)
    expected = bytearray(size)
    with Disk() as disk:
        disk.open(str(path))
        disk.write(size - 1024, b"\xab" * 1024)
        expected[size - 1024:] = b"\xab" * 1024
    assert_clean(path)
    assert qemu.info(path)["virtual-size"] == size
    assert_same_as_raw(path, expected, tmp_path)


def test_refcount_table_grows(tmp_path):
    # 512-byte clusters with 64-bit counts: one table cluster covers only 2 MiB.
    path = create(tmp_path / "grow.qcow2", 16 * MiB, cluster_size="512", refcount_bits="64")
    table_before = get_u64(path, 48)
    data = random.Random(1).randbytes(5 * MiB)
    with Disk() as disk:
        disk.open(str(path))
        disk.write(MiB, data)
        disk.write(10 * MiB + 512, data[:MiB])
    assert get_u64(path, 48) != table_before
    expected = bytearray(16 * MiB)
    expected[MiB:6 * MiB] = data
    expected[10 * MiB + 512:11 * MiB + 512] = data[:MiB]
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)


@pytest.mark.parametrize("base_format, compat", [("QCOW2", "1.1"), ("QCOW2", "0.10"),
                                                 ("VDI", "1.1")])
def test_diff_over_our_base(tmp_path, base_format, compat):
    ext = base_format.lower()
    base, child = tmp_path / f"base.{ext}", tmp_path / "child.qcow2"
    size = 16 * MiB
    expected = bytearray(size)
    with Disk() as disk:
        disk.create_base(str(base), size, base_format)
        _scribble(disk, expected, seed=1)
        disk.write(4 * MiB, b"\x5a" * MiB)
        expected[4 * MiB:5 * MiB] = b"\x5a" * MiB
        disk.create_diff(str(child), "QCOW2", config={"compat": compat})
        _scribble(disk, expected, seed=2)
        # Zeros over parent data must hide it (v3: zero clusters; v2: written zeros).
        disk.write(4 * MiB, bytes(MiB))
        expected[4 * MiB:5 * MiB] = bytes(MiB)
        assert disk.block_status(4 * MiB, MiB)[0] == 1
    info = qemu.info(child)
    assert info["backing-filename"] == base.name
    assert info["backing-filename-format"] == {"QCOW2": "qcow2", "VDI": "vdi"}[base_format]
    assert info["virtual-size"] == size
    assert_clean(child)
    assert_same_as_raw(child, expected, tmp_path)
    assert read_all(child) == expected


def test_diff_over_qemu_base(tmp_path):
    base = qemu_create(tmp_path / "base.qcow2", 8 * MiB, "write -P 0x11 0 8M")
    expected = bytearray(qemu.to_raw(base, "qcow2", tmp_path / "base.raw"))
    child = tmp_path / "child.qcow2"
    with Disk() as disk:
        disk.open(str(base), flags=OpenFlags.READONLY)
        disk.create_diff(str(child), "QCOW2")
        disk.write(1000 * 512, b"\x22" * 700)  # partial cluster: the rest comes from below
        expected[1000 * 512:1000 * 512 + 700] = b"\x22" * 700
        disk.write(2 * MiB, bytes(65536))
        expected[2 * MiB:2 * MiB + 65536] = bytes(65536)
        assert disk.block_status(2 * MiB, 65536)[1] is Status.ZERO
    assert_clean(child)
    assert_same_as_raw(child, expected, tmp_path)


def test_writes_keep_internal_snapshots(tmp_path):
    path = qemu_create(tmp_path / "s.qcow2", 8 * MiB, "write -P 0x11 0 1M",
                       "write -P 0x22 4M 64k")
    qemu.qemu_img("snapshot", "-c", "snap", path)
    snapshot = qemu.to_raw(path, "qcow2", tmp_path / "snap.raw")
    expected = bytearray(snapshot)
    with Disk() as disk:
        disk.open(str(path))
        for offset, length, value in [(1000, 100, 7), (65536, 65536, 8), (4 * MiB, 5, 9),
                                      (6 * MiB, 3, 10), (0, 4096, 0)]:
            disk.write(offset, bytes([value]) * length)
            expected[offset:offset + length] = bytes([value]) * length
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)
    qemu.qemu_img("convert", "-l", "snap", "-O", "raw", path, tmp_path / "after.raw")
    assert (tmp_path / "after.raw").read_bytes() == snapshot


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_writes_into_compressed_image(tmp_path, ctype):
    if ctype == "zstd":
        pytest.importorskip("zstandard")
    src = qemu_create(tmp_path / "src.qcow2", 4 * MiB, "write -P 0x11 0 1M",
                      "write -P 0x22 3M 100k")
    path = tmp_path / "c.qcow2"
    qemu.qemu_img("convert", "-c", "-O", "qcow2", "-o", f"compression_type={ctype}", src, path)
    expected = bytearray(qemu.to_raw(src, "qcow2", tmp_path / "src.raw"))
    with Disk() as disk:
        disk.open(str(path))
        for offset, length, value in [(1000, 100, 7), (65536, 65536, 8), (3 * MiB, 10, 9)]:
            disk.write(offset, bytes([value]) * length)
            expected[offset:offset + length] = bytes([value]) * length
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)


def test_write_into_preallocated_zero_cluster(tmp_path):
    path = qemu_create(tmp_path / "z.qcow2", 4 * MiB, "write -P 0x11 0 256k",
                       "write -z 64k 128k")
    expected = bytearray(qemu.to_raw(path, "qcow2", tmp_path / "z.raw"))
    with Disk() as disk:
        disk.open(str(path))
        assert disk.block_status(65536, 65536)[1] is Status.ALLOCATED_ZERO
        disk.write(70_000, b"\x33" * 1000)
        expected[70_000:71_000] = b"\x33" * 1000
        assert disk.read(0, 4 * MiB) == expected
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)


@pytest.mark.parametrize("options", [
    {}, {"compression_type": "zstd"}, {"cluster_size": "4096", "refcount_bits": "1"},
    {"cluster_size": "4096", "refcount_bits": "2"}, {"compat": "0.10"},
])
def test_write_compressed(tmp_path, options):
    if options.get("compression_type") == "zstd":
        pytest.importorskip("zstandard")
    path = create(tmp_path / "cw.qcow2", 8 * MiB, **options)
    rnd = random.Random(5)
    expected = bytearray(8 * MiB)
    with Disk() as disk:
        disk.open(str(path))
        image = disk.image(0)
        cs = image.allocation_unit
        data = bytearray()
        for i in range(30):
            data += bytes([i + 1]) * (cs // 2) + rnd.randbytes(cs // 4) + bytes(cs // 4)
        data[3 * cs:4 * cs] = bytes(cs)             # a zero cluster
        data[5 * cs:6 * cs] = rnd.randbytes(cs)     # incompressible: stored as is
        image.write_compressed(2 * cs, data[:15 * cs])
        image.write_compressed(40 * cs, data[15 * cs:])
        expected[2 * cs:17 * cs] = data[:15 * cs]
        expected[40 * cs:55 * cs] = data[15 * cs:]
        disk.write(2 * cs + 5, b"abc")  # rewriting a compressed cluster
        expected[2 * cs + 5:2 * cs + 8] = b"abc"
        assert disk.read(0, 8 * MiB) == expected
    assert_clean(path)
    check = json.loads(qemu.qemu_img("check", "--output=json", path).stdout)
    assert check["compressed-clusters"] >= 20
    assert_same_as_raw(path, expected, tmp_path)


def test_dirty_lazy_refcount_image(tmp_path):
    path = qemu_create(tmp_path / "lazy.qcow2", 16 * MiB, options="lazy_refcounts=on")
    qemu.qemu_img("snapshot", "-c", "old", path)
    # qemu-io aborts after writing: the dirty bit stays set, refcounts are stale.
    # (No core dump, wherever the tests run.)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c",
                    "write -P 0x22 5M 200k", "-c", "abort", str(path)],
                   capture_output=True, cwd=tmp_path,
                   preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
    assert get_u64(path, 72) & 1, "qemu left the image dirty"
    assert qemu.check(path, "qcow2").returncode != 0
    before = path.read_bytes()
    expected = bytearray(16 * MiB)
    expected[:65536] = b"\x11" * 65536
    expected[5 * MiB:5 * MiB + 200 * 1024] = b"\x22" * (200 * 1024)
    assert read_all(path) == expected  # read-only: correct, and nothing written
    assert path.read_bytes() == before
    with open_chain(str(path)) as disk:  # read/write: refcounts rebuilt first
        assert not get_u64(path, 72) & 1
        disk.write(100, b"x" * 10)
        expected[100:110] = b"x" * 10
    assert_clean(path)
    assert_same_as_raw(path, expected, tmp_path)
    assert [s["name"] for s in qemu.info(path)["snapshots"]] == ["old"]
