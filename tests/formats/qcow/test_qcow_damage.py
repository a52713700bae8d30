"""QCOW version 1 hostile input and refusals: always a VDError, never a write."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest

from vdgui.engine.chain import open_chain
from vdgui.engine.errors import Corrupted, InvalidHeader, NotSupported, VDError
from vdgui.engine.formats.qcow import QcowImage
from vdgui.engine.io import default_provider
from vdgui.engine.types import DiskType, OpenFlags

from tests import qemu
from tests.formats.clustered import MiB, create, digest, peek, poke

SIZE = 16 * MiB
CLUSTER = 4096


def header(**fields) -> bytes:
    h = dict(magic=0x514649FB, version=1, name_off=0, name_len=0, mtime=0, size=SIZE,
             cluster_bits=12, l2_bits=9, pad=0, crypt=0, l1=48)
    h.update(fields)
    return struct.pack(">IIQIIQBBHIQ", *h.values())


CASES = {
    "truncated header": header()[:30],
    "cluster bits 40": header(cluster_bits=40),
    "cluster bits 8": header(cluster_bits=8),
    "l2 bits 30": header(l2_bits=30),
    "l2 bits 2": header(l2_bits=2),
    "size 0": header(size=0),
    "huge size, small file": header(size=1 << 62),
    "L1 past end of file": header(l1=1 << 40),
    "L1 in the header": header(l1=8),
    "backing name too long": header(name_off=48, name_len=5000),
    "backing name past end": header(name_off=1 << 30, name_len=10),
    "encrypted": header(crypt=1),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_headers_give_vderror(tmp_path: Path, case: str) -> None:
    image = tmp_path / "h.qcow"
    image.write_bytes(CASES[case].ljust(48 + 512 if case != "truncated header" else 30, b"\0"))
    before = digest(image)
    tracemalloc.start()
    try:
        for flags in (OpenFlags.READONLY, OpenFlags.NORMAL):
            with pytest.raises(VDError) as info:
                QcowImage.open(default_provider(), str(image), flags)
            assert "h.qcow" in str(info.value)
            assert not isinstance(info.value, InvalidHeader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB
    assert digest(image) == before
    if case == "encrypted":
        assert isinstance(info.value, NotSupported) and "encrypted" in str(info.value)
        assert info.value.status == "VERR_NOT_SUPPORTED"


@pytest.mark.interop
def test_encrypted_qemu_image_is_refused_clearly(tmp_path: Path) -> None:
    image = tmp_path / "e.qcow"
    qemu.qemu_img("create", "-f", "qcow", image, str(SIZE))
    poke(image, 36, struct.pack(">I", 1))  # crypt_method AES
    with pytest.raises(NotSupported, match="encrypted"):
        with open_chain(image, OpenFlags.READONLY):
            pass


@pytest.mark.interop
def test_qcow2_and_foreign_files_are_not_claimed(tmp_path: Path) -> None:
    v2 = tmp_path / "v2.qcow2"
    qemu.qemu_img("create", "-f", "qcow2", v2, "1M")
    others = {"empty.qcow": b"", "text.qcow": b"hello" * 300, "qed.qcow": b"QED\0" * 100}
    for name, data in others.items():
        (tmp_path / name).write_bytes(data)
    for path in [v2, *(tmp_path / n for n in others)]:
        with pytest.raises(InvalidHeader) as info:
            QcowImage.probe(default_provider(), str(path), DiskType.INVALID)
        assert info.value.status == "VERR_VD_GEN_INVALID_HEADER"


def image_with_data(path: Path, size: int = SIZE) -> tuple[int, int]:
    """An image with cluster 0 allocated; returns (L1 offset, L2 offset)."""
    create(path, size, "QCOW", writes=[(0, CLUSTER, 0x5A)])
    return 0x30, struct.unpack(">Q", peek(path, 0x30, 8))[0]


@pytest.mark.parametrize("where", ["L1 past EOF", "L1 into L1 table", "L1 misaligned",
                                   "L2 misaligned", "L2 at its own table", "L2 into L1 table",
                                   "compressed past EOF", "compressed garbage"])
def test_hostile_tables_give_corrupted(tmp_path: Path, where: str) -> None:
    image = tmp_path / "t.qcow"
    # 1 GiB: an L1 table of 512 entries spans 0x30..0x1030.
    l1, l2 = image_with_data(image, 1 << 30)
    entry = {
        "L1 past EOF": (l1, 1 << 40), "L1 into L1 table": (l1, 0x400),
        "L1 misaligned": (l1, l2 + 3), "L2 misaligned": (l2, 0x1001),
        "L2 at its own table": (l2, l2), "L2 into L1 table": (l2, 0x200),
        "compressed past EOF": (l2, 1 << 63 | 100 << 51 | 1 << 40),
        "compressed garbage": (l2, 1 << 63 | 100 << 51 | 0x2000),  # the 0x5A cluster
    }[where]
    poke(image, entry[0], struct.pack(">Q", entry[1]))
    before = digest(image)
    with open_chain(image, OpenFlags.READONLY) as disk:
        with pytest.raises(Corrupted):
            disk.read(0, 512)
    with open_chain(image) as disk:
        with pytest.raises(Corrupted):
            disk.write(0, b"w" * 512)
    assert digest(image) == before


def test_truncated_file(tmp_path: Path) -> None:
    image = tmp_path / "t.qcow"
    image_with_data(image)
    raw = image.read_bytes()
    image.write_bytes(raw[:0x1000 + 100])  # data cluster cut short, L2 table gone
    with pytest.raises(VDError):
        with open_chain(image, OpenFlags.READONLY) as disk:
            disk.read(0, SIZE)
