"""Parallels backend: both signatures, qemu interop, the in-use flag, stacking."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from vdgui.engine import registry
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.errors import InvalidParameter, NotSupported, ReadOnly, VDError
from vdgui.engine.formats.parallels import ParallelsImage
from vdgui.engine.types import Geometry, OpenFlags, Status

from tests import qemu
from tests.formats.clustered import (MiB, create, digest, engine_read, engine_write,
                                     expected, peek, poke, qemu_write, raw_file,
                                     scattered_writes)

SIZE = 16 * MiB
CLUSTER = MiB
WRITES = scattered_writes(SIZE, CLUSTER)
INUSE = b"Ynot"
#: VirtualBox's default block: 63 sectors (16 heads x 63 sectors geometry).
VBOX_CLUSTER = 63 * 512


def inuse(path: Path) -> bytes:
    return peek(path, 44, 4)


def bat(path: Path, count: int) -> list[int]:
    return list(struct.unpack(f"<{count}I", peek(path, 64, 4 * count)))


def test_registered_in_probe_order() -> None:
    names = [info.name for info in registry.backends()]
    assert names.index("Parallels") < names.index("QED") < names.index("RAW")
    for ext in ("hdd", "hds"):
        assert registry.backend_for_extension(f"x.{ext}") is ParallelsImage


@pytest.mark.interop
def test_extended_image_is_byte_identical_to_qemu(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.hds", tmp_path / "theirs.hds"
    create(ours, 64 * MiB, "Parallels", {"format": "extended"})
    qemu.qemu_img("create", "-f", "parallels", theirs, "64M")
    assert ours.read_bytes() == theirs.read_bytes()


def test_default_is_the_classic_signature(tmp_path: Path) -> None:
    image = tmp_path / "a.hdd"
    create(image, SIZE, "Parallels", writes=[(3 * MiB, 4096, 0x42)])
    assert peek(image, 0, 16) == b"WithoutFreeSpace"
    # BAT entries count sectors: the first data cluster follows the 1 MiB header area.
    assert bat(image, 4) == [0, 0, 0, 2048]
    assert image.stat().st_size == 2 * MiB
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk[0].version == 2
        assert disk.block_status(3 * MiB, MiB) == (0, Status.DATA, MiB)


@pytest.mark.interop
def test_reads_what_qemu_wrote(tmp_path: Path) -> None:
    image = tmp_path / "q.hds"
    qemu.qemu_img("create", "-f", "parallels", "-o", "cluster_size=64k", image, str(SIZE))
    writes = scattered_writes(SIZE, 64 << 10)
    qemu_write(image, "parallels", writes)
    qemu.qemu_io(image, "parallels", f"write -z {MiB} {128 << 10}")
    want = expected(SIZE, writes)
    assert engine_read(image) == want == qemu.to_raw(image, "parallels", tmp_path / "q.raw")


@pytest.mark.interop
@pytest.mark.parametrize("config", [{}, {"format": "extended"},
                                    {"cluster_size": str(VBOX_CLUSTER), "format": "classic"},
                                    {"cluster_size": "64k", "format": "extended"}])
def test_qemu_reads_what_we_wrote(tmp_path: Path, config: dict) -> None:
    image = tmp_path / "ours.hds"
    cluster = int(config.get("cluster_size", "0").replace("64k", "65536")) or CLUSTER
    writes = scattered_writes(SIZE, cluster)
    create(image, SIZE, "Parallels", config, writes)
    want = expected(SIZE, writes)
    assert inuse(image) == bytes(4)
    assert qemu.check(image, "parallels").returncode == 0
    assert qemu.compare(image, "parallels", raw_file(tmp_path / "w.raw", want), "raw")
    assert qemu.info(image)["virtual-size"] == SIZE
    more = [(1000, 70000, 0x66), (SIZE - cluster - 100, 100, 0x77)]
    engine_write(image, more)
    assert qemu.check(image, "parallels").returncode == 0
    assert qemu.to_raw(image, "parallels", tmp_path / "q.raw") == expected(SIZE, writes + more)


@pytest.mark.interop
def test_qemu_writes_into_a_virtualbox_style_image(tmp_path: Path) -> None:
    image = tmp_path / "vbox.hdd"
    create(image, SIZE, "Parallels", {"cluster_size": str(VBOX_CLUSTER)}, WRITES)
    top = [(5 * MiB + 3, 100000, 0x91)]
    qemu_write(image, "parallels", top)
    assert qemu.check(image, "parallels").returncode == 0
    assert engine_read(image) == expected(SIZE, WRITES + top)
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.pchs() == Geometry(SIZE // 512 // 16 // 63, 16, 63)


def test_in_use_flag_set_while_open_and_cleared_on_close(tmp_path: Path) -> None:
    image = tmp_path / "a.hds"
    create(image, SIZE, "Parallels")
    with open_chain(image) as disk:
        assert inuse(image) == INUSE
        disk.write(0, b"x" * 512)
    assert inuse(image) == bytes(4)
    with open_chain(image, OpenFlags.READONLY):
        assert inuse(image) == bytes(4)
    # Switching a writable image read-only ends the session on disk too.
    with open_chain(image) as disk:
        disk.set_open_flags(0, OpenFlags.READONLY)
        assert inuse(image) == bytes(4)
        disk.set_open_flags(0, OpenFlags.NORMAL)
        assert inuse(image) == INUSE


def left_in_use(path: Path) -> bytes:
    """An image whose writer died: in use, preallocated tail, a BAT entry past the end."""
    create(path, SIZE, "Parallels", {"format": "extended"}, WRITES)
    want = expected(SIZE, WRITES)
    poke(path, 44, INUSE)
    size = path.stat().st_size
    poke(path, 64 + 4 * 10, struct.pack("<I", size // CLUSTER + 50))  # cluster 10
    with open(path, "r+b") as f:
        f.truncate(size + 3 * CLUSTER)
    return want


def test_read_only_open_of_image_left_in_use(tmp_path: Path) -> None:
    image = tmp_path / "a.hds"
    want = left_in_use(image)
    before = digest(image)
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(0, 10 * MiB) == want[:10 * MiB]
        with pytest.raises(VDError, match="beyond the end of the file"):
            disk.read(10 * MiB, 512)
    assert digest(image) == before


@pytest.mark.interop
def test_read_write_open_of_image_left_in_use(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    image = tmp_path / "a.hds"
    want = expected(SIZE, [(10 * MiB, MiB, 0)], left_in_use(image))  # cluster 10 is lost
    assert qemu.check(image, "parallels").returncode != 0
    with caplog.at_level(logging.WARNING):
        with open_chain(image) as disk:
            assert disk.read(0, SIZE) == want
            disk.write(12 * MiB, b"n" * 512)
    assert "not closed cleanly" in caplog.text and "BAT entry 10" in caplog.text
    assert "leaked" in caplog.text
    assert inuse(image) == bytes(4)
    assert qemu.check(image, "parallels").returncode == 0
    assert qemu.to_raw(image, "parallels", tmp_path / "r.raw") == \
        expected(SIZE, [(12 * MiB, 512, ord("n"))], want)


def extension(path: Path, feature: int, flags: int) -> None:
    """Append a format-extension cluster holding one feature record."""
    size = path.stat().st_size
    record = struct.pack("<QQII", feature, flags, 8, 0) + bytes(8)
    cluster = struct.pack("<Q", 0xAB234CEF23DCEA87) + bytes(16) + record
    poke(path, size, cluster.ljust(CLUSTER, b"\0"))
    poke(path, 56, struct.pack("<Q", size // 512))


def test_known_extension_is_dropped_on_write_open(tmp_path: Path) -> None:
    image = tmp_path / "a.hds"
    create(image, SIZE, "Parallels", {"format": "extended"}, WRITES)
    extension(image, 0x20385FAE252CB34A, 0)
    assert engine_read(image) == expected(SIZE, WRITES)
    with open_chain(image):
        pass
    assert peek(image, 56, 8) == bytes(8)


def test_unknown_necessary_extension_keeps_image_read_only(tmp_path: Path) -> None:
    image = tmp_path / "a.hds"
    create(image, SIZE, "Parallels", {"format": "extended"}, WRITES)
    extension(image, 0x1234, 1)
    before = digest(image)
    with pytest.raises(NotSupported, match="read-only"):
        open_chain(image)
    assert engine_read(image) == expected(SIZE, WRITES)
    assert digest(image) == before


def test_refused_switch_to_writing_leaves_the_image_read_only(tmp_path: Path) -> None:
    image = tmp_path / "a.hds"
    create(image, SIZE, "Parallels", {"format": "extended"}, WRITES)
    extension(image, 0x1234, 1)
    before = digest(image)
    with open_chain(image, OpenFlags.READONLY) as disk:
        with pytest.raises(NotSupported, match="read-only"):
            disk.set_open_flags(0, OpenFlags.NORMAL)
        assert disk.is_read_only
        with pytest.raises(ReadOnly):
            disk.write(0, b"x")
        assert disk.read(0, SIZE) == expected(SIZE, WRITES)
    assert digest(image) == before


@pytest.mark.interop
def test_stacked_over_another_image_at_run_time(tmp_path: Path) -> None:
    base, top = tmp_path / "base.vdi", tmp_path / "top.hds"
    create(base, SIZE, "VDI", writes=WRITES)
    create(top, SIZE, "Parallels")
    with Disk() as disk:
        disk.open(base, flags=OpenFlags.READONLY)
        disk.open(top)
        with pytest.raises(InvalidParameter):
            disk.create_diff(tmp_path / "diff.hds", "Parallels")
        assert disk.read(0, SIZE) == expected(SIZE, WRITES)
        disk.write(100, b"t" * 10)  # copies the rest of its cluster from the base
    want = expected(SIZE, WRITES + [(100, 10, ord("t"))])
    assert qemu.to_raw(top, "parallels", tmp_path / "t.raw")[:CLUSTER] == want[:CLUSTER]


def test_create_refuses_bad_options(tmp_path: Path) -> None:
    with Disk() as disk:
        for config in ({"cluster_size": "1000"}, {"format": "plain"},
                       {"cluster_size": "1G"}, {"preallocation": "off"}):
            with pytest.raises(InvalidParameter):
                disk.create_base(tmp_path / "a.hds", SIZE, "Parallels", config=config)
        with pytest.raises(VDError):
            disk.create_base(tmp_path / "b.hds", 3 << 40, "Parallels",
                             config={"format": "classic"})
    assert not list(tmp_path.iterdir())
    big = tmp_path / "big.hds"
    create(big, 3 << 40, "Parallels")  # auto: too big for classic, so extended
    assert peek(big, 0, 16) == b"WithouFreSpacExt"


def test_metadata_the_format_lacks(tmp_path: Path) -> None:
    image = tmp_path / "a.hds"
    create(image, SIZE, "Parallels")
    with open_chain(image) as disk:
        for name in ("uuid", "comment"):
            with pytest.raises(VDError) as info:
                getattr(disk[0], name)
            assert info.value.status == "VERR_NOT_SUPPORTED"
        with pytest.raises(VDError):
            disk.pchs()  # tracks = 2048: a cluster size, not a geometry
        with pytest.raises(NotSupported):
            disk.set_pchs(0, Geometry(100, 16, 63))
        dump = disk.dump()
        assert "signature: WithoutFreeSpace" in dump and "in use: in use (Ynot)" in dump
