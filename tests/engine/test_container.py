"""The container's VD semantics, exercised on VDI chains in real files."""

from __future__ import annotations

import os
import uuid

import pytest

from vdgui.engine import Disk, Geometry, ImageFlags, OpenFlags, Status, open_chain
from vdgui.engine import errors

MiB = 1 << 20


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.vdi"
    with Disk() as disk:
        disk.create_base(path, 8 * MiB)
        disk.write(0, b"\xaa" * (2 * MiB))
        disk.write(5 * MiB + 100, b"tail")
    return path


def allocated_blocks(path) -> int:
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY | OpenFlags.INFO)
        return sum(e.length for e in disk.map() if e.depth == 0 and not e.zero) // MiB


def test_unaligned_reads_and_writes_round_trip(tmp_path):
    with Disk() as disk:
        disk.create_base(tmp_path / "a.vdi", 4 * MiB + 512)
        payload = os.urandom(3 * MiB + 17)
        disk.write(123, payload)
        assert disk.read(123, len(payload)) == payload
        assert disk.read(0, 123) == bytes(123)
        disk.write(4 * MiB + 511, b"\x01")
        assert disk.read(4 * MiB + 500, 12) == bytes(11) + b"\x01"


def test_io_outside_the_disk_is_refused(tmp_path):
    with Disk() as disk:
        with pytest.raises(errors.NotOpened):
            disk.read(0, 1)
        disk.create_base(tmp_path / "a.vdi", 2 * MiB)
        with pytest.raises(errors.InvalidParameter, match="outside the disk"):
            disk.read(2 * MiB - 1, 2)
        with pytest.raises(errors.InvalidParameter):
            disk.write(-1, b"x")


def test_writing_zeros_to_an_empty_base_allocates_nothing(tmp_path):
    path = tmp_path / "a.vdi"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB)
        size_before = os.path.getsize(path)
        disk.write(0, bytes(3 * MiB))
        disk.write(10, bytes(5))
    assert os.path.getsize(path) == size_before


def test_diff_allocation_fills_the_block_from_below(base, tmp_path):
    disk = open_chain(base)
    with disk:
        disk.create_diff(tmp_path / "diff.vdi")
        disk.write(MiB + 10, b"new")
        expected = b"\xaa" * 10 + b"new" + b"\xaa" * 100
        assert disk.read(MiB, len(expected)) == expected
        depth, status, run = disk.block_status(MiB, MiB)
        assert (depth, status, run) == (1, Status.DATA, MiB)


def test_writing_what_the_parent_already_holds_allocates_nothing(base, tmp_path):
    diff = tmp_path / "diff.vdi"
    with open_chain(base) as disk:
        disk.create_diff(diff)
        disk.write(0, b"\xaa" * MiB)
        disk.write(MiB + 5, b"\xaa" * 7)
    assert allocated_blocks(diff) == 0


def test_honor_same_allocates_even_identical_data(base, tmp_path):
    diff = tmp_path / "diff.vdi"
    with open_chain(base) as disk:
        disk.create_diff(diff)
        disk.set_open_flags(1, OpenFlags.HONOR_SAME)
        disk.write(0, b"\xaa" * MiB)
    assert allocated_blocks(diff) == 1


def test_zero_block_in_diff_hides_parent_after_reopen(base, tmp_path):
    """VirtualBox once kept the zero marker only in memory: after a reopen the
    parent's old data showed through again.  It must stay hidden."""
    diff = tmp_path / "diff.vdi"
    with open_chain(base) as disk:
        disk.create_diff(diff)
        disk.write(0, bytes(MiB))
        assert disk.read(0, MiB) == bytes(MiB)
    with open_chain(diff) as disk:
        assert len(disk) == 2
        assert disk.read(0, MiB) == bytes(MiB)
        assert disk.read(MiB, 4) == b"\xaa" * 4
        depth, status, _ = disk.block_status(0, MiB)
        assert (depth, status) == (1, Status.ZERO)


