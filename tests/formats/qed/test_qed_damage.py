"""QED need-check handling and hostile input: always a VDError, never a write on read-only."""

from __future__ import annotations

import logging
import struct
import tracemalloc
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.errors import Corrupted, InvalidHeader, NotSupported, VDError
from vdgui.engine.formats.qed import QedImage
from vdgui.engine.io import default_provider
from vdgui.engine.types import DiskType, OpenFlags

from tests import qemu
from tests.formats.clustered import (MiB, create, digest, engine_read, expected, peek, poke,
                                     qemu_write)

SIZE = 16 * MiB
CLUSTER = 64 << 10
NEED_CHECK = 0x2


def features(path: Path) -> int:
    return struct.unpack("<Q", peek(path, 16, 8))[0]


def set_features(path: Path, value: int) -> None:
    poke(path, 16, struct.pack("<Q", value))


def l2_offset(path: Path) -> int:
    return struct.unpack("<Q", peek(path, 0x10000, 8))[0]


def two_clusters(path: Path) -> bytes:
    """An image holding clusters 0 (0x01) and 1 (0x02); returns the expected content."""
    writes = [(0, CLUSTER, 0x01), (CLUSTER, CLUSTER, 0x02)]
    create(path, SIZE, "QED", writes=writes)
    return expected(SIZE, writes)


def test_need_check_is_set_while_writing_and_cleared_on_close(tmp_path: Path) -> None:
    image = tmp_path / "a.qed"
    with Disk() as disk:
        disk.create_base(image, SIZE, "QED")
        assert features(image) == 0  # nothing allocated yet
        disk.write(0, b"x" * 512)
        assert features(image) & NEED_CHECK
        disk.write(1024, b"y" * 512)  # in place: no metadata change
        disk.flush()
        assert features(image) == 0  # consistent on disk again
        disk.write(5 * MiB, b"z" * 512)
        assert features(image) & NEED_CHECK
    assert features(image) == 0


def test_in_place_writes_never_set_need_check(tmp_path: Path) -> None:
    image = tmp_path / "a.qed"
    two_clusters(image)
    with open_chain(image) as disk:
        disk.write(10, b"q" * 100)
        assert features(image) == 0


def test_crashed_image_reads_read_only_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "a.qed"
    want = bytearray(two_clusters(path))
    image = QedImage.open(default_provider(), str(path), OpenFlags.NORMAL)
    block = bytearray(CLUSTER)
    block[:3] = b"new"
    image.write_blocks(4 * CLUSTER, memoryview(block))
    image.storage.close()  # the writer dies: no clean close
    want[4 * CLUSTER:4 * CLUSTER + 3] = b"new"
    assert features(path) & NEED_CHECK
    before = digest(path)
    assert engine_read(path) == want
    assert digest(path) == before and features(path) & NEED_CHECK


