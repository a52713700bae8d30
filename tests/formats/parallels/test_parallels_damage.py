"""Parallels hostile input: always a VDError, never a write or a huge allocation."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.errors import Corrupted, InvalidHeader, NotSupported, VDError
from vdgui.engine.formats.parallels import ParallelsImage
from vdgui.engine.io import default_provider
from vdgui.engine.types import DiskType, OpenFlags

from tests.formats.clustered import MiB, create, digest, poke

SIZE = 16 * MiB


def header(**fields) -> bytes:
    h = dict(magic=b"WithoutFreeSpace", version=2, heads=16, cylinders=64, tracks=2048,
             bat_entries=16, nb_sectors=SIZE // 512, inuse=0, data_off=2048, flags=0,
             ext_off=0)
    h.update(fields)
    return struct.pack("<16sIIIIIQIIIQ", *h.values())


CASES = {
    "truncated header": header()[:40],
    "version 3": header(version=3),
    "zero tracks": header(tracks=0),
    "2 GiB clusters": header(tracks=1 << 22),
    "BAT of 2^31 entries": header(bat_entries=1 << 31),
    "BAT past end of file": header(bat_entries=1 << 20),
    "size 0": header(nb_sectors=0),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_headers_give_vderror(tmp_path: Path, case: str) -> None:
    image = tmp_path / "h.hdd"
    head = CASES[case]
    image.write_bytes(head if case == "truncated header" else head.ljust(MiB, b"\0"))
    before = digest(image)
    tracemalloc.start()
    try:
        for flags in (OpenFlags.READONLY, OpenFlags.NORMAL):
            with pytest.raises(VDError) as info:
                ParallelsImage.open(default_provider(), str(image), flags)
            assert "h.hdd" in str(info.value)
            assert not isinstance(info.value, InvalidHeader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB
    assert digest(image) == before
    if case == "version 3":
        assert isinstance(info.value, NotSupported)


def test_foreign_files_are_not_claimed(tmp_path: Path) -> None:
    for name, data in (("empty.hdd", b""), ("text.hdd", b"WithoutFree" * 100),
                       ("qed.hds", b"QED\0" * 100)):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InvalidHeader) as info:
            ParallelsImage.probe(default_provider(), str(path), DiskType.INVALID)
        assert info.value.status == "VERR_VD_PARALLELS_INVALID_HEADER"


@pytest.mark.parametrize("entry, where", [(1, "overlaps the header or the BAT"),
                                          (2047, "overlaps the header or the BAT"),
                                          (1 << 20, "beyond the end of the file")])
def test_hostile_bat_entries_give_corrupted(tmp_path: Path, entry: int, where: str) -> None:
    image = tmp_path / "t.hdd"
    create(image, SIZE, "Parallels", writes=[(0, 512, 0x5A)])
    poke(image, 64, struct.pack("<I", entry))  # classic: entries count sectors
    before = digest(image)
    with open_chain(image, OpenFlags.READONLY) as disk:
        with pytest.raises(Corrupted, match=where):
            disk.read(0, 512)
    with open_chain(image) as disk:
        with pytest.raises(Corrupted):
            disk.write(0, b"w" * 512)
    # The read/write session only touched the in-use flag and set it back.
    assert digest(image) == before


def test_writes_beyond_a_short_bat_are_refused(tmp_path: Path) -> None:
    image = tmp_path / "short.hdd"
    create(image, SIZE, "Parallels")
    poke(image, 32, struct.pack("<I", 8))  # the BAT covers only the first 8 MiB
    with open_chain(image) as disk:
        assert disk.read(12 * MiB, 512) == bytes(512)
        disk.write(0, b"a" * 512)
        with pytest.raises(Corrupted, match="beyond the Parallels BAT"):
            disk.write(12 * MiB, b"b" * 512)


def test_truncated_data_cluster(tmp_path: Path) -> None:
    image = tmp_path / "t.hdd"
    create(image, SIZE, "Parallels", writes=[(0, 512, 0x5A)])
    raw = image.read_bytes()
    image.write_bytes(raw[:MiB + 4096])
    with pytest.raises(VDError):
        with open_chain(image, OpenFlags.READONLY) as disk:
            disk.read(0, MiB)
