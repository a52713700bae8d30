"""The QCOW2 building blocks on their own: refcount widths, entry encodings, layouts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.formats.qcow2.util import MiB, create, read_all
from vdgui.engine.container import Disk
from vdgui.engine.formats.qcow2 import compression
from vdgui.engine.formats.qcow2.header import COMPRESSION_DEFLATE, build_header, parse_header
from vdgui.engine.formats.qcow2.l1l2 import ClusterMap, Intervals
from vdgui.engine.formats.qcow2.refcount import decode, encode, encode_block, plan_area


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32, 64])
def test_refcount_codec_round_trip(bits):
    cluster = 512
    per = cluster * 8 // bits
    rnd = np.random.default_rng(bits)
    top = (1 << bits) - 1
    values = rnd.integers(0, top, size=per, dtype=np.uint64, endpoint=True)
    raw = np.frombuffer(encode_block(values, bits, cluster), dtype=np.uint8).copy()
    assert np.array_equal(decode(raw, bits, 0, per), values)
    # Changing a slice leaves its neighbours alone and reports the bytes it touched.
    new = (values[5:17] + 1) & np.uint64(top)
    start, stop = encode(raw, bits, 5, new)
    assert start <= 5 * bits // 8 and stop >= (17 * bits + 7) // 8
    expected = values.copy()
    expected[5:17] = new
    assert np.array_equal(decode(raw, bits, 0, per), expected)
    assert np.array_equal(decode(raw, bits, 3, 20), expected[3:23])


def test_refcount_bit_order():
    """Narrow counts fill each byte from its least significant bits; wide ones are
    big-endian (what qemu writes)."""
    block = encode_block(np.array([1, 1, 1, 1], dtype=np.uint64), 1, 512)
    assert block[0] == 0x0F
    block = encode_block(np.array([3, 0, 1], dtype=np.uint64), 2, 512)
    assert block[0] == 0b010011
    block = encode_block(np.array([0x0102], dtype=np.uint64), 16, 512)
    assert block[:2] == b"\x01\x02"


def test_plan_area_counts_itself():
    # 512-byte clusters with 64-bit counts: 64 counts per block, 64 entries per table
    # cluster.  An area at cluster 10_000 with no blocks around it.
    blocks, table, entries = plan_area(10_000, lambda b: False, 1, 512, 64)
    end = 10_000 + blocks + table
    assert blocks == len(range(10_000 // 64, (end - 1) // 64 + 1))
    assert entries >= (end - 1) // 64 + 1 and table * 64 >= entries


def test_intervals():
    iv = Intervals([(0, 1, "header"), (3, 5, "L1 table"), (4, 6, "refcount table")])
    assert iv.contains(np.array([0, 1, 2, 3, 5, 6])).tolist() == [True, False, False, True,
                                                                  True, False]
    assert iv.overlap(1, 2) is None
    assert iv.overlap(2, 2) == "L1 table"
    assert iv.label(5) == "refcount table"


@pytest.mark.parametrize("cluster_bits", [9, 12, 16, 21])
def test_compressed_entry_round_trip(cluster_bits):
    header = parse_header(build_header(version=3, cluster_bits=cluster_bits,
                                       size=1 << cluster_bits,
                                       l1_size=1, l1_table_offset=3 << cluster_bits,
                                       refcount_table_offset=1 << cluster_bits,
                                       refcount_table_clusters=1, refcount_order=4),
                          4 << cluster_bits, "x")

    class _Storage:
        path = "x"

        def read_exact(self, offset, length, what=""):
            return bytes(length)

    cmap = ClusterMap(_Storage(), header, "x", Intervals([]))
    cs = 1 << cluster_bits
    for offset, length in [(cs + 5, 100), (7 * cs - 3, min(600, cs - 1)), (1 << 40, cs - 1)]:
        entry = cmap.compressed_entry(offset, length)
        assert entry >> 62 == 1
        start, window = cmap.compressed_location(entry)
        assert start == offset and window >= length and window - length < 512
        touched = cmap.compressed_clusters(np.array([entry], dtype=np.uint64))
        assert touched.tolist() == list(range(offset >> cluster_bits,
                                              ((offset + length - 1) >> cluster_bits) + 1))


def test_deflate_round_trip():
    data = bytes(range(256)) * 256
    stream = compression.compress(data, COMPRESSION_DEFLATE, "x")
    assert len(stream) < len(data)
    assert compression.decompress(stream + b"trailing", len(data), COMPRESSION_DEFLATE,
                                  "x") == data


def test_write_read_round_trip(tmp_path):
    """Our own writer and reader agree, without qemu (all kinds of writes)."""
    size = 9 * MiB + 512
    path = create(tmp_path / "rt.qcow2", size, cluster_size="4096", refcount_bits="8")
    expected = bytearray(size)
    rnd = np.random.default_rng(3)
    with Disk() as disk:
        disk.open(str(path))
        for _ in range(60):
            offset = int(rnd.integers(0, size - 50_000))
            data = rnd.integers(0, 256, size=int(rnd.integers(1, 50_000)),
                                dtype=np.uint8).tobytes()
            if rnd.random() < 0.2:
                data = bytes(len(data))
            disk.write(offset, data)
            expected[offset:offset + len(data)] = data
        disk.image(0).write_compressed(8 * MiB, bytes([9]) * (MiB + 512))
        expected[8 * MiB:] = bytes([9]) * (MiB + 512)
        assert disk.read(0, size) == expected
    assert read_all(path) == expected
