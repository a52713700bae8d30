"""The shared block-map machinery: cached second-level tables and what is derived
from them, sector-wise table write-back, runs of equal values."""

from __future__ import annotations

import numpy as np
import pytest

from vdgui.engine import blockmap
from vdgui.engine.blockmap import FlatTable, TableCache, runs_of
from vdgui.engine.io import MemoryProvider

ENTRIES = 256  # of 4 bytes: two sectors per table


@pytest.fixture
def storage():
    provider = MemoryProvider()
    provider.put("/t.bin", np.arange(4 * ENTRIES, dtype="<u4").tobytes())
    with provider.open("/t.bin", writable=True) as opened:
        yield opened


def counting_cache(storage) -> tuple[TableCache, list[int]]:
    """A cache whose decode counts its calls and returns the table's sum."""
    calls: list[int] = []

    def decode(table: np.ndarray) -> int:
        calls.append(1)
        return int(table.sum())

    return TableCache(storage, ENTRIES, "<u4", capacity=2, decode=decode), calls


def test_tables_are_read_only_until_asked_for_to_change(storage):
    cache, _ = counting_cache(storage)
    with pytest.raises(ValueError):
        cache.get(0)[0] = 1
    cache.modify(0)[0] = 7
    assert cache.get(0)[0] == 7


def test_what_is_derived_is_computed_once_per_content(storage):
    cache, calls = counting_cache(storage)
    first = sum(range(ENTRIES))
    assert cache.decoded(0) == cache.decoded(0) == first and len(calls) == 1
    cache.modify(0)[1] += 10
    assert cache.decoded(0) == first + 10 and len(calls) == 2
    cache.persist(0, 1, 1)
    assert cache.decoded(0) == first + 10 and len(calls) == 3  # persisting drops it too
    cache.drop_decoded()
    cache.decoded(0)
    assert len(calls) == 4
    cache.new(1024, fill=2)
    assert cache.decoded(1024) == 2 * ENTRIES


def test_what_is_derived_leaves_with_its_table(storage):
    cache, calls = counting_cache(storage)
    cache.decoded(0)
    cache.decoded(1024)
    cache.decoded(0)  # the most recently used: it stays when the next table comes in
    cache.get(2048)
    assert len(calls) == 2
    cache.decoded(0)
    assert len(calls) == 2
    cache.decoded(1024)  # evicted with its table: derived again
    assert len(calls) == 3
    cache.forget(1024)
    cache.decoded(1024)
    assert len(calls) == 4


def test_changed_entries_are_written_one_sector_each(storage):
    writes: list[tuple[int, int]] = []
    write_at = storage.write_at
    storage.write_at = lambda offset, data: (writes.append((offset, len(data))),
                                             write_at(offset, data))
    table = FlatTable(storage, 0, 3 * 128 + 5, "<u4")
    indices = np.array([3, 127, 0, 300, 385])
    table.entries[indices] = 99
    table.persist_entries(indices)
    assert writes == [(0, 512), (1024, 512), (1536, 20)]
    assert np.frombuffer(storage.read_at(0, 4 * 389), "<u4")[indices].tolist() == [99] * 5


def test_runs_of_booleans_and_of_small_integers():
    assert list(runs_of(np.array([True, True, False]))) == [(0, 2, True), (2, 1, False)]
    assert list(runs_of(np.array([0, 2, 2, 1], dtype=np.uint8))) == [
        (0, 1, 0), (1, 2, 2), (3, 1, 1)]
    assert list(runs_of(np.array([], dtype=bool))) == []


def test_shared_zero_blocks_stay_bounded_whatever_lengths_are_asked() -> None:
    for length in range(1, 5000, 7):
        assert blockmap.zeros(length) == bytes(length)
    assert blockmap.zeros(4096) is blockmap.zeros(4096)  # common sizes are shared
    assert len(blockmap._ZERO_CACHE) <= 25  # powers of two up to 16 MiB only
