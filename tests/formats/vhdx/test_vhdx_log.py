"""The VHDX log: crash consistency of our writes, replay of pending entries."""

from __future__ import annotations

import shutil
import uuid

import pytest

from vdgui.engine import Disk, OpenFlags, errors, open_chain
from vdgui.engine.formats.vhdx import headers as vh
from vdgui.engine.formats.vhdx import log as vl
from vdgui.engine.io import default_provider
from vdgui.engine.io.faulty import Fault, FaultyProvider, SimulatedCrash

from tests.formats.clustered import digest, engine_read, engine_write, expected, poke
from tests.formats.vhdx import conftest as crash
from tests.formats.vhdx import helpers as h

MiB = 1 << 20
NIL = uuid.UUID(int=0)


def test_every_crash_point_leaves_old_or_new_data(tmp_path):
    old = expected(crash.SIZE, crash.FIRST)
    new = expected(crash.SIZE, [*crash.FIRST, *crash.SECOND])
    pending = 0
    for n, image in crash.crash_points(tmp_path):
        before = digest(image)
        seen = engine_read(image)
        assert seen in (old, new), f"crash point {n}"
        assert digest(image) == before, "a read-only open wrote"
        if h.current_header(image).log_guid != NIL and h.bat(image, 4)[3] == 0 and seen == new:
            pending += 1
        with open_chain(image):  # read/write: replays whatever is pending
            pass
        assert engine_read(image) == seen
        assert h.current_header(image).log_guid == NIL
    assert pending, "no crash point fell between the log write and its application"


def test_pending_entry_read_only_then_replayed(tmp_path, pending_log_image):
    image, want = pending_log_image(tmp_path)
    before = digest(image)
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk.read(0, disk.size) == want
        status = disk.block_status(3 * MiB, MiB)
        assert status[1].name == "DATA"
    assert digest(image) == before
    with Disk() as disk:  # read-only first, then switched to read/write
        disk.open(image, flags=OpenFlags.READONLY)
        disk.set_open_flags(0, OpenFlags.NORMAL)
        assert dict(disk[0].describe())["log"].endswith("replayed into the file at open")
        disk.write(7 * MiB, b"\x01")
    assert h.current_header(image).log_guid == NIL
    assert h.bat(image, 4)[3] & 7 == 6
    assert engine_read(image)[:7 * MiB] == want[:7 * MiB]


def test_the_log_wraps_around(tmp_path):
    """1 MiB log, 8 KiB entries: 200 metadata updates go round the buffer; a crash
    after the last entry is written but before it is applied is still replayed."""
    image = tmp_path / "a.vhdx"
    h.create(image, 4 * MiB)
    ids = [uuid.uuid4() for _ in range(200)]
    disks = []

    def update(io) -> Disk:
        disk = Disk(io=io)
        disks.append(disk)
        disk.open(image)
        for value in ids:
            disk.set_uuid(0, value)
        return disk

    shutil.copyfile(image, tmp_path / "clean.vhdx")
    counter = FaultyProvider(default_provider(), Fault(1 << 30, path_contains="a.vhdx"))
    disk = update(counter)
    assert disk.image(0)._log.position < 200 * 8192
    writes = counter.writes
    disk.close_all()
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk[0].uuid == ids[-1]
    shutil.copyfile(tmp_path / "clean.vhdx", image)
    faulty = FaultyProvider(default_provider(), Fault(writes - 1, path_contains="a.vhdx"))
    with pytest.raises(SimulatedCrash):
        update(faulty)
    disks[-1].image(0).storage.close()  # a dead process releases its files
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert disk[0].uuid == ids[-1]


