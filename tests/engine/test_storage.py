"""The storage layer: positional I/O, locks, and crash-safe transactions."""

from __future__ import annotations

import os

import pytest

from vdgui.engine import errors
from vdgui.engine.io import FaultyProvider, Fault, FileProvider, MemoryProvider
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
