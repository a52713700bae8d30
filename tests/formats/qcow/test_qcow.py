"""QCOW version 1 backend: layout, qemu interop, compressed clusters, backing chains.

qemu-img has no ``check`` for QCOW v1, so images we write are verified by reading
them back with qemu (``convert``/``compare``) and by pinning the layout.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vdgui.engine import registry
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.errors import InvalidParameter, NotSupported, VDError
from vdgui.engine.formats.base import ParentLink
from vdgui.engine.formats.qcow import QcowImage
from vdgui.engine.io import default_provider
from vdgui.engine.types import ImageFlags, OpenFlags, Status

from tests import qemu
from tests.formats.clustered import (MiB, create, create_diff, engine_read, engine_write,
                                     expected, peek, qemu_write, raw_file, scattered_writes)

SIZE = 16 * MiB
CLUSTER = 4096
WRITES = scattered_writes(SIZE, CLUSTER)


def test_registered_in_probe_order() -> None:
    names = [info.name for info in registry.backends()]
    assert names.index("QED") < names.index("QCOW") < names.index("RAW")
    assert registry.backend_for_extension("x.qcow") is QcowImage


@pytest.mark.interop
def test_new_image_is_byte_identical_to_qemu(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.qcow", tmp_path / "theirs.qcow"
    create(ours, 64 * MiB, "QCOW")
    qemu.qemu_img("create", "-f", "qcow", theirs, "64M")
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.stat().st_size == 560  # 48-byte header + one sector of L1


@pytest.mark.interop
def test_reads_what_qemu_wrote(tmp_path: Path) -> None:
    image = tmp_path / "q.qcow"
    qemu.qemu_img("create", "-f", "qcow", image, str(SIZE))
    qemu_write(image, "qcow", WRITES)
    qemu.qemu_io(image, "qcow", f"write -z {64 * CLUSTER} {2 * CLUSTER}")
    want = expected(SIZE, WRITES)
    assert engine_read(image) == want == qemu.to_raw(image, "qcow", tmp_path / "q.raw")
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk[0].version == 1
        assert disk.block_status(0, CLUSTER)[1] is Status.DATA
        assert disk.block_status(2 * CLUSTER, CLUSTER) == (None, Status.FREE, CLUSTER)


@pytest.mark.interop
@pytest.mark.parametrize("config", [{}, {"cluster_size": "512"}, {"cluster_size": "64k"}])
def test_qemu_reads_what_we_wrote(tmp_path: Path, config: dict) -> None:
    image = tmp_path / "ours.qcow"
    cluster = {"512": 512, "64k": 64 << 10}.get(config.get("cluster_size"), CLUSTER)
    writes = scattered_writes(SIZE, cluster)
    create(image, SIZE, "QCOW", config, writes)
    want = expected(SIZE, writes)
    assert qemu.compare(image, "qcow", raw_file(tmp_path / "want.raw", want), "raw")
    info = qemu.info(image)
    assert info["virtual-size"] == SIZE and info["cluster-size"] == cluster
    more = [(1000, 70000, 0x66), (SIZE - cluster - 100, 100, 0x77)]
    engine_write(image, more)
    assert qemu.to_raw(image, "qcow", tmp_path / "q.raw") == expected(SIZE, writes + more)


def test_allocation_layout_matches_qemu(tmp_path: Path) -> None:
    """One 4 KiB write at 1 MiB: data at 0x1000, then its L2 table at 0x2000; both are
    whole clusters at the end of the file (qemu puts the table first, either is valid)."""
    image = tmp_path / "a.qcow"
    create(image, 64 * MiB, "QCOW", writes=[(MiB, CLUSTER, 0xAB)])
    l1 = struct.unpack(">Q", peek(image, 0x30, 8))[0]
    entry = struct.unpack(">Q", peek(image, l1 + 256 * 8, 8))[0]
    assert (entry, l1) == (0x1000, 0x2000)
    assert peek(image, entry, CLUSTER) == b"\xab" * CLUSTER
    assert image.stat().st_size == 0x3000


@pytest.mark.interop
def test_compressed_clusters_read_and_rewrite(tmp_path: Path) -> None:
    image = tmp_path / "c.qcow"
    qemu.qemu_img("create", "-f", "qcow", image, str(SIZE))
    compressed = [(5 * MiB + i * CLUSTER, CLUSTER, 0x61 + i) for i in range(3)]
    qemu.qemu_io(image, "qcow", *(f"write -c -P {b:#x} {o} {n}" for o, n, b in compressed))
    qemu_write(image, "qcow", [(0, 512, 0x11)])
    l1 = struct.unpack(">Q", peek(image, 0x30 + 8 * (5 * MiB >> 21), 8))[0]
    entry = struct.unpack(">Q", peek(image, l1 + 8 * ((5 * MiB >> 12) & 511), 8))[0]
    assert entry >> 63 == 1  # really compressed
    content = expected(SIZE, compressed + [(0, 512, 0x11)])
    assert engine_read(image) == content
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.block_status(5 * MiB, 3 * CLUSTER) == (0, Status.DATA, 3 * CLUSTER)
    # Writing into a compressed cluster moves it, uncompressed, to the end.
    patch = [(5 * MiB + 100, 50, 0xE1), (5 * MiB + CLUSTER - 10, 20, 0xE2), (0, 10, 0xE3)]
    engine_write(image, patch)
    want = expected(SIZE, patch, content)
    assert qemu.to_raw(image, "qcow", tmp_path / "back.raw") == want == engine_read(image)
    assert struct.unpack(">Q", peek(image, l1 + 8 * ((5 * MiB >> 12) & 511), 8))[0] >> 63 == 0


@pytest.mark.interop
def test_qemu_child_over_our_base(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qcow", tmp_path / "child.qcow"
    create(base, SIZE, "QCOW", writes=WRITES)
    qemu.qemu_img("create", "-f", "qcow", "-b", "base.qcow", "-F", "qcow", child)
    top = [(CLUSTER + 100, 5000, 0x99), (SIZE - 700, 700, 0x98)]
    qemu_write(child, "qcow", top)  # qemu uses 512-byte clusters in a child
    want = expected(SIZE, WRITES + top)
    assert engine_read(child) == want == qemu.to_raw(child, "qcow", tmp_path / "c.raw")
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk[1].image_flags & ImageFlags.DIFF
        assert disk.image(1).parent_filename == "base.qcow"


@pytest.mark.interop
def test_our_child_over_qemu_base(tmp_path: Path) -> None:
    base, child = tmp_path / "base.qcow", tmp_path / "child.qcow"
    qemu.qemu_img("create", "-f", "qcow", base, str(SIZE))
    qemu_write(base, "qcow", WRITES)
    top = [(CLUSTER + 100, 5000, 0x99), (5 * MiB, 3 * CLUSTER, 0x98), (0, 512, 0)]
    create_diff(base, child, "QCOW", top)
    info = qemu.info(child)
    assert info["backing-filename"] == "base.qcow" and info["virtual-size"] == SIZE
    want = expected(SIZE, WRITES + top)
    assert qemu.to_raw(child, "qcow", tmp_path / "c.raw") == want == engine_read(child)
    # Zeros over the base's data need real (zero-filled) clusters: v1 has no zero flag.
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.block_status(0, 512)[:2] == (1, Status.DATA)


@pytest.mark.interop
def test_child_over_vdi_base_through_open_chain(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vdi", tmp_path / "child.qcow"
    create(base, SIZE, "VDI", writes=WRITES)
    top = [(2 * MiB + 7, 1000, 0xC1)]
    create_diff(base, child, "QCOW", top)
    want = expected(SIZE, WRITES + top)
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert [v.backend for v in disk.images] == ["VDI", "QCOW"]
        assert disk.read(0, SIZE) == want
    assert qemu.to_raw(child, "qcow", tmp_path / "c.raw") == want


def test_create_refuses_bad_options(tmp_path: Path) -> None:
    with Disk() as disk:
        for config in ({"cluster_size": "1000"}, {"cluster_size": "128k"},
                       {"cluster_size": "256"}, {"table_size": "4"}):
            with pytest.raises(InvalidParameter):
                disk.create_base(tmp_path / "a.qcow", SIZE, "QCOW", config=config)
        with pytest.raises(VDError):
            disk.create_base(tmp_path / "b.qcow", SIZE, "QCOW", ImageFlags.FIXED)
    assert not list(tmp_path.iterdir())


def test_metadata_the_format_lacks(tmp_path: Path) -> None:
    image = tmp_path / "a.qcow"
    create(image, SIZE, "QCOW")
    with open_chain(image, OpenFlags.READONLY) as disk:
        for name in ("uuid", "modification_uuid", "parent_uuid", "comment"):
            with pytest.raises(VDError) as info:
                getattr(disk[0], name)
            assert info.value.status == "VERR_NOT_SUPPORTED"
        assert disk.image(0).parent_filename is None and disk.image(0).parent_format is None
        assert "cluster size: 4096 (cluster_bits 12)" in disk.dump()


@pytest.mark.interop
def test_set_parent_within_the_room_left(tmp_path: Path) -> None:
    first, second = tmp_path / "base1.qcow", tmp_path / "b2.qcow"
    create(first, SIZE, "QCOW")
    create(second, SIZE, "QCOW", writes=WRITES)
    child = tmp_path / "child.qcow"
    create_diff(first, child, "QCOW")  # "base1.qcow", with room for 256 bytes of name
    image = QcowImage.open(default_provider(), str(child), OpenFlags.NORMAL)
    try:
        with pytest.raises(NotSupported):
            image.set_parent(ParentLink(None, None, str(tmp_path / ("long" * 80 + ".qcow")),
                                        "QCOW"))
        image.set_parent(ParentLink(None, None, str(second), "QCOW"))
    finally:
        image.close()
    assert qemu.info(child)["backing-filename"] == "b2.qcow"
    assert engine_read(child) == expected(SIZE, WRITES)
    image = QcowImage.open(default_provider(), str(child), OpenFlags.NORMAL)
    image.set_parent(None)
    image.close()
    assert "backing-filename" not in qemu.info(child)
    assert engine_read(child) == bytes(SIZE)
