"""VMDK images through the engine: every variant, metadata, CID, zero grains, extents."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.formats.vmdk.helpers import MiB, PLAN, SIZE, apply, read_all, write_plan
from vdgui.engine import Disk, Geometry, ImageFlags, OpenFlags, Status, open_chain, probe
from vdgui.engine.errors import GeometryNotSet, InvalidParameter, InvalidState, VDError
from vdgui.engine.formats.vmdk.descriptor import Descriptor
from vdgui.engine.formats.vmdk.sparse import SparseLayout
from vdgui.engine.io import FileProvider

VARIANTS = {
    "monolithicSparse": ImageFlags.NONE,
    "monolithicFlat": ImageFlags.FIXED,
    "twoGbMaxExtentSparse": ImageFlags.VMDK_SPLIT_2G,
    "twoGbMaxExtentFlat": ImageFlags.VMDK_SPLIT_2G | ImageFlags.FIXED,
    "streamOptimized": ImageFlags.VMDK_STREAM_OPTIMIZED,
    "vmfs": ImageFlags.FIXED | ImageFlags.VMDK_ESX,
}

FILES = {
    "monolithicSparse": ["d.vmdk"],
    "monolithicFlat": ["d.vmdk", "d-flat.vmdk"],
    "twoGbMaxExtentSparse": ["d.vmdk", "d-s001.vmdk"],
    "twoGbMaxExtentFlat": ["d.vmdk", "d-f001.vmdk"],
    "streamOptimized": ["d.vmdk"],
    "vmfs": ["d.vmdk", "d-flat.vmdk"],
}


def descriptor_of(path: Path) -> Descriptor:
    raw = path.read_bytes()
    if raw[:4] == b"KDMV":
        offset = struct.unpack_from("<Q", raw, 0x1C)[0] * 512
        raw = raw[offset:offset + 20 * 512].split(b"\0", 1)[0]
    return Descriptor.parse(raw.decode())


@pytest.mark.parametrize("create_type", VARIANTS)
def test_variant_round_trip(tmp_path: Path, create_type: str) -> None:
    path = tmp_path / "d.vmdk"
    image_uuid = uuid.uuid4()
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", VARIANTS[create_type], comment="made here",
                         uuid=image_uuid, lchs=Geometry(20, 16, 63))
        write_plan(disk, sorted(PLAN))  # ascending: a stream is written front to back
        assert read_all(disk) == apply(PLAN)  # readable while being written, too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES[create_type])
    assert probe(str(path)) == ("VMDK", probe(str(path))[1])
    assert descriptor_of(path).get("createType") == create_type
    with open_chain(path, OpenFlags.READONLY) as disk:
        view = disk[0]
        assert read_all(disk) == apply(PLAN)
        assert view.size == SIZE
        assert view.uuid == image_uuid
        assert view.comment == "made here"
        assert view.pchs == Geometry(20, 16, 63)
        assert view.lchs == Geometry(20, 16, 63)
        assert view.image_flags == VARIANTS[create_type]
        assert view.version == (3 if create_type == "streamOptimized" else 1)
        assert [Path(p).name for p in disk.image(0).files] == FILES[create_type]
        dump = disk.dump()
        assert f"create type: {create_type}" in dump and "CID:" in dump


def test_cid_changes_on_first_write_after_open(tmp_path: Path) -> None:
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK")
        created = descriptor_of(path).get("CID")
        disk.write(0, b"\1" * 512)  # a new image's CID is new already
        assert descriptor_of(path).get("CID") == created
    with Disk() as disk:  # opened for writing, not written: no change
        disk.open(path)
    assert descriptor_of(path).get("CID") == created
    with Disk() as disk:
        disk.open(path)
        disk.write(0, b"\2" * 512)
        first = descriptor_of(path).get("CID")  # written at once, not at close
        assert first != created
        disk.write(4096, b"\3" * 512)
        assert descriptor_of(path).get("CID") == first  # once per open
    assert descriptor_of(path).get("CID") == first


def test_metadata_setters(tmp_path: Path) -> None:
    path = tmp_path / "d.vmdk"
    new, parent = uuid.uuid4(), uuid.uuid4()
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK")
        view = disk[0]
        with pytest.raises(GeometryNotSet):
            view.lchs
        view.uuid = new
        view.modification_uuid = parent
        view.pchs = Geometry(10, 16, 63)
        view.lchs = Geometry(10, 32, 63)
        view.comment = "x"
        view.comment = None
    d = descriptor_of(path)
    assert d.get("ddb.uuid.image") == str(new)
    assert d.get("ddb.geometry.biosHeads") == "32"
    assert d.get("ddb.comment") is None
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk[0].pchs == Geometry(10, 16, 63)
        assert disk[0].modification_uuid == parent
        with pytest.raises(VDError):
            disk[0].comment = "read-only"


def test_zero_grains_mask_the_parent(tmp_path: Path) -> None:
    """ZeroedGrain=1 images store an all-zero grain as GTE 1 (reads zeros, hides parent)."""
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK")
        disk.write(0, b"\xaa" * (4 * 65536))
        disk.create_diff(child, "VMDK", config={"ZeroedGrain": "1"})
        disk.write(65536, bytes(65536))  # a whole grain of zeros
        disk.write(2 * 65536, bytes(512))  # part of a grain: a real grain
        assert disk.block_status(65536, 65536)[1:] == (Status.ZERO, 65536)
        assert disk.block_status(2 * 65536, 65536)[1] == Status.DATA
        assert disk.block_status(3 * 65536, 65536)[0] == 0  # free: the base answers
    raw = child.read_bytes()
    assert struct.unpack_from("<I", raw, 0)[0] == 0x564D444B
    assert struct.unpack_from("<II", raw, 4) == (2, 0x7)  # version 2, zeroed-grain flag
    with open_chain(child, OpenFlags.READONLY) as disk:
        expected = b"\xaa" * 65536 + bytes(65536 + 512) + b"\xaa" * (65536 - 512) + \
            b"\xaa" * 65536
        assert disk.read(0, 4 * 65536) == expected


def test_version1_zero_grain_is_allocated(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK")
        disk.write(0, b"\xaa" * 65536)
        disk.create_diff(child, "VMDK")
        disk.write(0, bytes(65536))
        assert disk.block_status(0, 65536)[1] == Status.DATA
        assert disk.read(0, 65536) == bytes(65536)
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.read(0, 65536) == bytes(65536)


def _tables(raw: bytes, header_field: int) -> np.ndarray:
    """All grain table entries reached through the GD at header offset ``header_field``."""
    gd_sector = struct.unpack_from("<Q", raw, header_field)[0]
    capacity = struct.unpack_from("<Q", raw, 0x0C)[0]
    count = -(-capacity // (128 * 512))
    gd = np.frombuffer(raw, "<u4", count, gd_sector * 512)
    return np.concatenate([np.frombuffer(raw, "<u4", 512, int(s) * 512) for s in gd])


def test_redundant_grain_tables_stay_in_sync(tmp_path: Path) -> None:
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, 70 * MiB, "VMDK")  # three grain tables
        write_plan(disk, PLAN + [(40 * MiB, 70000, 0x77), (70 * MiB - 512, 512, 0x78)])
    raw = path.read_bytes()
    primary, redundant = _tables(raw, 0x38), _tables(raw, 0x30)
    assert np.count_nonzero(primary) > 5
    assert np.array_equal(primary, redundant)


def test_batched_allocation_is_contiguous(tmp_path: Path) -> None:
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK")
        disk.write(0, b"\5" * (8 * 65536))
    entries = _tables(path.read_bytes(), 0x38)[:8]
    assert list(entries) == [128 + 128 * i for i in range(8)]


def _write_sparse_extent(path: Path, sectors: int) -> None:
    storage = FileProvider().open(str(path), create=True)
    try:
        SparseLayout.plan(sectors).write(storage)
    finally:
        storage.close()


def test_mixed_extents_and_boundaries(tmp_path: Path) -> None:
    """FLAT, ZERO, SPARSE and offset FLAT extents; I/O crossing every boundary."""
    (tmp_path / "a.bin").write_bytes(b"\x0a" * (2048 * 512))
    (tmp_path / "b.bin").write_bytes(b"\x0b" * (300 * 512))
    _write_sparse_extent(tmp_path / "s.vmdk", 4096)
    (tmp_path / "m.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
        'createType="custom"\n'
        'RW 2048 FLAT "a.bin" 0\nRW 128 ZERO\nRW 4096 SPARSE "s.vmdk"\n'
        'RW 256 FLAT "b.bin" 8\n')
    ends = [2048 * 512, 2176 * 512, 6272 * 512, 6528 * 512]
    expected = bytearray(b"\x0a" * ends[0] + bytes(ends[2] - ends[0]) +
                         b"\x0b" * (ends[3] - ends[2]))
    with Disk() as disk:
        disk.open(tmp_path / "m.vmdk")
        assert disk.size == ends[3]
        assert disk.read(0, disk.size) == expected
        assert disk.block_status(ends[0] - 512, 4096)[1:] == (Status.DATA, 512)
        assert disk.block_status(ends[0], 1 << 20)[1:] == (Status.ZERO, 65536)
        free = disk.block_status(ends[1], disk.size - ends[1])[1:]
        assert free == (Status.FREE, ends[2] - ends[1])  # stops at the extent's end
        # Writes across FLAT->ZERO (zeros only), SPARSE->FLAT.
        disk.write(ends[0] - 1000, b"\1" * 1000 + bytes(2000))
        disk.write(ends[2] - 3000, b"\2" * 6000)
        expected[ends[0] - 1000:ends[0]] = b"\1" * 1000
        expected[ends[2] - 3000:ends[2] + 3000] = b"\2" * 6000
        assert disk.read(0, disk.size) == expected
        with pytest.raises(InvalidState):  # a ZERO extent has no storage
            disk.write(ends[0] + 512, b"\3" * 512)
    assert (tmp_path / "b.bin").read_bytes()[8 * 512:8 * 512 + 3000] == b"\2" * 3000
    with Disk() as disk:
        disk.open(tmp_path / "m.vmdk", flags=OpenFlags.READONLY)
        assert disk.read(0, disk.size) == expected


def test_extent_access_modes(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"\x0a" * 65536)
    (tmp_path / "b.bin").write_bytes(b"\x0b" * 65536)
    (tmp_path / "m.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="custom"\n'
        'RDONLY 128 FLAT "a.bin" 0\nNOACCESS 128 FLAT "b.bin" 0\n')
    with Disk() as disk:
        disk.open(tmp_path / "m.vmdk")
        assert disk.read(0, 65536) == b"\x0a" * 65536
        with pytest.raises(InvalidState) as info:
            disk.write(0, b"\1" * 512)
        assert info.value.status == "VERR_VD_VMDK_INVALID_STATE"
        with pytest.raises(InvalidState):
            disk.read(65536, 512)
    assert (tmp_path / "a.bin").read_bytes() == b"\x0a" * 65536


def test_split_sparse_crosses_extents(tmp_path: Path) -> None:
    """A write spanning two 2047 MiB extents is split between them."""
    path = tmp_path / "big.vmdk"
    boundary = 2047 * MiB
    with Disk() as disk:
        disk.create_base(path, 2 * boundary + MiB, "VMDK", ImageFlags.VMDK_SPLIT_2G)
        disk.write(boundary - 3 * 65536 - 512, b"\7" * (6 * 65536 + 1024))
        assert disk.block_status(boundary - 65536, 1 << 30)[1:] == (Status.DATA, 65536)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big-s001.vmdk", "big-s002.vmdk", "big-s003.vmdk", "big.vmdk"]
    with open_chain(path, OpenFlags.READONLY) as disk:
        got = disk.read(boundary - 4 * 65536, 8 * 65536)
        assert got == bytes(65536 - 512) + b"\7" * (6 * 65536 + 1024) + bytes(65536 - 512)


def test_stream_is_written_front_to_back(tmp_path: Path) -> None:
    path = tmp_path / "s.vmdk"
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", ImageFlags.VMDK_STREAM_OPTIMIZED)
        disk.write(65536, b"\1" * 512)
        disk.write(65536 + 512, b"\2" * 512)  # the grain being assembled: fine
        disk.write(2 * 65536, bytes(65536))  # zeros: nothing to store
        disk.write(5 * 65536, b"\3" * 65536)
        with pytest.raises(InvalidState) as info:
            disk.write(3 * 65536, b"\4" * 512)  # behind grain 5
        assert info.value.status == "VERR_VD_VMDK_INVALID_WRITE"
        with pytest.raises(InvalidState) as info:
            disk.write(65536, b"\4" * 512)  # grain 1 is compressed already
        assert info.value.status == "VERR_VD_VMDK_INVALID_STATE"
        assert disk.read(65536, 1024) == b"\1" * 512 + b"\2" * 512
    raw = path.read_bytes()
    # Footer marker, footer (the header with the real GD offset), end-of-stream marker.
    assert struct.unpack_from("<QII", raw, len(raw) - 1536) == (1, 0, 3)
    assert raw[len(raw) - 1024:len(raw) - 1020] == b"KDMV"
    assert raw[len(raw) - 512:] == bytes(512)
    assert struct.unpack_from("<Q", raw, 0x38)[0] == 0xFFFFFFFFFFFFFFFF
    with Disk() as disk:
        disk.open(path)
        assert disk.is_read_only  # a finished stream stays as written
        assert disk.read(0, 6 * 65536) == (bytes(65536) + b"\1" * 512 + b"\2" * 512 +
                                           bytes(65536 - 1024) + bytes(3 * 65536) +
                                           b"\3" * 65536)
        assert disk.block_status(2 * 65536, 65536)[1] == Status.FREE


def test_stream_honor_zeroes_stores_zero_grains(tmp_path: Path) -> None:
    path = tmp_path / "s.vmdk"
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", ImageFlags.VMDK_STREAM_OPTIMIZED,
                         open_flags=OpenFlags.HONOR_ZEROES)
        disk.image(0).write_blocks(0, memoryview(bytes(65536)))
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk.block_status(0, 65536)[1] == Status.DATA


def test_create_refuses_bad_variants(tmp_path: Path) -> None:
    for flags in (ImageFlags.VMDK_STREAM_OPTIMIZED | ImageFlags.VMDK_SPLIT_2G,
                  ImageFlags.VMDK_ESX, ImageFlags.VMDK_ESX | ImageFlags.FIXED
                  | ImageFlags.VMDK_SPLIT_2G):
        with Disk() as disk, pytest.raises(InvalidParameter):
            disk.create_base(tmp_path / "x.vmdk", SIZE, "VMDK", flags)
    assert list(tmp_path.iterdir()) == []
    with Disk() as disk:
        disk.create_base(tmp_path / "b.vmdk", SIZE, "VMDK")
        with pytest.raises(VDError):
            disk.create_diff(tmp_path / "c.vmdk", "VMDK", ImageFlags.VMDK_STREAM_OPTIMIZED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.vmdk"]


def test_failed_create_leaves_no_files(tmp_path: Path) -> None:
    (tmp_path / "d-f001.vmdk").write_bytes(b"in the way")
    with Disk() as disk, pytest.raises(VDError):
        disk.create_base(tmp_path / "d.vmdk", SIZE, "VMDK",
                         ImageFlags.VMDK_SPLIT_2G | ImageFlags.FIXED)
    assert [p.name for p in tmp_path.iterdir()] == ["d-f001.vmdk"]
    assert (tmp_path / "d-f001.vmdk").read_bytes() == b"in the way"


def test_diff_records_parent(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vmdk", tmp_path / "sub" / "child.vmdk"
    child.parent.mkdir()
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK")
        disk.write(0, b"\1" * 65536)
        base_uuid, base_mod = disk[0].uuid, disk[0].modification_uuid
        disk.create_diff(child, "VMDK")
        disk.write(65536, b"\2" * 512)
        assert disk[1].parent_uuid == base_uuid
        assert disk[1].image_flags & ImageFlags.DIFF
    d = descriptor_of(child)
    assert d.get("parentCID") == descriptor_of(base).get("CID")
    assert d.get("parentFileNameHint") == str(base)  # outside the child's folder: absolute
    assert d.get("ddb.uuid.parentmodification") == str(base_mod)
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.count == 2
        assert disk.read(0, 65536 + 512) == b"\1" * 65536 + b"\2" * 512


def test_diff_on_a_vdi_base(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vdi", tmp_path / "child.vmdk"
    with Disk() as disk:
        disk.create_base(base, SIZE, "VDI")
        write_plan(disk, PLAN[:3])
        disk.create_diff(child, "VMDK")
        write_plan(disk, PLAN[3:])
    d = descriptor_of(child)
    assert d.get("parentCID") == "ffffffff"
    assert d.get("parentFileNameHint") == "base.vdi"
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert [v.backend for v in disk.images] == ["VDI", "VMDK"]
        assert read_all(disk) == apply(PLAN)


@pytest.mark.parametrize("flags, new_size", [
    (ImageFlags.NONE, 100 * MiB),  # the grain directory has room
    (ImageFlags.NONE, 5 << 30),  # the grain directories move to the end
    (ImageFlags.FIXED, 12 * MiB),
    (ImageFlags.VMDK_SPLIT_2G, 2047 * MiB + 10 * MiB),  # fills the extent, adds one
    (ImageFlags.VMDK_SPLIT_2G | ImageFlags.FIXED, 20 * MiB),
])
def test_resize_grows(tmp_path: Path, flags: ImageFlags, new_size: int) -> None:
    from vdgui.engine.ops.resize import resize
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", flags)
        write_plan(disk, PLAN)
        resize(disk, new_size)
        assert disk.size == new_size
        disk.write(new_size - 70000, b"\x99" * 70000)
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.size == new_size
        assert disk.read(0, SIZE) == apply(PLAN)
        assert disk.read(SIZE, 65536) == bytes(65536)
        assert disk.read(new_size - 70000, 70000) == b"\x99" * 70000
        assert disk[0].pchs.cylinders == min(new_size // (16 * 63 * 512), 16383)


def test_resize_refusals(tmp_path: Path) -> None:
    from vdgui.engine.errors import NotSupported, ShrinkNotSupported
    with Disk() as disk:
        disk.create_base(tmp_path / "d.vmdk", SIZE, "VMDK")
        disk.write(SIZE - 512, b"\1")
        with pytest.raises(ShrinkNotSupported):  # data beyond the new end
            disk.image(0).resize(SIZE - 65536)
    with Disk() as disk:
        disk.create_base(tmp_path / "s.vmdk", SIZE, "VMDK", ImageFlags.VMDK_STREAM_OPTIMIZED)
        with pytest.raises(NotSupported):
            disk.image(0).resize(2 * SIZE)


def test_set_parent(tmp_path: Path) -> None:
    from vdgui.engine.formats.base import ParentLink
    a, b, child = tmp_path / "a.vmdk", tmp_path / "b.vmdk", tmp_path / "c.vmdk"
    for base in (b, a):
        with Disk() as disk:
            disk.create_base(base, SIZE, "VMDK")
            disk.write(0, b"\1" * 65536)
    with Disk() as disk:
        disk.open(a, flags=OpenFlags.READONLY)
        disk.create_diff(child, "VMDK")
        disk.write(65536, b"\2" * 512)
        with Disk() as other:
            other.open(b, flags=OpenFlags.READONLY)
            link = ParentLink(other[0].uuid, other[0].modification_uuid, str(b), "VMDK")
        disk.image(1).set_parent(link)
    d = descriptor_of(child)
    assert d.get("parentFileNameHint") == "b.vmdk"
    assert d.get("parentCID") == descriptor_of(b).get("CID")
    assert d.get("ddb.uuid.parent") == str(link.uuid)
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert [Path(v.path).name for v in disk.images] == ["b.vmdk", "c.vmdk"]
        assert disk.read(0, 65536 + 512) == b"\1" * 65536 + b"\2" * 512
    with Disk() as disk:
        disk.open(child, flags=OpenFlags.INFO)
        disk.image(0).set_parent(None)
        assert not disk.image(0).image_flags & ImageFlags.DIFF
    d = descriptor_of(child)
    assert d.get("parentFileNameHint") is None and d.get("parentCID") == "ffffffff"


@pytest.mark.parametrize("create_type", ["monolithicSparse", "monolithicFlat",
                                         "twoGbMaxExtentSparse"])
def test_rename(tmp_path: Path, create_type: str) -> None:
    path, target = tmp_path / "d.vmdk", tmp_path / "moved" / "e.vmdk"
    target.parent.mkdir()
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", VARIANTS[create_type])
        disk.write(0, b"\1" * 512)
        disk.image(0).rename(str(target))
        disk.write(512, b"\2" * 512)  # the files stay usable under their new names
        assert disk[0].filename == str(target)
    names = sorted(p.name for p in target.parent.iterdir())
    assert names == sorted(n.replace("d", "e", 1) for n in FILES[create_type])
    assert list(tmp_path.glob("d*")) == []
    with open_chain(target, OpenFlags.READONLY) as disk:
        assert disk.read(0, 1024) == b"\1" * 512 + b"\2" * 512


def test_rename_keeps_the_parent_reachable(tmp_path: Path) -> None:
    base, child = tmp_path / "b.vmdk", tmp_path / "c.vmdk"
    target = tmp_path / "sub" / "c.vmdk"
    target.parent.mkdir()
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK")
        disk.write(0, b"\1" * 512)
        disk.create_diff(child, "VMDK")
        disk.image(1).rename(str(target))
    assert descriptor_of(target).get("parentFileNameHint") == str(base)
    with open_chain(target, OpenFlags.READONLY) as disk:
        assert disk.count == 2 and disk.read(0, 512) == b"\1" * 512


def test_a_diff_on_a_stream_being_written_finishes_it(tmp_path: Path) -> None:
    base, child = tmp_path / "s.vmdk", tmp_path / "c.vdi"
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK", ImageFlags.VMDK_STREAM_OPTIMIZED)
        disk.write(0, b"\1" * 70000)
        disk.create_diff(child, "VDI")  # the stream below becomes read-only: complete
        disk.write(65536, b"\2" * 512)
        assert disk.read(0, 70000) == b"\1" * 65536 + b"\2" * 512 + b"\1" * (70000 - 66048)
    assert base.read_bytes()[-512:] == bytes(512)  # ends with the end-of-stream marker
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.read(0, 70000) == b"\1" * 65536 + b"\2" * 512 + b"\1" * (70000 - 66048)


def test_honor_zeroes_allocates_zero_grains(tmp_path: Path) -> None:
    base, child = tmp_path / "b.vmdk", tmp_path / "c.vmdk"
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK")
        disk.write(0, b"\1" * 65536)
        disk.create_diff(child, "VMDK", config={"ZeroedGrain": "1"},
                         open_flags=OpenFlags.HONOR_ZEROES)
        disk.write(0, bytes(65536))
        assert disk.block_status(0, 65536)[1] == Status.DATA
        assert disk.read(0, 65536) == bytes(65536)