@pytest.mark.interop
def test_read_write_open_repairs_and_logs(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    image = tmp_path / "a.qed"
    want = two_clusters(image)
    l2 = l2_offset(image)
    poke(image, l2 + 8, struct.pack("<Q", 0x9000000))  # cluster 1: past the end of file
    poke(image, l2 + 16, struct.pack("<Q", 0x10000))   # cluster 2: into the L1 table
    set_features(image, NEED_CHECK)
    before = digest(image)
    # Read-only: the good cluster reads, the bad one is an error, nothing is written.
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(0, CLUSTER) == want[:CLUSTER]
        with pytest.raises(Corrupted, match="beyond the end of the file"):
            disk.read(CLUSTER, 512)
        with pytest.raises(Corrupted, match="overlaps the L1 table"):
            disk.read(2 * CLUSTER, 512)
    assert digest(image) == before
    # Read/write: the check clears both entries, says so, and clears the flag.
    with caplog.at_level(logging.WARNING):
        with open_chain(image) as disk:
            assert features(image) == 0
            assert disk.read(0, 3 * CLUSTER) == want[:CLUSTER] + bytes(2 * CLUSTER)
    assert "beyond the end of the file" in caplog.text and "L1 table" in caplog.text
    assert struct.unpack("<2Q", peek(image, l2 + 8, 16)) == (0, 0)
    # The cluster that entry 1 used to own is now a leak (exit 3), nothing worse.
    assert qemu.check(image, "qed").returncode == 3


def test_unknown_autoclear_bits_are_cleared_on_write_open(tmp_path: Path) -> None:
    image = tmp_path / "a.qed"
    two_clusters(image)
    poke(image, 32, struct.pack("<Q", 0x8))
    engine_read(image)
    assert peek(image, 32, 8) == struct.pack("<Q", 0x8)  # read-only: untouched
    with open_chain(image):
        pass
    assert peek(image, 32, 8) == bytes(8)


# -- hostile headers and tables ---------------------------------------------------------

def header(**fields) -> bytes:
    h = dict(magic=0x00444551, cluster_size=CLUSTER, table_size=4, header_size=1,
             features=0, compat=0, autoclear=0, l1=CLUSTER, size=SIZE, name_off=0, name_len=0)
    h.update(fields)
    return struct.pack("<IIIIQQQQQII", *h.values())


def hostile(path: Path, head: bytes, length: int = 5 * CLUSTER) -> Path:
    path.write_bytes(head)
    with open(path, "r+b") as f:
        f.truncate(max(length, len(head)))  # sparse: large files cost nothing
    return path


CASES = {
    "truncated header": (b"QED\0" + bytes(20), 0),
    "cluster size 3": (header(cluster_size=3), 5 * CLUSTER),
    "cluster size 2 GiB": (header(cluster_size=1 << 31), 5 * CLUSTER),
    "table size 0": (header(table_size=0), 5 * CLUSTER),
    "table size 32": (header(table_size=32), 5 * CLUSTER),
    "huge tables, small file": (header(cluster_size=64 << 20, table_size=16, l1=64 << 20),
                                5 * CLUSTER),
    "header size 0": (header(header_size=0), 5 * CLUSTER),
    "L1 past end of file": (header(l1=64 * CLUSTER), 5 * CLUSTER),
    "L1 in the header": (header(l1=0), 5 * CLUSTER),
    "L1 misaligned": (header(l1=CLUSTER + 8), 6 * CLUSTER),
    "size not sectors": (header(size=SIZE + 1), 5 * CLUSTER),
    "size beyond tables": (header(size=1 << 62), 5 * CLUSTER),
    "backing name outside header": (header(features=1, name_off=CLUSTER - 2, name_len=10),
                                    5 * CLUSTER),
    "empty backing name": (header(features=1, name_off=64, name_len=0), 5 * CLUSTER),
    "2 GiB backing name": (header(cluster_size=4096, table_size=1, header_size=1 << 19,
                                  l1=1 << 31, features=1, name_off=64,
                                  name_len=(1 << 31) - 100, size=1 << 20),
                           (1 << 31) + 4096),
    "unknown feature": (header(features=0x10), 5 * CLUSTER),
}


def fingerprint(path: Path) -> tuple:
    """Size, time stamp and first MiB: enough to see a write, cheap for sparse giants."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, peek(path, 0, MiB)


@pytest.mark.parametrize("case", CASES)
def test_hostile_headers_give_vderror(tmp_path: Path, case: str) -> None:
    head, length = CASES[case]
    image = hostile(tmp_path / "h.qed", head, length)
    before = fingerprint(image)
    tracemalloc.start()
    try:
        for flags in (OpenFlags.READONLY, OpenFlags.NORMAL):
            with pytest.raises(VDError) as info:
                QedImage.open(default_provider(), str(image), flags)
            assert "h.qed" in str(info.value)
            assert not isinstance(info.value, InvalidHeader) or case == "truncated header"
        # The probe claims the file (it has the magic) so that open can explain.
        with pytest.raises(VDError) as probed:
            QedImage.probe(default_provider(), str(image), DiskType.INVALID)
        assert not isinstance(probed.value, InvalidHeader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB
    assert fingerprint(image) == before
    if case == "unknown feature":
        assert isinstance(info.value, NotSupported)


def test_foreign_files_are_not_claimed(tmp_path: Path) -> None:
    for name, data in (("empty.qed", b""), ("text.qed", b"hello world" * 100),
                       ("short.qed", b"QE")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InvalidHeader) as info:
            QedImage.probe(default_provider(), str(path), DiskType.INVALID)
        assert info.value.status == "VERR_VD_GEN_INVALID_HEADER"


@pytest.mark.parametrize("where", ["L1 past EOF", "L1 at header", "L2 misaligned",
                                   "L2 at own table"])
def test_hostile_tables_give_corrupted(tmp_path: Path, where: str) -> None:
    image = tmp_path / "t.qed"
    two_clusters(image)
    l2 = l2_offset(image)
    if where == "L1 past EOF":
        poke(image, 0x10000, struct.pack("<Q", 0x4000000))
    elif where == "L1 at header":
        poke(image, 0x10000, struct.pack("<Q", CLUSTER // 2))
    elif where == "L2 misaligned":
        poke(image, l2, struct.pack("<Q", 0x50001))
    else:
        poke(image, l2, struct.pack("<Q", l2))
    before = digest(image)
    with open_chain(image, OpenFlags.READONLY) as disk:
        with pytest.raises(Corrupted):
            disk.read(0, 512)
    # A clean image with a bad table opens read/write but refuses to touch the range.
    with open_chain(image) as disk:
        with pytest.raises(Corrupted):
            disk.write(0, b"w" * 512)
    assert digest(image) == before


@pytest.mark.interop
def test_truncated_file(tmp_path: Path) -> None:
    image = tmp_path / "q.qed"
    qemu.qemu_img("create", "-f", "qed", image, str(SIZE))
    qemu_write(image, "qed", [(0, 512, 0x42)])
    raw = image.read_bytes()
    image.write_bytes(raw[:0x50000 + 100])  # data cluster and L2 table cut off
    with pytest.raises(VDError):
        engine_read(image)
