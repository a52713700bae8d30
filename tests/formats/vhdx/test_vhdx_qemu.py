"""VHDX against qemu-img/qemu-io, both ways, on real files.

qemu reads and writes fixed and dynamic VHDX with 512-byte logical sectors only: it
neither creates nor opens differencing VHDX images, and refuses 4 KiB logical
sectors, so those are checked against our own model (test_vhdx*.py).
"""

from __future__ import annotations

import os
import struct
import uuid

import pytest

from vdgui.engine import Disk, ImageFlags, OpenFlags, open_chain
from vdgui.engine.formats.vhdx import headers as vh
from vdgui.engine.formats.vhdx import metadata as vm

from tests import qemu
from tests.formats.clustered import (digest, engine_read, engine_write, expected, qemu_write,
                                     scattered_writes)
from tests.formats.vhdx import helpers as h

pytestmark = pytest.mark.interop

MiB = 1 << 20


@pytest.mark.parametrize("options, size", [
    ("subformat=dynamic", 20 * MiB + 512),
    ("subformat=dynamic,block_size=1M", 9 * MiB - 512),
    ("subformat=fixed,block_size=2M", 7 * MiB),
    ("subformat=fixed,block_size=1M,block_state_zero=off", 7 * MiB + 4096),
])
def test_qemu_written_vhdx_reads_identically(tmp_path, options, size):
    image = tmp_path / "q.vhdx"
    qemu.qemu_img("create", "-f", "vhdx", "-o", options, image, str(size))
    writes = scattered_writes(size, MiB)
    qemu_write(image, "vhdx", writes)
    reference = qemu.to_raw(image, "vhdx", tmp_path / "q.raw")
    assert reference == expected(size, writes)
    before = digest(image)
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.size == size == qemu.info(image)["virtual-size"]
        assert disk.read(0, size) == reference
        assert bool(disk[0].image_flags & ImageFlags.FIXED) == ("fixed" in options)
    assert digest(image) == before


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("size, block", [(4 * MiB, "1M"), (20 * MiB + 512, None),
                                         (9 * MiB - 512, "2M")])
