"""Damaged and hostile QCOW2 files give VDError, never another exception, a hang or a
huge allocation; read-only opens never write."""

from __future__ import annotations

import hashlib
import random
import struct
import zlib

import pytest

from tests.formats.qcow2.util import MiB, create, get_u64, patch, put_u32, put_u64
from vdgui.engine.container import Disk
from vdgui.engine.errors import Corrupted, NotSupported, VDError
from vdgui.engine.formats.qcow2 import Qcow2Image
from vdgui.engine.io import default_provider
from vdgui.engine.types import OpenFlags

L1 = 0x30000          # where a fresh 64 KiB-cluster image keeps its L1 table
L2 = 0x40000          # and, after the first write, its first L2 table
DATA = 0x50000        # and the first data cluster
REFTABLE, REFBLOCK = 0x10000, 0x20000


@pytest.fixture
def image(tmp_path):
    """A small image with one written cluster (L2 at 0x40000, data at 0x50000)."""
    path = create(tmp_path / "h.qcow2", 4 * MiB)
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x42" * 65536)
    assert get_u64(path, L1) == (1 << 63) | L2
    assert get_u64(path, L2) == (1 << 63) | DATA
    return path


def _read_everything(path, flags=OpenFlags.READONLY) -> None:
    image = Qcow2Image.open(default_provider(), str(path), flags)
    try:
        buf = bytearray(image.size)
        pos = 0
        while pos < image.size:
            status, run = image.block_status(pos, image.size - pos)
            if status.present:
                image.read_into(pos, memoryview(buf)[pos:pos + run])
            pos += run
        image.describe()
    finally:
        image.close()


def _assert_refused(path, match: str = "", flags=OpenFlags.READONLY) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(VDError, match=match):
        _read_everything(path, flags)
    if flags & OpenFlags.READONLY:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_truncated_header(image):
    with open(image, "r+b") as f:
        f.truncate(50)
    _assert_refused(image, "cut short")


def test_file_too_short_for_magic(tmp_path):
    path = tmp_path / "tiny.qcow2"
    path.write_bytes(b"QFI")
    _assert_refused(path, "not a QCOW2")


def test_l1_past_end_of_file(image):
    put_u64(image, 40, 1 << 40)
    _assert_refused(image, "beyond the end")


def test_huge_l1_size(image):
    put_u32(image, 36, 0xFFFFFFFF)
    with pytest.raises(NotSupported, match="L1 table"):
        _read_everything(image)


def test_l1_too_small_for_the_disk(image):
    put_u64(image, 24, 1 << 50)  # size, with the one-entry L1 table
    _assert_refused(image, "too small")


@pytest.mark.parametrize("order", [7, 0xFFFFFFFF])
def test_refcount_order(image, order):
    put_u32(image, 96, order)
    _assert_refused(image, "refcount_order")


@pytest.mark.parametrize("bits", [40, 8, 22, 0xFFFFFFFF])
def test_cluster_bits(image, bits):
    put_u32(image, 20, bits)
    _assert_refused(image, "cluster_bits")


@pytest.mark.parametrize("offset, value, match", [
    (100, 1 << 31, "header_length"),                  # header longer than a cluster
    (100, 50, "header_length"),
    (60, 0x7FFFFFFF, "snapshots"),                     # snapshot count
    (56, 0x7FFFFFFF, "refcount table"),                # refcount table clusters
    (56, 0, "refcount table"),
    (16, 5000, "backing file name"),                   # name length, with an offset set
    (32, 1, "encrypted"),                              # crypt method
])
def test_header_fields(image, offset, value, match):
    if offset == 16:
        put_u64(image, 8, 0x1F0)
    put_u32(image, offset, value)
    _assert_refused(image, match)


def test_unaligned_l1(image):
    put_u64(image, 40, L1 + 8)
    _assert_refused(image, "aligned")


def test_extension_overflows_header(image):
    put_u32(image, 0x74, 0x100000)  # the feature table's length
    _assert_refused(image, "extension")


def test_l1_entry_unaligned_or_past_end(image):
    put_u64(image, L1, (1 << 63) | L2 + 512)
    _assert_refused(image, "aligned")
    put_u64(image, L1, (1 << 63) | 1 << 40)
    _assert_refused(image, "beyond its end")


def test_l1_entry_pointing_at_the_refcount_table(image):
    put_u64(image, L1, (1 << 63) | REFTABLE)
    _assert_refused(image, "refcount table")