def test_honor_zeroes_stores_a_real_zero_block(base, tmp_path):
    diff = tmp_path / "diff.vdi"
    with open_chain(base) as disk:
        disk.create_diff(diff, open_flags=OpenFlags.HONOR_ZEROES)
        disk.write(0, bytes(MiB))
        assert disk.block_status(0, MiB)[1] is Status.DATA
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(0, MiB) == bytes(MiB)


def test_modification_uuid_changes_on_first_write_and_on_flush(tmp_path):
    path = tmp_path / "a.vdi"
    with Disk() as disk:
        disk.create_base(path, 2 * MiB)
        created = disk[0].modification_uuid
    with open_chain(path) as disk:
        assert disk[0].modification_uuid == created
        disk.write(0, b"x")
        first = disk[0].modification_uuid
        assert first != created
        disk.write(1, b"y")
        disk.flush()
        assert disk[0].modification_uuid not in (created, first)
    with open_chain(path, OpenFlags.READONLY) as disk:
        disk.read(0, 10)
        assert disk[0].modification_uuid not in (created, first)


def test_diff_records_parent_uuids(base, tmp_path):
    with open_chain(base) as disk:
        disk.create_diff(tmp_path / "diff.vdi", comment="snap")
        assert disk[1].parent_uuid == disk[0].uuid
        assert disk[1].parent_modification_uuid == disk[0].modification_uuid
        assert disk[1].image_flags & ImageFlags.DIFF
        assert disk[0].read_only and not disk[1].read_only
        assert disk[1].comment == "snap"


def test_opening_a_diff_alone_is_refused_unless_info(base, tmp_path):
    diff = tmp_path / "diff.vdi"
    with open_chain(base) as disk:
        disk.create_diff(diff)
        disk.write(3 * MiB, b"d" * 10)
    with Disk() as disk:
        with pytest.raises(errors.InvalidType, match="differencing"):
            disk.open(diff)
        disk.open(diff, flags=OpenFlags.INFO | OpenFlags.READONLY)
        assert disk.read(0, 4) == bytes(4)  # no parent: free blocks read as zeros
        assert disk.read(3 * MiB, 10) == b"d" * 10


def test_parent_uuid_mismatch_is_refused(base, tmp_path):
    diff = tmp_path / "diff.vdi"
    other = tmp_path / "other.vdi"
    with open_chain(base) as disk:
        disk.create_diff(diff)
    with Disk() as disk:
        disk.create_base(other, 8 * MiB)
    with Disk() as disk:
        disk.open(other, flags=OpenFlags.READONLY)
        with pytest.raises(errors.UuidMismatch, match=str(other)):
            disk.open(diff)
        assert len(disk) == 1


def test_close_restores_write_access_and_delete_removes_the_file(base, tmp_path):
    diff = tmp_path / "diff.vdi"
    with open_chain(base) as disk:
        disk.create_diff(diff)
        disk.close(delete=True)
        assert not diff.exists()
        assert len(disk) == 1 and not disk.is_read_only
        disk.write(0, b"b")
    with open_chain(base, OpenFlags.READONLY) as disk:
        assert disk.read(0, 2) == b"b\xaa"


def test_close_all_closes_everything_and_reports_the_first_error(base, tmp_path):
    disk = open_chain(base)
    disk.create_diff(tmp_path / "diff.vdi")
    images = [disk.image(i) for i in range(2)]

    def failing_close():
        raise errors.StorageError("boom", images[1].path)

    real_close = images[1].close
    images[1].close = failing_close
    with pytest.raises(errors.StorageError, match="boom"):
        disk.close_all()
    assert len(disk) == 0
    real_close()
    assert images[0].storage._fd == -1  # the base was still closed


def test_second_writer_gets_a_clear_in_use_error(base):
    with open_chain(base) as first:
        first.write(0, b"1")
        with open_chain(base) as second:
            assert second.is_read_only
            with pytest.raises(errors.ReadOnly, match="in use"):
                second.write(0, b"2")
            assert second.read(0, 1) == b"1"