def test_our_vhdx_passes_qemu_check_and_compares_equal(tmp_path, size, block, fixed):
    image = tmp_path / "ours.vhdx"
    content = bytearray(size)
    chunks = [(0, os.urandom(512)), (MiB - 100, os.urandom(300)), (2 * MiB, bytes(MiB)),
              (3 * MiB + 7, os.urandom(70000)), (size - 512, b"\xee" * 512)]
    config = {"block_size": block} if block else {}
    with Disk() as disk:
        disk.create_base(image, size, backend="VHDX", config=config,
                         image_flags=ImageFlags.FIXED if fixed else ImageFlags.NONE)
        for offset, data in chunks:
            disk.write(offset, data)
            content[offset:offset + len(data)] = data
    (tmp_path / "ref.raw").write_bytes(content)
    result = qemu.check(image, "vhdx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert qemu.compare(image, "vhdx", tmp_path / "ref.raw", "raw")
    assert qemu.info(image, "vhdx")["virtual-size"] == size


def test_each_side_writes_into_the_others_image(tmp_path):
    size = 56 * MiB
    ours, theirs = tmp_path / "ours.vhdx", tmp_path / "theirs.vhdx"
    first = scattered_writes(size, 8 * MiB)
    second = [(5 * MiB + 512, 3 * MiB, 0x66), (size - 4096, 4096, 0x77), (512, 512, 0x88)]
    h.create(ours, size)
    qemu.qemu_img("create", "-f", "vhdx", theirs, str(size))
    engine_write(ours, first)
    qemu_write(theirs, "vhdx", first)
    qemu_write(ours, "vhdx", second)
    engine_write(theirs, second)
    want = expected(size, [*first, *second])
    for image in (ours, theirs):
        assert qemu.check(image, "vhdx").returncode == 0
        assert engine_read(image) == want
        assert qemu.to_raw(image, "vhdx", tmp_path / "x.raw") == want


def test_guids_use_the_windows_layout(tmp_path):
    """qemu-img's region and metadata GUIDs decode with the little-endian GUID layout
    to the MS-VHDX values; its page 83 item is read as our UUID."""
    image = tmp_path / "q.vhdx"
    qemu.qemu_img("create", "-f", "vhdx", image, str(4 * MiB))
    assert set(h.regions(image)) == {"BAT", "metadata"}
    assert [g for g, *_ in h.metadata_table(image)] == [
        vm.FILE_PARAMETERS, vm.VIRTUAL_DISK_SIZE, vm.PAGE83_DATA, vm.LOGICAL_SECTOR_SIZE,
        vm.PHYSICAL_SECTOR_SIZE]
    page83 = h.metadata_item(image, vm.PAGE83_DATA)
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk[0].uuid == uuid.UUID(bytes_le=page83)
        assert disk[0].modification_uuid == h.current_header(image).data_write_guid


def test_interleaved_bat_written_by_qemu(tmp_path):
    """256 MiB blocks have a chunk ratio of 16: qemu puts block 18 at BAT entry 19."""
    image = tmp_path / "big.vhdx"
    qemu.qemu_img("create", "-f", "vhdx", "-o", "block_size=256M", image, str(5 << 30))
    qemu.qemu_io(image, "vhdx", "write -P 0x11 4608M 1M", "write -P 0x22 0 512")
    assert h.bat(image, 21)[19] & 7 == 6
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(4608 * MiB - 512, 1024) == bytes(512) + b"\x11" * 512
        assert disk.read(0, 1024) == b"\x22" * 512 + bytes(512)
        assert disk.read(4609 * MiB - 4, 8) == b"\x11" * 4 + bytes(4)


def test_a_dirty_log_left_by_qemu_is_replayed(tmp_path):
    """qemu writes every BAT update through the log and leaves the entry behind.
    Undoing the BAT update and marking the log live again gives the image a crash
    (or Hyper-V) would leave: the data is only reachable through the log."""
    image = tmp_path / "q.vhdx"
    qemu.qemu_img("create", "-f", "vhdx", image, str(16 * MiB))
    qemu.qemu_io(image, "vhdx", "write -P 0x5a 8M 64k")
    raw = image.read_bytes()
    entry = vh.parse_header(raw[MiB:MiB + 4096], 0)
    assert entry is None and raw[MiB:MiB + 4] == b"loge"  # an entry, not a header
    log_guid = uuid.UUID(bytes_le=raw[MiB + 32:MiB + 48])
    bat_before = h.bat(image, 2)
    assert bat_before[1] & 7 == 6
    h.set_bat(image, 1, 2)  # back to ZERO, as before the write
    current = h.current_header(image)
    h.write_header(image, current.successor(log_guid=log_guid))
    before = digest(image)
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(8 * MiB, 64 * 1024) == b"\x5a" * 65536
        assert "applied in memory" in dict(disk[0].describe())["log"]
    assert digest(image) == before
    assert "needs to be replayed" in qemu.check(image, "vhdx").stderr
    with open_chain(image) as disk:
        assert disk.read(8 * MiB, 64 * 1024) == b"\x5a" * 65536
    assert h.current_header(image).log_guid == uuid.UUID(int=0)
    assert h.bat(image, 2) == bat_before
    assert qemu.check(image, "vhdx").returncode == 0
    assert qemu.to_raw(image, "vhdx", tmp_path / "q.raw")[8 * MiB:8 * MiB + 65536] == \
        b"\x5a" * 65536


def test_qemu_replays_a_log_we_left_pending(tmp_path, pending_log_image):
    """Our own log entries follow the specification closely enough for qemu's parser."""
    image, want = pending_log_image(tmp_path)
    assert h.current_header(image).log_guid != uuid.UUID(int=0)
    result = qemu.qemu_img("check", "-r", "all", "-f", "vhdx", image, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert qemu.to_raw(image, "vhdx", tmp_path / "x.raw") == want
    assert h.current_header(image).log_guid == uuid.UUID(int=0)


def test_qemu_info_reports_our_block_size(tmp_path):
    image = tmp_path / "a.vhdx"
    h.create(image, 3 * MiB, block_size="2M")
    assert qemu.info(image)["cluster-size"] == 2 * MiB
    assert struct.unpack("<II", h.metadata_item(image, vm.FILE_PARAMETERS)) == (2 * MiB, 0)


def test_after_our_replay_qemu_check_is_clean(tmp_path, pending_log_image):
    image, want = pending_log_image(tmp_path)
    with open_chain(image):
        pass
    assert h.current_header(image).log_guid == uuid.UUID(int=0)
    result = qemu.check(image, "vhdx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert qemu.to_raw(image, "vhdx", tmp_path / "x.raw") == want
