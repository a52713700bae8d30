"""Damaged and hostile VMDK files: always a VDError, never another exception."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest

from vdgui.engine import Disk, ImageFlags, OpenFlags, probe
from vdgui.engine.errors import Corrupted, NotSupported, VDError

MiB = 1 << 20
HDR = {"capacity": 0x0C, "grain": 0x14, "desc": 0x1C, "gtes": 0x2C, "rgd": 0x30, "gd": 0x38,
       "overhead": 0x40}


def sparse_image(tmp_path: Path, name: str = "d.vmdk", flags=ImageFlags.NONE) -> Path:
    path = tmp_path / name
    with Disk() as disk:
        disk.create_base(path, MiB, "VMDK", flags)
        disk.write(0, b"\x5a" * 65536)
        disk.write(5 * 65536, b"\xa5" * 4096)
    return path


def patch(path: Path, offset: int, fmt: str, value: int) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(raw)


def open_and_read(path: Path, flags: OpenFlags = OpenFlags.READONLY) -> None:
    with Disk() as disk:
        disk.open(path, flags=flags)
        disk.read(0, disk.size)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "t.vmdk"
    path.write_bytes(b"KDMV" + bytes(100))
    assert probe(str(path))[0] == "VMDK"  # claimed, so that the open explains
    with pytest.raises(Corrupted) as info:
        open_and_read(path)
    assert "cut short" in str(info.value)


@pytest.mark.parametrize("field, fmt, value, words", [
    ("gd", "<Q", 1 << 40, "truncated"),
    ("rgd", "<Q", 1 << 40, "truncated"),
    ("capacity", "<Q", 1 << 62, "grain directory of more than"),
    ("capacity", "<Q", 0, "capacity of 0 sectors"),
    ("gd", "<Q", 1 << 62, "truncated"),
    ("desc", "<Q", 1 << 62, "beyond the end of the file"),
    ("grain", "<Q", 3, "power of two"),
    ("grain", "<Q", 1 << 40, "power of two"),
    ("gtes", "<I", 0, "entries per grain table"),
    ("gtes", "<I", 1 << 30, "entries per grain table"),
    ("overhead", "<Q", 1 << 50, "truncated"),
])
def test_bad_header_fields(tmp_path: Path, field: str, fmt: str, value: int,
                           words: str) -> None:
    path = sparse_image(tmp_path)
    patch(path, HDR[field], fmt, value)
    with pytest.raises(VDError) as info:
        open_and_read(path)
    assert words in str(info.value)


def test_grain_directory_entry_past_eof(tmp_path: Path) -> None:
    path = sparse_image(tmp_path)
    gd = struct.unpack_from("<Q", path.read_bytes(), HDR["gd"])[0]
    patch(path, gd * 512, "<I", 1 << 30)
    with pytest.raises(Corrupted) as info:
        open_and_read(path)
    assert "entry 0 of the VMDK grain directory" in str(info.value)


def _first_gt(path: Path) -> int:
    raw = path.read_bytes()
    gd = struct.unpack_from("<Q", raw, HDR["gd"])[0]
    return struct.unpack_from("<I", raw, gd * 512)[0] * 512


def test_grain_past_eof_and_into_metadata(tmp_path: Path) -> None:
    path = sparse_image(tmp_path)
    gt = _first_gt(path)
    patch(path, gt, "<I", 1 << 30)
    with pytest.raises(Corrupted) as info:
        open_and_read(path)
    assert "beyond the end of the file" in str(info.value)
    patch(path, gt, "<I", 0)  # a grain "stored" on the header: readable, not writable
    patch(path, gt + 4 * 5, "<I", 0)
    patch(path, gt + 4 * 5, "<I", 2)
    with Disk() as disk:
        disk.open(path)
        disk.read(0, disk.size)
        with pytest.raises(Corrupted) as info:
            disk.write(5 * 65536, b"\1" * 512)
        assert "metadata" in str(info.value)


def _stream(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "s.vmdk"
    with Disk() as disk:
        disk.create_base(path, MiB, "VMDK", ImageFlags.VMDK_STREAM_OPTIMIZED)
        disk.write(0, b"\x5a" * 65536)
    return path, 128 * 512  # the first grain record follows the 64 KiB overhead


@pytest.mark.parametrize("payload, words", [
    (zlib.compress(bytes(3 * 65536)), "inflates to more than"),
    (b"\x78\x9c" + b"garbage" * 10, "not valid deflate"),
    (zlib.compress(bytes(65536))[:-8], "truncated"),
])
def test_bad_compressed_grains(tmp_path: Path, payload: bytes, words: str) -> None:
    path, record = _stream(tmp_path)
    raw = bytearray(path.read_bytes())
    assert struct.unpack_from("<Q", raw, record)[0] == 0  # the grain's LBA
    old = struct.unpack_from("<I", raw, record + 8)[0]
    assert len(payload) <= old + 500  # stay within the record's sectors
    struct.pack_into("<I", raw, record + 8, len(payload))
    raw[record + 12:record + 12 + len(payload)] = payload
    path.write_bytes(raw)
    with pytest.raises(Corrupted) as info:
        open_and_read(path)
    assert words in str(info.value)


def test_compressed_grain_size_field(tmp_path: Path) -> None:
    path, record = _stream(tmp_path)
    patch(path, record + 8, "<I", 1 << 31)
    with pytest.raises(Corrupted) as info:
        open_and_read(path)
    assert "claims" in str(info.value)


def test_stream_without_footer(tmp_path: Path) -> None:
    path, _ = _stream(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-1536])
    with pytest.raises(Corrupted) as info:
        open_and_read(path)
    assert "footer" in str(info.value)


def test_oversized_descriptor_file(tmp_path: Path) -> None:
    path = tmp_path / "big.vmdk"
    path.write_bytes(b"# Disk DescriptorFile\n" + b"#" * (2 * MiB))
    with pytest.raises(NotSupported):
        open_and_read(path)


def test_fuzzed_sparse_images_fail_cleanly(tmp_path: Path) -> None:
    """Random damage to metadata: reading and writing give data or a VDError."""
    original = sparse_image(tmp_path, "orig.vmdk").read_bytes()
    rng = random.Random(1234)
    target = tmp_path / "f.vmdk"
    regions = [(0, 512), (512, 1024), (21 * 512, 32 * 512), (64 * 1024 - 2048, 64 * 1024)]
    for _ in range(150):
        raw = bytearray(original)
        for _ in range(rng.randint(1, 6)):
            lo, hi = rng.choice(regions)
            raw[rng.randrange(lo, hi)] = rng.randrange(256)
        target.write_bytes(raw)
        for flags in (OpenFlags.READONLY, OpenFlags.NORMAL):
            try:
                with Disk() as disk:
                    disk.open(target, flags=flags)
                    disk.read(0, disk.size)
                    if not disk.is_read_only:
                        disk.write(3 * 65536 + 512, b"\1" * 700)
            except VDError:
                pass


def test_fuzzed_descriptor_files_fail_cleanly(tmp_path: Path) -> None:
    (tmp_path / "d-flat.vmdk").write_bytes(bytes(65536))
    text = ('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
            'createType="monolithicFlat"\nRW 128 FLAT "d-flat.vmdk" 0\n'
            'ddb.geometry.cylinders = "2"\nddb.uuid.image = "'
            '6b0b3a5e-4f3a-4c2e-9a0e-0d9c6f1e2a3b"\n').encode()
    rng = random.Random(99)
    target = tmp_path / "d.vmdk"
    for _ in range(200):
        raw = bytearray(text)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.choice(b'0129"= \n#aZ\xff\x00')
        target.write_bytes(raw)
        try:
            with Disk() as disk:
                disk.open(target, flags=OpenFlags.READONLY)
                disk.read(0, disk.size)
                view = disk[0]
                for getter in ("uuid", "parent_uuid", "comment", "pchs", "lchs"):
                    try:
                        getattr(view, getter)
                    except VDError:
                        pass
        except VDError:
            pass


def cowd_file(path: Path) -> bytes:
    """An ESX COWD extent: 2048 sectors, 16-sector grains, one grain written."""
    raw = bytearray(40 * 512)
    struct.pack_into("<4sIIIIIII", raw, 0, b"COWD", 1, 3, 2048, 16, 4, 1, 40)
    struct.pack_into("<I", raw, 4 * 512, 5)  # GD entry 0 -> GT at sector 5
    struct.pack_into("<I", raw, 5 * 512 + 4 * 3, 40)  # grain 3 -> sector 40
    data = bytes(range(256)) * 32
    path.write_bytes(bytes(raw) + data)
    return data


def test_cowd_extents_read_only(tmp_path: Path) -> None:
    data = cowd_file(tmp_path / "d-delta.vmdk")
    (tmp_path / "d.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n'
        'createType="vmfsSparse"\nRW 2048 VMFSSPARSE "d-delta.vmdk"\n')
    for name in ("d.vmdk", "d-delta.vmdk"):
        with Disk() as disk:
            disk.open(tmp_path / name)
            assert disk.is_read_only
            assert disk.size == 2048 * 512
            assert disk.read(0, 6 * 8192) == bytes(3 * 8192) + data + bytes(2 * 8192)