def _entry(sequence: int, tail: int, log_guid: uuid.UUID,
           operations: list[tuple[str, int, bytes | int]], file_size: int) -> bytes:
    """A log entry built by hand from the specification's layouts."""
    descriptors, sectors = b"", b""
    for kind, offset, value in operations:
        if kind == "data":
            descriptors += vl.DATA_DESC.pack(dict(
                signature=b"desc", trailing=int.from_bytes(value[-4:], "little"),
                leading=int.from_bytes(value[:8], "little"), file_offset=offset,
                sequence=sequence))
            sectors += vl.DATA_SECTOR.pack(dict(
                signature=b"data", sequence_high=sequence >> 32, data=value[8:-4],
                sequence_low=sequence & 0xFFFFFFFF))
        else:
            descriptors += vl.ZERO_DESC.pack(dict(
                signature=b"zero", reserved=0, zero_length=value, file_offset=offset,
                sequence=sequence))
    area = -(-(64 + len(descriptors)) // 4096) * 4096
    head = vl.ENTRY_HEADER.pack(dict(
        signature=b"loge", checksum=0, entry_length=area + len(sectors), tail=tail,
        sequence=sequence, descriptor_count=len(operations), reserved=0,
        log_guid=log_guid.bytes_le, flushed_file_offset=file_size,
        last_file_offset=file_size))
    return vh.with_checksum((head + descriptors).ljust(area, b"\0") + sectors)


def _write_log(image, log_guid: uuid.UUID, pieces: list[tuple[int, bytes]]) -> None:
    """Put entries into the circular log (wrapping at its end) and mark it live."""
    header = h.current_header(image)
    for position, entry in pieces:
        first = entry[:header.log_length - position]
        poke(image, header.log_offset + position, first)
        if len(first) < len(entry):
            poke(image, header.log_offset, entry[len(first):])
    h.write_header(image, header.successor(log_guid=log_guid))


def test_a_handmade_log_sequence_is_replayed(tmp_path):
    """A sequence that wraps round the buffer, with data and zero descriptors; a
    newer entry with a bad checksum and one of another log are ignored."""
    image = tmp_path / "a.vhdx"
    h.create(image, 4 * MiB, block_size="1M")
    engine_write(image, [(2 * MiB, MiB, 0x33)])
    block = h.bat(image, 3)[2] & ~0xFFFFF
    size = image.stat().st_size
    guid = uuid.uuid4()
    end = MiB - 4096
    first = _entry(5, end, guid, [("data", block, b"\xaa" * 4096)], size)
    second = _entry(6, end, guid, [("zero", block + 4096, 8192),
                                   ("data", block + 3 * 4096, b"\xbb" * 4096)], size)
    broken = bytearray(_entry(7, end, guid, [("data", block, b"\xcc" * 4096)], size))
    broken[100] ^= 1
    stranger = _entry(99, 64 * 1024, uuid.uuid4(), [("data", block, b"\xdd" * 4096)], size)
    _write_log(image, guid, [(end, first), (4096, second), (12288, bytes(broken)),
                             (64 * 1024, stranger)])
    want = bytearray(expected(4 * MiB, [(2 * MiB, MiB, 0x33)]))
    want[2 * MiB:2 * MiB + 4096] = b"\xaa" * 4096
    want[2 * MiB + 4096:2 * MiB + 12288] = bytes(8192)
    want[2 * MiB + 12288:2 * MiB + 16384] = b"\xbb" * 4096
    before = digest(image)
    assert engine_read(image) == want
    assert digest(image) == before
    with open_chain(image) as disk:
        assert disk.read(0, disk.size) == want
    assert h.current_header(image).log_guid == NIL
    assert engine_read(image) == want


def test_a_live_log_without_valid_entries_is_ignored(tmp_path):
    image = tmp_path / "a.vhdx"
    h.create(image, 4 * MiB)
    engine_write(image, [(0, 512, 0x44)])
    h.write_header(image, h.current_header(image).successor(log_guid=uuid.uuid4()))
    poke(image, MiB, b"loge" + bytes(60))
    assert engine_read(image)[:512] == b"\x44" * 512
    engine_write(image, [(512, 512, 0x45)])
    assert engine_read(image)[:1024] == b"\x44" * 512 + b"\x45" * 512
    assert h.current_header(image).log_guid == NIL


def test_a_log_that_says_the_file_was_longer_is_refused(tmp_path):
    image = tmp_path / "a.vhdx"
    h.create(image, 4 * MiB)
    guid = uuid.uuid4()
    entry = _entry(1, 0, guid, [("data", 3 * MiB, bytes(4096))], 64 * MiB)
    _write_log(image, guid, [(0, entry)])
    with pytest.raises(errors.Corrupted, match="truncated"):
        open_chain(image, OpenFlags.READONLY)
