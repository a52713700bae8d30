"""Parallels operations: releasing clusters, packing, discard, growing the BAT (moving
the clusters in its way) and shrinking; against a model and qemu."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.errors import InvalidSize, NotSupported, ShrinkNotSupported
from vdgui.engine.findings import ERROR
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.resize import resize
from vdgui.engine.types import OpenFlags

from tests import qemu
from tests.formats.clustered import (MiB, crash_everywhere, create, engine_read, expected,
                                     our_findings, peek, raw_file)

SIZE = 16 * MiB
CS = 64 << 10
EXTENDED = {"cluster_size": "65536", "format": "extended"}
VBOX_CS = 63 * 512


def header(path: Path) -> dict:
    names = ("heads", "cylinders", "tracks", "bat_entries", "nb_sectors", "inuse", "data_off")
    return dict(zip(names, struct.unpack("<IIIIQII", peek(path, 20, 32))))


def bat(path: Path, count: int) -> list[int]:
    return list(struct.unpack(f"<{count}I", peek(path, 64, 4 * count)))


def qemu_clean(path: Path, content: bytes, tmp_path: Path) -> None:
    result = qemu.check(path, "parallels")
    assert result.returncode == 0, result.stdout + result.stderr
    assert engine_read(path) == content
    assert qemu.compare(path, "parallels", raw_file(tmp_path / "m.raw", content), "raw")


def vbox_image(path: Path, size: int, clusters: dict[int, int]) -> bytes:
    """A VirtualBox-style image: 63-sector clusters, the BAT right after the header and
    the data right after the BAT (data_off 0), clusters appended in the order given."""
    count = -(-size // VBOX_CS)
    start = -(-(64 + 4 * count) // 512) * 512
    entries = [0] * count
    data = b""
    for n, (index, byte) in enumerate(clusters.items()):
        entries[index] = start // 512 + n * 63
        data += bytes([byte]) * VBOX_CS
    sectors = size // 512
    head = struct.pack("<16sIIIIIQIIIQ", b"WithoutFreeSpace", 2, 16, sectors // (16 * 63), 63,
                       count, sectors, 0, 0, 0, 0)
    raw = (head + struct.pack(f"<{count}I", *entries)).ljust(start, b"\0") + data
    path.write_bytes(raw)
    return expected(size, [(i * VBOX_CS, VBOX_CS, b) for i, b in clusters.items()])


@pytest.mark.interop
@pytest.mark.parametrize("config", [EXTENDED, {"cluster_size": "65536"}])
def test_release_and_pack(tmp_path: Path, config: dict) -> None:
    path = tmp_path / "p.hds"
    create(path, SIZE, "Parallels", config, [(0, 8 * MiB, 0x11), (12 * MiB, 2 * CS, 0x12)])
    model = bytearray(engine_read(path))
    with open_chain(path) as disk:
        image = disk.image(0)
        assert not image.can_mark_zero
        with pytest.raises(NotSupported):
            image.unmap(0, CS, zero=True)
        image.unmap(CS, 3 * CS, zero=False)
        image.unmap(4 * MiB, 2 * MiB, zero=False)
        model[CS:4 * CS] = bytes(3 * CS)
        model[4 * MiB:6 * MiB] = bytes(2 * MiB)
        image.pack()
        assert disk.read(0, SIZE) == model
    assert path.stat().st_size == CS + (8 * MiB // CS - 35 + 2) * CS
    assert our_findings(path, "Parallels") == []
    qemu_clean(path, model, tmp_path)


@pytest.mark.interop
def test_virtualbox_style_image_packs_and_grows(tmp_path: Path) -> None:
    path = tmp_path / "vbox.hdd"
    want = vbox_image(path, 4 * MiB, {0: 0x21, 5: 0x22, 3: 0x23, 100: 0x24})
    assert our_findings(path, "Parallels") == []
    qemu_clean(path, want, tmp_path)
    with open_chain(path) as disk:
        disk.image(0).unmap(5 * VBOX_CS, VBOX_CS, zero=False)
        disk.image(0).pack()
        # 4 MiB -> 64 MiB: the BAT grows from 130 to 2081 entries, over the first clusters.
        resize(disk, 64 * MiB)
        disk.write(60 * MiB, b"\x25" * 512)
    want = expected(64 * MiB, [(0, VBOX_CS, 0x21), (3 * VBOX_CS, VBOX_CS, 0x23),
                               (100 * VBOX_CS, VBOX_CS, 0x24), (60 * MiB, 512, 0x25)])
    assert header(path)["data_off"] == 0 and header(path)["tracks"] == 63
    assert header(path)["cylinders"] == 64 * MiB // 512 // 16 // 63
    assert bat(path, 1)[0] >= (64 + 4 * 2081) // 512  # the first cluster moved out
    assert our_findings(path, "Parallels") == []
    qemu_clean(path, want, tmp_path)


@pytest.mark.interop
def test_growing_moves_the_clusters_the_bat_runs_into(tmp_path: Path) -> None:
    path = tmp_path / "g.hds"
    writes = [(0, CS, 0x31), (3 * MiB, 3 * CS, 0x32)]
    create(path, SIZE, "Parallels", EXTENDED, writes)
    assert header(path)["data_off"] == CS // 512
    with open_chain(path) as disk:
        resize(disk, 1 << 30)  # 16384 entries: the BAT needs two clusters
        disk.write((1 << 30) - CS, b"\x33" * CS)
    assert header(path)["data_off"] == 2 * CS // 512
    assert header(path)["bat_entries"] == 16384
    assert our_findings(path, "Parallels") == []
    assert qemu.check(path, "parallels").returncode == 0
    qemu.qemu_io(path, "parallels", f"read -P 0x31 0 {CS}", f"read -P 0x32 {3 * MiB} {3 * CS}",
                 f"read -P 0 {CS} {3 * MiB - CS}", f"read -P 0x33 {(1 << 30) - CS} {CS}")


@pytest.mark.interop
def test_shrink_only_when_nothing_is_stored_beyond(tmp_path: Path) -> None:
    path = tmp_path / "s.hdd"
    create(path, SIZE, "Parallels", {"cluster_size": "65536"},
           [(0, CS, 0x41), (10 * MiB + 1000, 10, 0x42)])
    with open_chain(path) as disk:
        with pytest.raises(ShrinkNotSupported, match=str(10 * MiB)):
            resize(disk, 8 * MiB)
        with pytest.raises(ShrinkNotSupported, match="last cluster"):
            resize(disk, 10 * MiB + 512)  # the cluster holds bytes after 10 MiB + 512
        disk.write(10 * MiB + 1000, bytes(10))
        compact(disk)
        resize(disk, 8 * MiB + 512)
        with pytest.raises(InvalidSize):
            resize(disk, 3 << 40)  # a WithoutFreeSpace image stays below 2 TiB
    assert header(path)["bat_entries"] == 129 and header(path)["nb_sectors"] == 16385
    assert qemu.info(path)["virtual-size"] == 8 * MiB + 512
    qemu_clean(path, expected(8 * MiB + 512, [(0, CS, 0x41)]), tmp_path)


@pytest.mark.interop
def test_discard_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.hds"
    create(path, SIZE, "Parallels", EXTENDED, [(0, SIZE, 0x51)])
    with open_chain(path, OpenFlags.DISCARD) as disk:
        discard(disk, [(CS + 100, 5 * CS), (8 * MiB, 8 * MiB)])
        want = disk.read(0, SIZE)
    assert path.stat().st_size == CS + (8 * MiB // CS - 4) * CS
    model = bytearray(b"\x51" * SIZE)
    model[CS + 100:6 * CS + 100] = bytes(5 * CS)
    model[8 * MiB:] = bytes(8 * MiB)
    assert want == model
    qemu_clean(path, want, tmp_path)


def spread(folder: Path) -> Path:
    """4 KiB clusters: the BAT of 4 MiB (1024 entries) fills two clusters, and growing
    to 8 MiB makes it run into the first data cluster."""
    path = folder / "c.hds"
    create(path, 4 * MiB, "Parallels", {"cluster_size": "4096", "format": "extended"},
           [(0, MiB, 0x61), (2 * MiB, 4096, 0x62), (3 * MiB, 8192, 0x63)])
    with open_chain(path) as disk:
        disk.image(0).unmap(4096, 5 * 4096, zero=False)
        disk.image(0).unmap(MiB - 4096, 4096, zero=False)
    return path


def no_errors(path: Path) -> None:
    """After a crash, only the stale in-use flag: no damage."""
    errors = [f for f in our_findings(path, "Parallels") if f.severity == ERROR]
    stale_flag = "the image was not closed cleanly (in-use flag set)"
    assert [f.what for f in errors] in ([], [stale_flag])


@pytest.mark.interop
def test_pack_and_grow_cut_short_after_every_write(tmp_path: Path) -> None:
    assert crash_everywhere(tmp_path / "pack", spread, lambda disk: disk.image(0).pack(),
                            inspect=no_errors) > 3

    def grow(disk):
        resize(disk, 8 * MiB)
        assert header(disk.image(0).path)["data_off"] == 24

    assert crash_everywhere(tmp_path / "grow", spread, grow, inspect=no_errors,
                            after=lambda before: before + bytes(4 * MiB)) > 3