def test_l2_entry_pointing_at_metadata(image):
    put_u64(image, L2 + 8, (1 << 63) | L1)  # cluster 1 "stored" in the L1 table
    _assert_refused(image, "L1 table")
    # A compressed entry whose stream starts in the header.
    put_u64(image, L2 + 8, 1 << 62 | 0x10)
    _assert_refused(image, "header")


def test_in_place_write_over_metadata_refused(image):
    put_u64(image, L2 + 8, (1 << 63) | REFBLOCK)  # "data" in the refcount block
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with Disk() as disk:
        disk.open(str(image))
        with pytest.raises(Corrupted):
            disk.write(65536, b"\x01" * 512)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


def test_unaligned_data_offset(image):
    put_u64(image, L2, (1 << 63) | DATA + 512)
    _assert_refused(image, "aligned")


def test_a_bad_entry_fails_only_the_ranges_it_is_in(image):
    put_u64(image, L2 + 8 * 40, (1 << 63) | L1)  # cluster 40 "stored" in the L1 table
    with Disk() as disk:
        disk.open(str(image), flags=OpenFlags.READONLY)
        assert disk.read(0, 65536) == b"\x42" * 65536  # the same L2 table, another range
        assert disk.read(2 * MiB, 65536) == bytes(65536)
        for _ in range(2):  # asked again (the table's classification is kept): same answer
            with pytest.raises(Corrupted, match="guest data inside the L1 table"):
                disk.read(39 * 65536, 2 * 65536)


def test_data_past_end_of_file(image):
    put_u64(image, L2, (1 << 63) | 1 << 40)
    _assert_refused(image, "beyond the end")


def test_zero_flag_in_version_2(tmp_path):
    path = create(tmp_path / "v2.qcow2", 4 * MiB, compat="0.10")
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x42" * 65536)
    put_u64(path, L2 + 8, 1)
    _assert_refused(path, "zero flag")


def _compressed_entry(offset: int, length: int) -> int:
    sectors = ((offset & 511) + length + 511) // 512
    return 1 << 62 | (sectors - 1) << 54 | offset


@pytest.mark.parametrize("payload, match", [
    (2 * 65536, "more than the cluster size"),  # inflates past the cluster
    (1000, "instead of"),                       # inflates to too little
    (None, "damaged"),                          # not deflate at all
])
def test_bad_compressed_cluster(image, payload, match):
    if payload is None:
        stream = b"\xff" * 600
    else:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        stream = deflater.compress(bytes(payload)) + deflater.flush()
    patch(image, DATA, stream)
    put_u64(image, L2, _compressed_entry(DATA, len(stream)))
    _assert_refused(image, match)


def test_bad_refcount_table_refuses_writing_only(image):
    put_u64(image, REFTABLE, REFBLOCK + 7)
    _read_everything(image)  # reading never needs the refcounts
    _assert_refused(image, "refcount table entry", OpenFlags.NORMAL)


def test_l2_table_overlapping_refcount_block_refuses_writing(image):
    put_u64(image, L1, (1 << 63) | REFBLOCK)
    _assert_refused(image, "overlaps", OpenFlags.NORMAL)


def test_snapshot_table_damage(image):
    put_u32(image, 60, 1)
    put_u64(image, 64, DATA)  # the "snapshot table" is the data cluster: 0x42 bytes
    _assert_refused(image, "snapshot")


def test_random_header_damage_only_raises_vderror(image):
    """Flip bytes in cluster 0 and the tables; whatever happens must be a VDError."""
    original = image.read_bytes()
    rnd = random.Random(1234)
    regions = [(0, 120), (L1, 8), (L2, 16), (REFTABLE, 8)]
    for _ in range(150):
        damaged = bytearray(original)
        for _ in range(rnd.randint(1, 4)):
            start, length = rnd.choice(regions)
            damaged[start + rnd.randrange(length)] = rnd.randrange(256)
        image.write_bytes(damaged)
        try:
            _read_everything(image)
        except VDError:
            pass
        assert image.read_bytes() == damaged  # read-only: nothing written


def test_no_huge_allocation_from_counts(image):
    """A snapshot count and table that claim a lot are bounded by the file."""
    put_u32(image, 60, 65536)
    put_u64(image, 64, DATA)
    patch(image, DATA, struct.pack(">QIHHIIQII", 0, 0, 0xFFFF, 0xFFFF, 0, 0, 0, 0, 1024))
    _assert_refused(image, "snapshot")
