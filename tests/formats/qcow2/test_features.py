"""Feature bits, header extensions, metadata and creation options."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from tests import qemu
from tests.formats.qcow2.util import MiB, create, get_u64, patch, put_u64, qemu_create, read_all
from vdgui.engine import registry
from vdgui.engine.container import Disk
from vdgui.engine.errors import (Corrupted, GeometryNotSet, InvalidHeader, InvalidParameter,
                                 InvalidSize, InvalidType, NotSupported)
from vdgui.engine.formats.base import CreateRequest
from vdgui.engine.formats.qcow2 import Qcow2Image, compression
from vdgui.engine.formats.qcow2.image import qemu_format_name
from vdgui.engine.io import default_provider
from vdgui.engine.types import ImageFlags, OpenFlags

INCOMPATIBLE, AUTOCLEAR = 72, 88
FEATURE_TABLE = 0x78  # first entry of the name table in a fresh 64 KiB-cluster image


def _written(tmp_path, **config):
    path = create(tmp_path / "img.qcow2", 4 * MiB, **config)
    with Disk() as disk:
        disk.open(str(path))
        disk.write(MiB, b"\x42" * 5000)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fresh_layout(tmp_path):
    path = create(tmp_path / "new.qcow2", 64 * MiB)
    assert path.read_bytes()[:4] == b"QFI\xfb"
    assert get_u64(path, 48) == 0x10000  # refcount table in cluster 1
    assert get_u64(path, 40) == 0x30000  # L1 table after the first refcount block


@pytest.mark.interop
@pytest.mark.parametrize("options", [
    {}, {"compat": "0.10"}, {"cluster_size": "512"}, {"cluster_size": "4096"},
    {"cluster_size": "8192"}, {"refcount_bits": "64", "lazy_refcounts": "on"}])
def test_fresh_header_matches_qemu(tmp_path, options):
    ours = create(tmp_path / "ours.qcow2", 64 * MiB, **options)
    theirs = qemu_create(tmp_path / "theirs.qcow2", 64 * MiB,
                         options=",".join(f"{k}={v}" for k, v in options.items()))
    expected = theirs.read_bytes()
    raw = ours.read_bytes()
    assert raw[:len(expected)] == expected  # byte for byte, feature names included
    assert not any(raw[len(expected):])


def test_one_bit_refcounts_layout(tmp_path):
    path = create(tmp_path / "r1.qcow2", MiB, refcount_bits="1")
    assert path.read_bytes()[0x20000] == 0x0F  # clusters 0..3 counted, low bits first


def test_unknown_incompatible_feature(tmp_path):
    path = _written(tmp_path)
    put_u64(path, INCOMPATIBLE, 1 << 10)
    # Name the bit in the image's own feature name table (type 0, bit 10).
    patch(path, FEATURE_TABLE, bytes([0, 10]) + b"future thing".ljust(46, b"\0"))
    before = _digest(path)
    with pytest.raises(NotSupported, match=r"bit 10 \(future thing\).*read-only"):
        Qcow2Image.open(default_provider(), str(path), OpenFlags.NORMAL)
    with Disk() as disk:
        with pytest.raises(NotSupported):
            disk.open(str(path))
        disk.open(str(path), flags=OpenFlags.READONLY)
        assert disk.read(MiB, 5000) == b"\x42" * 5000
        with pytest.raises(NotSupported):
            disk.set_open_flags(0, OpenFlags.NORMAL)
        assert disk.is_read_only
    assert _digest(path) == before


def test_corrupt_bit(tmp_path):
    path = _written(tmp_path)
    put_u64(path, INCOMPATIBLE, 2)
    with pytest.raises(Corrupted, match="corrupt"):
        Qcow2Image.open(default_provider(), str(path), OpenFlags.NORMAL)
    assert read_all(path)[MiB:MiB + 5000] == b"\x42" * 5000


def test_unknown_autoclear_bits_cleared_on_write_open(tmp_path):
    path = _written(tmp_path)
    put_u64(path, AUTOCLEAR, (1 << 7) | 1)
    before = _digest(path)
    read_all(path)
    assert _digest(path) == before  # read-only: left alone
    Qcow2Image.open(default_provider(), str(path), OpenFlags.NORMAL).close()
    assert get_u64(path, AUTOCLEAR) == 0


def test_compatible_feature_ignored(tmp_path):
    path = _written(tmp_path)
    compatible = get_u64(path, 80) | (1 << 9)
    put_u64(path, 80, compatible)
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x01" * 512)
    assert get_u64(path, 80) == compatible


@pytest.mark.interop
def test_persistent_bitmaps_refuse_writing(tmp_path):
    path = qemu_create(tmp_path / "b.qcow2", 4 * MiB, "write -P 0x11 0 64k")
    qemu.qemu_img("bitmap", "--add", path, "b0")
    before = _digest(path)
    with pytest.raises(NotSupported, match="bitmap"):
        Qcow2Image.open(default_provider(), str(path), OpenFlags.NORMAL)
    assert read_all(path)[:65536] == b"\x11" * 65536
    with Disk() as disk:
        disk.open(str(path), flags=OpenFlags.READONLY)
        assert "bitmaps: 1" in disk.dump()
    assert _digest(path) == before


@pytest.mark.interop
def test_external_data_file_refused(tmp_path):
    path = qemu_create(tmp_path / "x.qcow2", 4 * MiB, options=f"data_file={tmp_path / 'x.data'}")
    for flags in (OpenFlags.READONLY, OpenFlags.NORMAL):
        with pytest.raises(NotSupported, match="external data file"):
            Qcow2Image.open(default_provider(), str(path), flags)


@pytest.mark.interop
def test_zstd_without_the_module(tmp_path, monkeypatch):
    src = qemu_create(tmp_path / "src.qcow2", 4 * MiB, "write -P 0x11 0 64k")
    path = tmp_path / "z.qcow2"
    qemu.qemu_img("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", src, path)
    monkeypatch.setattr(compression, "zstandard", None)
    with Disk() as disk:
        disk.open(str(path), flags=OpenFlags.READONLY)
        assert disk.read(MiB, 4096) == bytes(4096)  # unallocated parts read fine
        with pytest.raises(NotSupported, match="zstandard"):
            disk.read(0, 4096)


def test_metadata(tmp_path):
    path = _written(tmp_path)
    image = Qcow2Image.open(default_provider(), str(path), OpenFlags.READONLY)
    try:
        assert image.version == 3 and image.size == 4 * MiB
        assert image.allocation_unit == 65536
        assert image.image_flags == ImageFlags.NONE
        assert image.parent_filename is None and image.parent_format is None
        for name in ("uuid", "parent_uuid", "modification_uuid", "comment"):
            with pytest.raises(NotSupported):
                getattr(image, name)
        with pytest.raises(GeometryNotSet):
            image.pchs
        rows = dict(image.describe())
        assert rows["L1 table"].startswith("offset 0x30000")
        assert rows["refcount bits"] == "16"
        assert "feature name table" in rows["header extensions"]
    finally:
        image.close()


def test_diff_metadata(tmp_path):
    base = create(tmp_path / "base.qcow2", 4 * MiB, compat="0.10")
    with Disk() as disk:
        disk.open(str(base))
        disk.create_diff(str(tmp_path / "child.qcow2"), "QCOW2")
        child = disk.image(1)
        assert child.parent_filename == "base.qcow2" and child.parent_format == "qcow2"
        assert child.image_flags == ImageFlags.DIFF and child.version == 3
        assert disk[1].image_flags & ImageFlags.DIFF


@pytest.mark.parametrize("backend, name", [("VDI", "vdi"), ("VHD", "vpc"), ("RAW", "raw"),
                                           ("QCOW2", "qcow2"), ("VMDK", "vmdk"),
                                           ("Parallels", "parallels")])
def test_backing_format_names(backend, name):
    assert qemu_format_name(backend) == name


@pytest.mark.parametrize("config, error", [
    ({"cluster_size": "1000"}, InvalidParameter), ({"cluster_size": "4M"}, InvalidParameter),
    ({"refcount_bits": "3"}, InvalidParameter), ({"refcount_bits": "128"}, InvalidParameter),
    ({"compat": "0.10", "refcount_bits": "64"}, InvalidParameter),
    ({"compat": "0.10", "lazy_refcounts": "on"}, InvalidParameter),
    ({"compat": "0.10", "compression_type": "zstd"}, InvalidParameter),
    ({"compat": "2.0"}, InvalidParameter), ({"compression_type": "lz4"}, InvalidParameter),
    ({"lazy_refcounts": "maybe"}, InvalidParameter), ({"preallocation": "full"}, InvalidParameter),
])
def test_bad_creation_options(tmp_path, config, error):
    path = tmp_path / "bad.qcow2"
    with Disk() as disk, pytest.raises(error):
        disk.create_base(str(path), 4 * MiB, "QCOW2", config=config)
    assert not path.exists()


def test_fixed_and_oversized_refused(tmp_path):
    request = CreateRequest(path=str(tmp_path / "f.qcow2"), size=MiB,
                            image_flags=ImageFlags.FIXED, uuid=uuid.uuid4())
    with pytest.raises(InvalidType):
        Qcow2Image.create(default_provider(), request)
    with Disk() as disk, pytest.raises(InvalidParameter):
        disk.create_base(str(tmp_path / "g.qcow2"), MiB, "QCOW2", image_flags=ImageFlags.FIXED)
    with Disk() as disk, pytest.raises(InvalidSize):
        # 512-byte clusters address at most 128 GiB through a 32 MiB L1 table.
        disk.create_base(str(tmp_path / "h.qcow2"), 256 << 30, "QCOW2",
                         config={"cluster_size": "512"})


def test_lazy_refcounts_option(tmp_path):
    path = create(tmp_path / "lazy.qcow2", MiB, lazy_refcounts="on")
    assert get_u64(path, 80) & 1


def test_probe(tmp_path):
    path = create(tmp_path / "p.qcow2", MiB)
    assert registry.probe(str(path))[0] == "QCOW2"
    v1 = tmp_path / "v1.img"
    v1.write_bytes(b"QFI\xfb\0\0\0\1" + bytes(100))
    with pytest.raises(InvalidHeader):
        Qcow2Image.probe(default_provider(), str(v1), 0)
    v4 = tmp_path / "v4.img"
    v4.write_bytes(b"QFI\xfb\0\0\0\4" + bytes(100))
    with pytest.raises(NotSupported, match="version 4"):
        Qcow2Image.probe(default_provider(), str(v4), 0)
    assert registry.probe(str(v4))[0] == "QCOW2"  # ours, so the open explains
