"""A VCI cache attached to a disk (``VDCreateCache``/``VDCacheOpen``): reads are
served from it, writes and discards never leave it stale, pairing by modification
UUID, and a random model check against a bytearray."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdgui.engine import Disk, OpenFlags, errors, open_chain
from vdgui.engine.formats.vci import VciCache
from vdgui.engine.io import MemoryProvider
from vdgui.engine.io.faulty import Fault, FaultyProvider, SimulatedCrash
from vdgui.engine.ops.discard import discard

from .helpers import KiB, MiB, header, pattern

SIZE = 8 * MiB


def make_disk(folder: Path, io=None) -> tuple[Disk, bytes]:
    """A base VDI and a differencing VDI over it, with data in both."""
    disk = Disk(io=io)
    disk.create_base(folder / "base.vdi", SIZE, config={"AllocationBlockSize": str(256 * KiB)})
    content = bytearray(pattern(1, SIZE))
    disk.write(0, content)
    disk.create_diff(folder / "diff.vdi", "VDI")
    top = pattern(2, 3 * MiB)
    disk.write(2 * MiB + 100, top)
    content[2 * MiB + 100:5 * MiB + 100] = top
    return disk, bytes(content)


def count_chain_reads(disk: Disk, monkeypatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = disk.read_chain

    def counting(offset, buf, top, bottom=0):
        calls.append((offset, len(buf)))
        return real(offset, buf, top, bottom)

    monkeypatch.setattr(disk, "read_chain", counting)
    return calls


def test_reads_fill_the_cache_and_later_reads_come_from_it(tmp_path, monkeypatch):
    disk, content = make_disk(tmp_path)
    disk.create_cache(tmp_path / "c.vci", 16 * MiB)
    assert isinstance(disk.cache, VciCache)
    assert disk.cache.modification_uuid == disk[-1].modification_uuid
    calls = count_chain_reads(disk, monkeypatch)
    assert disk.read(0, SIZE) == content
    assert calls == [(0, SIZE)]
    calls.clear()
    assert disk.read(0, SIZE) == content
    assert disk.read(12345, 777) == content[12345:13122]
    assert calls == []
    disk.close_all()

    # Reopened and paired again, the cache serves reads with no chain read at all.
    disk = open_chain(tmp_path / "diff.vdi")
    disk.open_cache(tmp_path / "c.vci")
    calls = count_chain_reads(disk, monkeypatch)
    assert disk.read(0, SIZE) == content
    assert calls == []
    disk.close_all()


def test_writes_through_the_disk_never_leave_the_cache_stale(tmp_path):
    disk, content = make_disk(tmp_path)
    model = bytearray(content)
    disk.create_cache(tmp_path / "c.vci", 16 * MiB)
    disk.read(0, SIZE)
    for offset, length, seed in ((0, 4096, 3), (1000, 3000, 4), (MiB - 1, 2, 5),
                                 (3 * MiB + 17, 700 * KiB, 6), (SIZE - 512, 512, 7)):
        data = pattern(seed, length)
        disk.write(offset, data)
        model[offset:offset + length] = data
        lo, hi = max(0, offset - 4096), min(SIZE, offset + length + 4096)
        assert disk.read(lo, hi - lo) == model[lo:hi]
    assert disk.read(0, SIZE) == model
    disk.close_all()
    disk = open_chain(tmp_path / "diff.vdi")
    disk.open_cache(tmp_path / "c.vci")  # still paired: the cache followed each change
    assert disk.read(0, SIZE) == model
    disk.close_all()


def test_discard_is_passed_on_to_the_cache(tmp_path):
    disk = Disk()
    disk.create_base(tmp_path / "base.vdi", 4 * MiB, open_flags=OpenFlags.DISCARD)
    disk.write(0, pattern(8, 4 * MiB))
    disk.create_cache(tmp_path / "c.vci", 8 * MiB)
    disk.read(0, 4 * MiB)
    discard(disk, [(MiB, MiB)])
    assert disk.read(MiB, MiB) == bytes(MiB)
    disk.close_all()


def test_a_cache_made_for_other_content_is_refused(tmp_path):
    disk, _ = make_disk(tmp_path)
    disk.create_cache(tmp_path / "c.vci", 4 * MiB)
    disk.read(0, MiB)
    disk.close_all()
    disk = open_chain(tmp_path / "diff.vdi")
    disk.write(0, b"changed while the cache was not attached")
    disk.close_all()
    disk = open_chain(tmp_path / "diff.vdi")
    with pytest.raises(errors.CacheNotUpToDate):
        disk.open_cache(tmp_path / "c.vci")
    assert disk.cache is None
    disk.close_all()


def test_one_cache_per_disk_and_closing_with_delete(tmp_path):
    disk, _ = make_disk(tmp_path)
    disk.create_cache(tmp_path / "c.vci", 4 * MiB)
    with pytest.raises(errors.CacheAlreadyExists):
        disk.create_cache(tmp_path / "d.vci", 4 * MiB)
    with pytest.raises(errors.CacheAlreadyExists):
        disk.open_cache(tmp_path / "c.vci")
    assert not (tmp_path / "d.vci").exists()
    disk.close_cache(delete=True)
    assert not (tmp_path / "c.vci").exists()
    with pytest.raises(errors.CacheNotFound):
        disk.close_cache()
    disk.close_all()


def test_a_small_cache_evicts_and_stays_correct(tmp_path, monkeypatch):
    disk, content = make_disk(tmp_path)
    disk.create_cache(tmp_path / "c.vci", 2 * MiB)
    for offset in (0, 6 * MiB, MiB, 5 * MiB, 0):
        assert disk.read(offset, 2 * MiB) == content[offset:offset + 2 * MiB]
    assert disk.read(0, SIZE) == content
    cache = disk.cache
    assert cache._map.counts["data"] > MiB // 512
    calls = count_chain_reads(disk, monkeypatch)
    assert disk.read(SIZE - MiB, MiB) == content[SIZE - MiB:]  # the most recent stays
    assert calls == []
    disk.close_all()
    size = (tmp_path / "c.vci").stat().st_size
    assert size <= 2 * MiB
    assert header((tmp_path / "c.vci").read_bytes())["unclean"] == 0


def test_hostile_cache_file_is_refused_and_the_disk_still_reads(tmp_path):
    disk, content = make_disk(tmp_path)
    bad = tmp_path / "bad.vci"
    bad.write_bytes(b"VCI\0" + (1).to_bytes(4, "little") + bytes(2000))
    with pytest.raises(errors.Corrupted):
        disk.open_cache(bad)
    (tmp_path / "other.vci").write_bytes(bytes(4096))
    with pytest.raises(errors.NotSupported):  # no cache format recognises it
        disk.open_cache(tmp_path / "other.vci")
    assert disk.cache is None
    assert disk.read(0, SIZE) == content
    disk.close_all()


def test_a_crash_at_any_write_never_makes_the_cache_return_wrong_data():
    """Crash after every possible number of writes of a session that opens a
    filled cache, writes through the disk and closes; then reopen both and compare
    cached reads with the chain itself."""
    base_io = MemoryProvider()
    disk, content = make_disk(Path("/d"), base_io)
    disk.create_cache("/d/c.vci", 4 * MiB)
    disk.read(0, 3 * MiB)
    disk.close_all()
    snapshot = {path: base_io.get(path) for path in base_io.files}
    crash_at = 0
    while True:
        io = MemoryProvider()
        for path, data in snapshot.items():
            io.put(path, data)
        faulty = FaultyProvider(io, Fault(crash_at, "crash"))
        try:
            session = open_chain("/d/diff.vdi", io=faulty)
            session.open_cache("/d/c.vci")
            session.write(MiB - 100, pattern(20, 300 * KiB))
            session.read(0, 2 * MiB)
            session.write(2 * MiB + 512, pattern(21, 64 * KiB))
            session.flush()
            session.write(100 * KiB, pattern(22, 1000))
            session.close_all()
            finished = True
        except SimulatedCrash:
            finished = False
        after = MemoryProvider()  # what the disk holds after the crash
        for path in io.files:
            after.put(path, io.get(path))
        with open_chain("/d/diff.vdi", OpenFlags.READONLY, io=after) as truth:
            expected = truth.read(0, SIZE)
        check = open_chain("/d/diff.vdi", io=after)
        try:
            check.open_cache("/d/c.vci")
        except errors.CacheNotUpToDate:
            pass
        assert check.read(0, SIZE) == expected, f"crash after {crash_at} writes"
        check.close_all()
        if finished:
            break
        crash_at += 1
    assert crash_at > 5


def op_strategy():
    offset = st.integers(0, SIZE - 1)
    length = st.one_of(st.integers(1, 8 * KiB), st.integers(1, 2 * MiB))
    return st.lists(st.one_of(
        st.tuples(st.just("read"), offset, length),
        st.tuples(st.just("read"), offset, length),
        st.tuples(st.just("write"), offset, length, st.integers(0, 255)),
        st.tuples(st.just("discard"), offset, length),
        st.tuples(st.just("reopen"))), min_size=5, max_size=30)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([2, 4]), op_strategy())
def test_random_reads_writes_and_discards_match_a_bytearray(cache_mib, ops):
    io = MemoryProvider()
    disk = Disk(io=io)
    disk.create_base("/m/base.vdi", SIZE, open_flags=OpenFlags.DISCARD,
                     config={"AllocationBlockSize": str(64 * KiB)})
    disk.create_cache("/m/c.vci", cache_mib * MiB)
    model = bytearray(SIZE)
    try:
        for op in ops:
            if op[0] == "read":
                _, offset, length = op
                length = min(length, SIZE - offset)
                assert disk.read(offset, length) == model[offset:offset + length]
            elif op[0] == "write":
                _, offset, length, seed = op
                length = min(length, SIZE - offset)
                data = pattern(seed, length)
                disk.write(offset, data)
                model[offset:offset + length] = data
            elif op[0] == "discard":
                _, offset, length = op
                length = min(length, SIZE - offset)
                discard(disk, [(offset, length)])
                model[offset:offset + length] = bytes(length)
            else:
                disk.close_all()
                disk = open_chain("/m/base.vdi", OpenFlags.DISCARD, io=io)
                disk.open_cache("/m/c.vci")
        assert disk.read(0, SIZE) == model
    finally:
        disk.close_all()
