"""The storage layer: positional I/O, locks, and crash-safe transactions."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from vdgui.engine import errors
from vdgui.engine.io import FaultyProvider, Fault, FileProvider, MemoryProvider, buffer
from vdgui.engine.io.faulty import SimulatedCrash
from vdgui.engine.io.journal import journal_path

OLD = b"A" * 4096
WRITES = [(0, b"header!!"), (1000, b"x" * 600), (4090, b"tail-grows"), (2048, b"mid")]


def expected_new() -> bytes:
    data = bytearray(OLD)
    for offset, chunk in WRITES:
        if len(data) < offset + len(chunk):
            data.extend(bytes(offset + len(chunk) - len(data)))
        data[offset:offset + len(chunk)] = chunk
    return bytes(data)


@pytest.fixture(params=["file", "memory"])
def provider_and_path(request, tmp_path):
    if request.param == "file":
        path = str(tmp_path / "img.bin")
        with open(path, "wb") as f:
            f.write(OLD)
        return FileProvider(), path
    provider = MemoryProvider()
    provider.put("/img.bin", OLD)
    return provider, "/img.bin"


def read_all(provider, path) -> bytes:
    with provider.open(path) as storage:
        return storage.read_at(0, storage.size())


def test_transaction_applies_everything_and_reads_its_own_writes(provider_and_path):
    provider, path = provider_and_path
    with provider.open(path, writable=True) as storage:
        with storage.transaction():
            for offset, chunk in WRITES:
                storage.write_at(offset, chunk)
            assert storage.read_at(1000, 4) == b"xxxx"
            assert storage.size() == 4100
        assert not provider.exists(journal_path(path))
    assert read_all(provider, path) == expected_new()


def test_an_exception_inside_a_transaction_discards_it(provider_and_path):
    provider, path = provider_and_path
    with provider.open(path, writable=True) as storage:
        with pytest.raises(RuntimeError):
            with storage.transaction():
                storage.write_at(0, b"zzz")
                raise RuntimeError("abandon")
    assert read_all(provider, path) == OLD


def test_a_crash_at_any_write_leaves_old_or_new_content(provider_and_path):
    provider, path = provider_and_path
    outcomes = set()
    for budget in range(0, 12):
        if isinstance(provider, MemoryProvider):
            provider.put(path, OLD)
        else:
            with open(path, "wb") as f:
                f.write(OLD)
        faulty = FaultyProvider(provider, Fault(after_writes=budget))
        storage = faulty.open(path, writable=True)
        try:
            with storage.transaction():
                for offset, chunk in WRITES:
                    storage.write_at(offset, chunk)
            crashed = False
        except SimulatedCrash:
            crashed = True
        finally:
            storage.close()
        # A read-only look changes nothing but already shows the outcome...
        shown = read_all(provider, path)
        assert shown in (OLD, expected_new())
        # ...and the next read/write open completes it.
        with provider.open(path, writable=True):
            pass
        final = read_all(provider, path)
        assert final == shown
        assert not provider.exists(journal_path(path))
        outcomes.add((crashed, final == expected_new()))
    assert outcomes == {(True, False), (True, True), (False, True)}


def test_read_only_open_never_writes_a_pending_journal(tmp_path):
    path = str(tmp_path / "img.bin")
    with open(path, "wb") as f:
        f.write(OLD)
    faulty = FaultyProvider(FileProvider(), Fault(after_writes=2))  # create + journal, then crash
    storage = faulty.open(path, writable=True)
    with pytest.raises(SimulatedCrash):
        with storage.transaction():
            storage.write_at(0, b"NEW")
    storage.close()
    before = open(path, "rb").read()
    mtime = os.stat(path).st_mtime_ns
    assert read_all(FileProvider(), path)[:3] == b"NEW"
    assert open(path, "rb").read() == before and os.stat(path).st_mtime_ns == mtime
    assert os.path.exists(journal_path(path))


def test_write_lock_is_exclusive_unless_shareable(tmp_path):
    path = str(tmp_path / "img.bin")
    open(path, "wb").close()
    provider = FileProvider()
    with provider.open(path, writable=True):
        with pytest.raises(errors.ImageInUse, match="in use"):
            provider.open(path, writable=True)
        provider.open(path).close()  # readers are welcome
    with provider.open(path, writable=True, shareable=True):
        provider.open(path, writable=True, shareable=True).close()


def test_reading_past_the_end_is_a_clear_error(tmp_path):
    path = str(tmp_path / "short.bin")
    with open(path, "wb") as f:
        f.write(b"abc")
    with FileProvider().open(path) as storage:
        with pytest.raises(errors.Corrupted, match="truncated: the header"):
            storage.read_exact(0, 10, "the header")
        with pytest.raises(errors.ReadOnly):
            storage.write_at(0, b"x")


PATTERN = bytes(range(256)) * 16  # 4 KiB with no two equal sectors


def test_copy_within_a_file_and_between_files(provider_and_path):
    provider, path = provider_and_path
    other = path.replace("img.bin", "other.bin")
    with provider.open(path, writable=True) as storage:
        storage.write_at(0, PATTERN)
        storage.copy_to(512, 1024, storage, 8192)  # within the file, past its end
        with provider.open(other, create=True) as target:
            storage.copy_to(0, 4096, target, 100)
            assert target.read_at(0, 4196) == bytes(100) + PATTERN
    assert read_all(provider, path) == PATTERN + bytes(4096) + PATTERN[512:1536]


def test_copying_beyond_the_end_pads_with_zeros_or_refuses(provider_and_path):
    provider, path = provider_and_path
    with provider.open(path, writable=True) as storage:
        storage.copy_to(4000, 200, storage, 8000)  # 96 bytes exist, the rest is zeros
        assert storage.read_at(8000, 200) == OLD[4000:] + bytes(104)
        with pytest.raises(errors.Corrupted, match="truncated: a block at offset 8100"):
            storage.copy_to(8100, 200, storage, 9000, "a block")
        assert storage.size() == 8200  # refused before anything was written


def test_overlapping_copies_move_data_down(provider_and_path):
    provider, path = provider_and_path
    with provider.open(path, writable=True) as storage:
        storage.write_at(0, PATTERN)
        storage.copy_to(1024, 3072, storage, 512)
    assert read_all(provider, path) == PATTERN[:512] + PATTERN[1024:] + PATTERN[3584:]


def test_copies_inside_a_transaction_are_journalled(provider_and_path):
    provider, path = provider_and_path
    with provider.open(path, writable=True) as storage:
        storage.write_at(0, PATTERN)
        with pytest.raises(RuntimeError):
            with storage.transaction():
                storage.copy_to(0, 1024, storage, 2048)
                assert storage.read_at(2048, 1024) == PATTERN[:1024]  # seen inside
                raise RuntimeError("abandon the transaction")
    assert read_all(provider, path) == PATTERN  # and dropped with it


def test_copying_into_a_read_only_file_is_refused(tmp_path):
    path = str(tmp_path / "img.bin")
    with open(path, "wb") as f:
        f.write(OLD)
    with FileProvider().open(path) as storage:
        with pytest.raises(errors.ReadOnly):
            storage.copy_to(0, 10, storage, 100)


def test_large_io_buffers_start_on_a_page():
    for length in (0, 1, 4096, 1 << 20, 3 << 20):
        view = buffer(length)
        assert len(view) == length and not view.readonly and not any(view[:64])
        if length >= 1 << 20:
            assert np.frombuffer(view, np.uint8).ctypes.data % mmap.PAGESIZE == 0
