"""QED backend: layout, interoperability with qemu, backing chains, zero clusters."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vdgui.engine import registry
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.errors import (InvalidParameter, InvalidSize, InvalidType, ShrinkNotSupported,
                                 VDError)
from vdgui.engine.formats.base import ParentLink
from vdgui.engine.formats.qed import QedImage
from vdgui.engine.io import default_provider
from vdgui.engine.types import ImageFlags, OpenFlags, Status

from tests import qemu
from tests.formats.clustered import (MiB, create, create_diff, engine_read, engine_write,
                                     expected, peek, qemu_write, raw_file, scattered_writes)

SIZE = 16 * MiB
CLUSTER = 64 << 10
WRITES = scattered_writes(SIZE, CLUSTER)


def features(path: Path) -> int:
    return struct.unpack("<Q", peek(path, 16, 8))[0]


def qemu_map(path: Path) -> list[dict]:
    return json.loads(qemu.qemu_img("map", "--output=json", "-f", "qed", path).stdout)


def test_registered_in_probe_order() -> None:
    names = [info.name for info in registry.backends()]
    assert names.index("QED") < names.index("QCOW") < names.index("RAW")
    assert registry.backend_for_extension("x.qed") is QedImage


@pytest.mark.interop
def test_new_image_is_byte_identical_to_qemu(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.qed", tmp_path / "theirs.qed"
    create(ours, 1 << 30, "QED")
    qemu.qemu_img("create", "-f", "qed", theirs, "1G")
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.stat().st_size == 0x50000


@pytest.mark.interop
def test_diff_over_raw_is_byte_identical_to_qemu(tmp_path: Path) -> None:
    base = raw_file(tmp_path / "base.raw", bytes(SIZE))
    ours, theirs = tmp_path / "ours.qed", tmp_path / "theirs.qed"
    create_diff(base, ours, "QED", parent_backend="RAW")
    qemu.qemu_img("create", "-f", "qed", "-b", "base.raw", "-F", "raw", theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    assert features(ours) == 0x5  # backing file + backing format raw
    info = qemu.info(ours)
    assert info["backing-filename"] == "base.raw"
    assert info["backing-filename-format"] == "raw"
    with open_chain(ours, OpenFlags.READONLY) as disk:
        assert disk.image(1).parent_format == "RAW"
        assert disk[1].image_flags & ImageFlags.DIFF


@pytest.mark.interop
@pytest.mark.parametrize("options", ["cluster_size=64k,table_size=4",
                                     "cluster_size=4k,table_size=2"])
def test_reads_what_qemu_wrote(tmp_path: Path, options: str) -> None:
    image = tmp_path / "q.qed"
    qemu.qemu_img("create", "-f", "qed", "-o", options, image, str(SIZE))
    cluster = 4096 if options.startswith("cluster_size=4k") else CLUSTER
    writes = scattered_writes(SIZE, cluster)
    qemu_write(image, "qed", writes)
    qemu.qemu_io(image, "qed", f"write -z {8 * cluster} {2 * cluster}")
    want = expected(SIZE, writes)
    assert engine_read(image) == want == qemu.to_raw(image, "qed", tmp_path / "q.raw")
    with open_chain(image, OpenFlags.READONLY) as disk:
        depth, status, run = disk.block_status(8 * cluster, 2 * cluster)
        assert (depth, status, run) == (0, Status.ZERO, 2 * cluster)
        assert disk.block_status(0, cluster)[1] is Status.DATA


@pytest.mark.interop
@pytest.mark.parametrize("config", [{}, {"cluster_size": "4k", "table_size": "2"}])
def test_qemu_reads_what_we_wrote(tmp_path: Path, config: dict) -> None:
    image = tmp_path / "ours.qed"
    cluster = 4096 if config else CLUSTER
    writes = scattered_writes(SIZE, cluster)
    create(image, SIZE, "QED", config, writes)
    want = expected(SIZE, writes)
    assert qemu.check(image, "qed").returncode == 0
    assert qemu.compare(image, "qed", raw_file(tmp_path / "want.raw", want), "raw")
    info = qemu.info(image)
    assert info["virtual-size"] == SIZE and info["cluster-size"] == cluster
    assert "backing-filename" not in info
    # Rewriting allocated clusters in place and appending more keeps it consistent.
    more = [(1000, 70000, 0x66), (SIZE - cluster - 100, 100, 0x77)]
    engine_write(image, more)
    assert qemu.check(image, "qed").returncode == 0
    assert qemu.to_raw(image, "qed", tmp_path / "q.raw") == expected(SIZE, writes + more)


def test_allocation_order_data_then_table(tmp_path: Path) -> None:
    """As qemu lays it out: data cluster first, then the L2 table, both at the end."""
    image = tmp_path / "a.qed"
    create(image, 1 << 30, "QED", writes=[(MiB, CLUSTER, 0xAB)])
    l1 = struct.unpack("<Q", peek(image, 0x10000, 8))[0]
    entry = struct.unpack("<Q", peek(image, 0x60000 + 16 * 8, 8))[0]
    assert (l1, entry) == (0x60000, 0x50000)
    assert image.stat().st_size == 0xA0000


def test_batched_allocation_is_contiguous(tmp_path: Path) -> None:
    image = tmp_path / "a.qed"
    create(image, SIZE, "QED", writes=[(0, 8 * CLUSTER, 0x5A)])
    raw = image.read_bytes()
    l2 = struct.unpack("<Q", raw[0x10000:0x10008])[0]
    entries = struct.unpack("<8Q", raw[l2:l2 + 64])
    assert entries == tuple(0x50000 + i * CLUSTER for i in range(8))
    assert l2 == 0x50000 + 8 * CLUSTER


@pytest.mark.interop
def test_qemu_child_over_our_base(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qed", tmp_path / "child.qed"
    create(base, SIZE, "QED", writes=WRITES)
    qemu.qemu_img("create", "-f", "qed", "-b", "base.qed", "-F", "qed", child)
    top = [(CLUSTER + 100, 5000, 0x99), (SIZE - 4096, 4096, 0x98)]
    qemu_write(child, "qed", top)
    want = expected(SIZE, WRITES + top)
    assert engine_read(child) == want == qemu.to_raw(child, "qed", tmp_path / "c.raw")


@pytest.mark.interop
def test_our_child_over_qemu_base(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qed", tmp_path / "child.qed"
    qemu.qemu_img("create", "-f", "qed", base, str(SIZE))
    qemu_write(base, "qed", WRITES)
    top = [(CLUSTER + 100, 5000, 0x99), (5 * MiB, 3 * CLUSTER, 0x98)]
    create_diff(base, child, "QED", top)
    info = qemu.info(child)
    assert info["backing-filename"] == "base.qed"
    assert "backing-filename-format" not in info  # only raw is recorded
    assert qemu.check(child, "qed").returncode == 0
    want = expected(SIZE, WRITES + top)
    assert qemu.to_raw(child, "qed", tmp_path / "c.raw") == want == engine_read(child)
    # A partial write copied the rest of its cluster from the base (copy-on-write).
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.block_status(CLUSTER, CLUSTER)[:2] == (1, Status.DATA)


@pytest.mark.interop
def test_child_over_vdi_base_through_open_chain(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vdi", tmp_path / "child.qed"
    create(base, SIZE, "VDI", writes=WRITES)
    top = [(2 * MiB + 7, 1000, 0xC1)]
    create_diff(base, child, "QED", top)
    want = expected(SIZE, WRITES + top)
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert [v.backend for v in disk.images] == ["VDI", "QED"]
        assert disk.read(0, SIZE) == want
    assert qemu.to_raw(child, "qed", tmp_path / "c.raw") == want


@pytest.mark.interop
def test_zeros_in_a_diff_become_zero_clusters(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qed", tmp_path / "child.qed"
    create(base, SIZE, "QED", writes=[(0, 4 * CLUSTER, 0xEE)])
    create_diff(base, child, "QED", [(0, 2 * CLUSTER, 0x00)])
    extents = qemu_map(child)
    assert extents[0]["start"] == 0 and extents[0]["length"] == 2 * CLUSTER
    assert extents[0]["depth"] == 0 and extents[0]["zero"] and not extents[0]["data"]
    assert engine_read(child)[:4 * CLUSTER] == bytes(2 * CLUSTER) + b"\xee" * 2 * CLUSTER
    assert qemu.check(child, "qed").returncode == 0
    # Writing into a zero cluster allocates it again.
    engine_write(child, [(100, 10, 0x01)])
    assert engine_read(child)[:CLUSTER] == expected(CLUSTER, [(100, 10, 0x01)])
    assert qemu.check(child, "qed").returncode == 0


@pytest.mark.interop
def test_honor_zeroes_allocates_zero_data(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qed", tmp_path / "child.qed"
    create(base, SIZE, "QED", writes=[(0, CLUSTER, 0xEE)])
    with open_chain(base, OpenFlags.READONLY) as disk:
        disk.create_diff(child, "QED", open_flags=OpenFlags.HONOR_ZEROES)
        disk.write(0, bytes(CLUSTER))
    first = qemu_map(child)[0]
    assert first["depth"] == 0 and first["data"] and first["length"] == CLUSTER


def test_create_refuses_bad_options(tmp_path: Path) -> None:
    with Disk() as disk:
        with pytest.raises(InvalidParameter):
            disk.create_base(tmp_path / "a.qed", SIZE, "QED", config={"cluster_size": "3000"})
        with pytest.raises(InvalidParameter):
            disk.create_base(tmp_path / "b.qed", SIZE, "QED", config={"table_size": "32"})
        with pytest.raises(InvalidParameter):
            disk.create_base(tmp_path / "c.qed", SIZE, "QED", config={"preallocation": "x"})
        with pytest.raises((InvalidParameter, InvalidType)):
            disk.create_base(tmp_path / "d.qed", SIZE, "QED", ImageFlags.FIXED)
    assert not list(tmp_path.iterdir())


def test_metadata_the_format_lacks(tmp_path: Path) -> None:
    image = tmp_path / "a.qed"
    create(image, SIZE, "QED")
    with open_chain(image, OpenFlags.READONLY) as disk:
        view = disk[0]
        for name in ("uuid", "modification_uuid", "parent_uuid", "comment"):
            with pytest.raises(VDError) as info:
                getattr(view, name)
            assert info.value.status == "VERR_NOT_SUPPORTED"
        assert view.allocated_size >= 0 and view.variant == ["standard"]
        dump = disk.dump()
        assert "cluster size: 65536" in dump and "L1 table offset: 0x10000" in dump


@pytest.mark.interop
def test_set_parent_rewrites_the_backing_file(tmp_path: Path) -> None:
    old = raw_file(tmp_path / "old.raw", bytes(SIZE))
    new = tmp_path / "new.qed"
    create(new, SIZE, "QED", writes=WRITES)
    child = tmp_path / "child.qed"
    create_diff(old, child, "QED", parent_backend="RAW")
    image = QedImage.open(default_provider(), str(child), OpenFlags.NORMAL)
    # The header area has room for more, but qemu reads at most 4095 bytes of name.
    too_long = ParentLink(None, None, str(tmp_path.joinpath(*["x" * 250] * 17, "p.qed")),
                          "QED")
    with pytest.raises(InvalidParameter, match="4095 bytes"):
        image.check_parent(too_long)
    image.check_parent(ParentLink(None, None, str(new), "QED"))
    image.set_parent(ParentLink(None, None, str(new), "QED"))
    image.close()
    info = qemu.info(child)
    assert info["backing-filename"] == "new.qed" and "backing-filename-format" not in info
    assert engine_read(child) == expected(SIZE, WRITES)
    image = QedImage.open(default_provider(), str(child), OpenFlags.NORMAL)
    image.set_parent(None)
    assert image.parent_filename is None and image.image_flags == ImageFlags.NONE
    image.close()
    assert "backing-filename" not in qemu.info(child)


@pytest.mark.interop
def test_grow(tmp_path: Path) -> None:
    image = tmp_path / "g.qed"
    create(image, SIZE, "QED", writes=WRITES)
    opened = QedImage.open(default_provider(), str(image), OpenFlags.NORMAL)
    try:
        with pytest.raises(ShrinkNotSupported):
            opened.resize(SIZE - MiB)
        with pytest.raises(InvalidSize):
            opened.resize(1 << 50)
        opened.resize(3 << 30)  # past the first L2 table's 2 GiB
    finally:
        opened.close()
    tail = [((3 << 30) - 512, 512, 0x7E), (SIZE, 4096, 0x7D)]
    engine_write(image, tail)
    assert qemu.info(image)["virtual-size"] == 3 << 30
    assert qemu.check(image, "qed").returncode == 0
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(0, SIZE) == expected(SIZE, WRITES)
        assert disk.read(SIZE, 4096) == b"\x7d" * 4096
        assert disk.read((3 << 30) - 512, 512) == b"\x7e" * 512
