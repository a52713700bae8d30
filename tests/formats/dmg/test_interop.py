"""DMG against qemu-img's dmg driver: both read our test images identically.

qemu 7.2 as installed here reads zero-fill, raw, ignore and zlib chunks; its bzip2
and LZFSE support are separate modules (qemu-block-extra) that are not installed,
and it has no ADC or LZMA support, so those chunk types are compared only with
the plain content in test_read.py.
"""

from __future__ import annotations

import pytest

from tests import qemu
from tests.formats.dmg import builder as b
from vdgui.engine import DiskType, OpenFlags, open_chain

pytestmark = pytest.mark.interop


def qemu_pieces(seed: int) -> list[list[b.Piece]]:
    return [
        [b.Piece(b.RAW, b.noise(8, seed)), b.zeros(4)],
        [b.Piece(b.ZLIB, b.text(64, seed + 1)), b.zeros(100), b.zeros(30, b.IGNORE),
         b.Piece(b.RAW, b.noise(16, seed + 2)), b.Piece(b.ZLIB, b.noise(3, seed + 3))],
        [b.zeros(50, b.IGNORE), b.Piece(b.ZLIB, b.text(2048, seed + 4))],
    ]


@pytest.mark.parametrize("layout", [
    dict(),
    dict(table_data_offsets=True),
    dict(prefix=b"\xAA" * 4096),
    dict(metadata="rsrc"),
    dict(metadata="both", prefix=b"\x01" * 512, table_data_offsets=True),
], ids=["plain", "table-offsets", "prefix", "resource-fork", "both"])
def test_qemu_reads_what_we_read(tmp_path, unchanged, layout):
    path = tmp_path / "image.dmg"  # qemu recognises DMG only by the extension
    expected = b.build(path, qemu_pieces(len(layout)), **layout)
    unchanged(path)
    assert qemu.to_raw(path, "dmg", tmp_path / "qemu.raw") == expected
    assert qemu.info(path, "dmg")["virtual-size"] == len(expected)
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.disk_type == DiskType.DVD
        assert disk.size == len(expected)
        assert disk.read(0, disk.size) == expected