def test_setters_validate_and_write_through(base):
    new = uuid.uuid4()
    with open_chain(base) as disk:
        disk[0].comment = "hello"
        disk[0].uuid = new
        disk[0].lchs = Geometry(16, 16, 63)
        with pytest.raises(errors.InvalidParameter):
            disk[0].lchs = Geometry(10, 300, 63)
        with pytest.raises(errors.InvalidParameter):
            disk[0].pchs = Geometry(10, 17, 63)
        with pytest.raises(errors.InvalidParameter, match="255"):
            disk[0].comment = "x" * 300
    with open_chain(base, OpenFlags.READONLY) as disk:
        assert disk[0].comment == "hello"
        assert disk[0].uuid == new
        assert disk[0].lchs == Geometry(16, 16, 63)
        with pytest.raises(errors.ReadOnly):
            disk[0].comment = "nope"
        with pytest.raises(errors.GeometryNotSet):
            disk.pchs(0)


def test_read_only_open_changes_no_byte(base):
    before = base.read_bytes()
    mtime = os.stat(base).st_mtime_ns
    with open_chain(base, OpenFlags.READONLY) as disk:
        disk.read(0, disk.size)
        disk.flush()
        list(disk.map())
        disk.dump()
    assert base.read_bytes() == before
    assert os.stat(base).st_mtime_ns == mtime


def test_map_names_the_layer_of_each_extent(base, tmp_path):
    with open_chain(base) as disk:
        disk.create_diff(tmp_path / "diff.vdi")
        disk.write(MiB, b"z" * MiB)
        extents = [(e.offset, e.length, e.depth, e.zero) for e in disk.map()]
    assert extents == [(0, MiB, 0, False), (MiB, MiB, 1, False), (2 * MiB, 3 * MiB, None, True),
                       (5 * MiB, MiB, 0, False), (6 * MiB, 2 * MiB, None, True)]


def test_create_refuses_bad_arguments(tmp_path):
    with Disk() as disk:
        with pytest.raises(errors.InvalidSize, match="sector"):
            disk.create_base(tmp_path / "a.vdi", MiB + 1)
        with pytest.raises(errors.InvalidParameter):
            disk.create_base(tmp_path / "a.vdi", 0)
        with pytest.raises(errors.InvalidParameter, match="variant"):
            disk.create_base(tmp_path / "a.vdi", MiB, image_flags=ImageFlags.VMDK_STREAM_OPTIMIZED)
        with pytest.raises(errors.InvalidState):
            disk.create_diff(tmp_path / "d.vdi")
        assert not (tmp_path / "a.vdi").exists()
        (tmp_path / "exists.vdi").write_bytes(b"keep me")
        with pytest.raises(errors.AlreadyExists):
            disk.create_base(tmp_path / "exists.vdi", MiB)
        assert (tmp_path / "exists.vdi").read_bytes() == b"keep me"


def test_dump_describes_every_image(base, tmp_path):
    with open_chain(base) as disk:
        disk.create_diff(tmp_path / "diff.vdi")
        text = disk.dump()
    assert text.count("Dumping VD image") == 2
    assert "block map offset: 0x100000" in text


def test_ignore_flush_skips_the_sync_but_not_the_metadata(base, monkeypatch):
    syncs = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: syncs.append(fd))
    with open_chain(base, OpenFlags.IGNORE_FLUSH) as disk:
        assert disk.open_flags(0) & OpenFlags.IGNORE_FLUSH
        disk.write(7 * MiB, b"fast")
        disk.flush()
        assert syncs == []
        disk.set_open_flags(0, OpenFlags.NORMAL)
        disk.write(7 * MiB, b"safe")
        disk.flush()
        assert syncs
    with open_chain(base, OpenFlags.READONLY) as disk:
        assert disk.read(7 * MiB, 4) == b"safe"


def test_sequential_advises_the_kernel(base, monkeypatch):
    advice = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, how: advice.append(how))
    with open_chain(base, OpenFlags.SEQUENTIAL | OpenFlags.READONLY) as disk:
        disk.read(0, MiB)
    assert os.POSIX_FADV_SEQUENTIAL in advice
