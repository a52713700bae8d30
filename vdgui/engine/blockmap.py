"""Shared machinery for formats that map fixed-size virtual blocks to file offsets.

Most dynamic formats are "a header plus a table from virtual block to file offset,
with markers for free and zero blocks".  A format describes its table through one
vectorised function, ``lookup(first, count) -> (states, offsets)``, and
:class:`BlockMap` answers the generic questions with it: what a range holds
(:meth:`BlockMap.block_status`), reading and writing allocated ranges with one I/O
per physically contiguous run.  :class:`FlatTable` keeps a one-level table in
memory and writes back the sectors that changed; :func:`unit_runs` splits data to
be allocated into runs of all-zero and non-zero blocks.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .errors import Corrupted, InvalidState, NotSupported
from .io import Storage
from .types import SECTOR, Status

# Block states as small integers, so that tables can be classified with numpy.
FREE = 0
ZERO = 1
DATA = 2
ALLOCATED_ZERO = 3

STATUS_OF_STATE = (Status.FREE, Status.ZERO, Status.DATA, Status.ALLOCATED_ZERO)

#: Blocks examined per lookup: bounds memory and time per call, whatever the disk size.
LOOKAHEAD = 1 << 16

#: Refuse block tables larger than this in memory (a 256 TiB disk in 1 MiB blocks).
MAX_TABLE_BYTES = 1 << 30

Lookup = Callable[[int, int], "tuple[np.ndarray, np.ndarray]"]

#: Shared zero blocks by length: powers of two only (block and sector sizes), so that
#: the cache stays bounded (under 32 MiB) whatever lengths hostile images ask for.
_ZERO_CACHE: dict[int, bytes] = {}


def zeros(length: int) -> bytes:
    """An all-zero ``bytes`` of ``length`` (for comparisons and fills), shared when
    ``length`` is a power of two up to 16 MiB."""
    block = _ZERO_CACHE.get(length)
    if block is None:
        block = bytes(length)
        if length <= 16 << 20 and length & (length - 1) == 0:
            _ZERO_CACHE[length] = block
    return block


def _unit_matrix(data: bytes | bytearray | memoryview, unit: int) -> np.ndarray:
    """``data`` (whole units) as a 2-D array, one row per unit, in the widest word."""
    raw = np.frombuffer(data, dtype=np.uint8)
    count = len(raw) // unit
    word = np.uint64 if unit % 8 == 0 else np.uint8
    return raw[:count * unit].view(word).reshape(count, -1)


def zero_units(data: bytes | bytearray | memoryview, unit: int) -> np.ndarray:
    """Boolean per whole unit of ``data``: True where every byte is zero."""
    return ~_unit_matrix(data, unit).any(axis=1)


def changed_units(new: bytes | bytearray | memoryview, old: bytes | bytearray | memoryview,
                  unit: int) -> np.ndarray:
    """Boolean per whole unit: True where ``new`` differs from ``old``."""
    return (_unit_matrix(new, unit) != _unit_matrix(old, unit)).any(axis=1)


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True when every byte is zero."""
    if isinstance(data, memoryview) and len(data) >= 64 and data[:64].tobytes() != zeros(64):
        return False  # the common case for real data, decided without a copy
    raw = np.frombuffer(data, dtype=np.uint8)
    if len(raw) % 8 == 0:
        raw = raw.view(np.uint64)  # eight bytes per step
    return not raw.any()


def frozen(array: np.ndarray) -> np.ndarray:
    """``array``, made read-only: a shared result no caller may change."""
    array.flags.writeable = False
    return array


def runs_of(flags: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """``(first index, count, value)`` for each run of equal values in an array
    (values come back as Python bools for a boolean array, ints otherwise)."""
    if not len(flags):
        return
    bounds = np.flatnonzero(flags[1:] != flags[:-1]) + 1
    starts = [0, *bounds.tolist()]
    ends = [*bounds.tolist(), len(flags)]
    for start, end in zip(starts, ends):
        yield start, end - start, flags[start].item()


def fill_zero(buf: memoryview, start: int, end: int) -> None:
    """Zero ``buf[start:end]``."""
    step = 1 << 20
    for pos in range(start, end, step):
        n = min(step, end - pos)
        buf[pos:pos + n] = zeros(n)


def run_length(values: np.ndarray, start: int = 0) -> int:
    """Length of the run of values equal to ``values[start]`` beginning at ``start``."""
    rest = values[start:]
    breaks = np.flatnonzero(rest != rest[0])
    return int(breaks[0]) if breaks.size else len(rest)


def unit_runs(data: memoryview, unit: int, detect_zero: bool) -> Iterator[tuple[int, int, bool]]:
    """Split whole units of ``data`` into runs ``(first unit, count, all zero)``.

    With ``detect_zero`` false every run is reported non-zero.
    """
    count = len(data) // unit
    if not detect_zero:
        if count:
            yield 0, count, False
        return
    yield from runs_of(zero_units(data, unit))


class BlockMap:
    """Generic reads, writes and status queries over a block table.

    ``lookup(first, count)`` returns two arrays of ``count`` entries: the state of
    each block (:data:`FREE`, :data:`ZERO`, :data:`DATA`, :data:`ALLOCATED_ZERO`)
    and, for allocated blocks, the file offset of its first byte.
    """

    def __init__(self, storage: Storage, block_size: int, size: int, lookup: Lookup) -> None:
        self.storage = storage
        self.block_size = block_size
        self.size = size
        self.lookup = lookup

    def _window(self, offset: int, end: int) -> tuple[int, int]:
        first = offset // self.block_size
        last = (end - 1) // self.block_size
        return first, min(last - first + 1, LOOKAHEAD)

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        end = min(offset + length, self.size)
        first, count = self._window(offset, end)
        states, _ = self.lookup(first, count)
        run = run_length(states)
        return STATUS_OF_STATE[int(states[0])], min((first + run) * self.block_size, end) - offset

    def _runs(self, offset: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """``(start, stop, state, file offset of start)`` runs covering the range.

        A run is a stretch of blocks in one state that, for allocated blocks, also
        lie back to back in the file, so it can be transferred with one I/O.
        """
        bs = self.block_size
        pos = offset
        while pos < end:
            first, count = self._window(pos, end)
            states, offsets = self.lookup(first, count)
            states = np.asarray(states)
            offsets = np.asarray(offsets, dtype=np.int64)
            allocated = (states == DATA) | (states == ALLOCATED_ZERO)
            starts = np.ones(count, dtype=bool)
            if count > 1:
                same_state = states[1:] == states[:-1]
                contiguous = ~allocated[1:] | (offsets[1:] == offsets[:-1] + bs)
                starts[1:] = ~(same_state & contiguous)
            bounds = np.append(np.flatnonzero(starts), count)
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                stop = min((first + b) * bs, end)
                if stop <= pos:
                    continue
                state = int(states[a])
                file_offset = int(offsets[a]) + (pos - (first + a) * bs) if state in (
                    DATA, ALLOCATED_ZERO) else -1
                yield pos, stop, state, file_offset
                pos = stop

    def read_into(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        for start, stop, state, file_offset in self._runs(offset, end):
            if state == DATA:
                view = buf[start - offset:stop - offset]
                got = self.storage.readinto_at(file_offset, view)
                if got != len(view):
                    raise Corrupted(
                        f"the data of virtual offset {start + got} should be at file "
                        f"offset {file_offset + got}, which lies beyond the end of the file",
                        self.storage.path)
            else:
                fill_zero(buf, start - offset, stop - offset)

    def write(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        for start, stop, state, file_offset in self._runs(offset, end):
            if state != DATA:
                raise InvalidState(f"internal error: in-place write to an unallocated "
                                   f"range at {start}", self.storage.path)
            self.storage.write_at(file_offset, data[start - offset:stop - offset])


class FlatTable:
    """A one-level table of fixed-size entries, kept in memory.

    Changes are written back by :meth:`persist`, which rewrites the whole sectors
    holding the changed entries (a sector write is atomic on real disks).
    """

    def __init__(self, storage: Storage, offset: int, count: int, dtype: str,
                 what: str = "block table") -> None:
        self.storage = storage
        self.offset = offset
        self.dtype = np.dtype(dtype)
        self.what = what
        nbytes = count * self.dtype.itemsize
        if nbytes > MAX_TABLE_BYTES:
            raise NotSupported(f"the {what} has {count} entries, more than this program "
                               f"keeps in memory", storage.path)
        raw = storage.read_exact(offset, nbytes, what) if nbytes else b""
        self.entries = np.frombuffer(raw, dtype=self.dtype).copy()

    @classmethod
    def new(cls, storage: Storage, offset: int, count: int, dtype: str, fill: int,
            what: str = "block table") -> FlatTable:
        """A table of ``count`` entries set to ``fill``, not yet written."""
        table = cls.__new__(cls)
        table.storage = storage
        table.offset = offset
        table.dtype = np.dtype(dtype)
        table.what = what
        table.entries = np.full(count, fill, dtype=table.dtype)
        return table

    def __len__(self) -> int:
        return len(self.entries)

    def tobytes(self) -> bytes:
        return self.entries.tobytes()

    def persist(self, first: int, count: int) -> None:
        """Write the sectors holding entries ``first .. first+count-1``."""
        if count <= 0:
            return
        size = self.dtype.itemsize
        total = len(self.entries) * size
        start = (first * size) // SECTOR * SECTOR
        stop = min(-(-((first + count) * size) // SECTOR) * SECTOR, total)
        raw = self.entries.view(np.uint8)[start:stop]
        self.storage.write_at(self.offset + start, raw.tobytes())

    def persist_entries(self, indices: np.ndarray) -> None:
        """Write the sectors holding the given entries, each sector once."""
        per = max(1, SECTOR // self.dtype.itemsize)
        for first in np.unique(np.asarray(indices, dtype=np.int64) // per).tolist():
            self.persist(first * per, per)

    def persist_all(self) -> None:
        self.storage.write_at(self.offset, self.entries.tobytes())


class TableCache:
    """Second-level tables (L2 tables, grain tables) loaded on demand and kept LRU.

    Two-level formats (QCOW2, QED, VMDK sparse extents) point from a first-level
    table at second-level tables of ``entries`` entries each.  ``get(offset)``
    returns the table stored at a file offset, read-only; :meth:`modify` returns it
    writable, and changes are written back with :meth:`persist` (whole sectors
    around the changed entries).

    ``decode(table)``, when given, derives what lookups need from a table (its
    entries classified, say).  :meth:`decoded` computes that once per table and
    keeps it until the table changes (:meth:`modify`, :meth:`new`, :meth:`persist`,
    :meth:`forget`), so that a lookup costs slicing rather than classifying.
    """

    def __init__(self, storage: Storage, entries: int, dtype: str, capacity: int = 256,
                 what: str = "second-level table",
                 decode: Callable[[np.ndarray], object] | None = None) -> None:
        self.storage = storage
        self.entries = entries
        self.dtype = np.dtype(dtype)
        self.capacity = capacity
        self.what = what
        self._decode = decode
        self._tables: dict[int, np.ndarray] = {}
        self._decoded: dict[int, object] = {}

    @property
    def table_bytes(self) -> int:
        return self.entries * self.dtype.itemsize

    def _load(self, offset: int) -> np.ndarray:
        """The (writable) table at ``offset``, read if needed, now most recently used."""
        table = self._tables.pop(offset, None)
        if table is None:
            raw = self.storage.read_exact(offset, self.table_bytes, self.what)
            table = np.frombuffer(raw, dtype=self.dtype).copy()
            self._make_room()
        self._tables[offset] = table  # most recently used last
        return table

    def _make_room(self) -> None:
        if len(self._tables) >= self.capacity:
            self._drop(next(iter(self._tables)))

    def _drop(self, offset: int) -> None:
        self._tables.pop(offset, None)
        self._decoded.pop(offset, None)

    def get(self, offset: int) -> np.ndarray:
        """The table at ``offset``, read-only (change it through :meth:`modify`)."""
        view = self._load(offset).view()
        view.flags.writeable = False
        return view

    def modify(self, offset: int) -> np.ndarray:
        """The table at ``offset``, writable: what was derived from it is dropped."""
        self._decoded.pop(offset, None)
        return self._load(offset)

    def decoded(self, offset: int) -> object:
        """``decode`` of the table at ``offset``, computed once per table content."""
        assert self._decode is not None
        result = self._decoded.get(offset)
        if result is None:
            result = self._decode(self.get(offset))
            self._decoded[offset] = result
        else:
            self._load(offset)  # keep the table (and with it the result) recently used
        return result

    def drop_decoded(self) -> None:
        """Derive everything anew (what ``decode`` depends on besides the tables changed)."""
        self._decoded.clear()

    def new(self, offset: int, fill: int = 0) -> np.ndarray:
        """Start a table at ``offset`` filled with ``fill`` and write it out whole."""
        table = np.full(self.entries, fill, dtype=self.dtype)
        self.storage.write_at(offset, table.tobytes())
        self._drop(offset)
        self._make_room()
        self._tables[offset] = table
        return table

    def persist(self, offset: int, first: int, count: int) -> None:
        """Write the sectors of the table at ``offset`` holding entries first..first+count-1."""
        table = self._tables[offset]
        self._decoded.pop(offset, None)
        size = self.dtype.itemsize
        start = (first * size) // SECTOR * SECTOR
        stop = min(-(-((first + count) * size) // SECTOR) * SECTOR, self.table_bytes)
        self.storage.write_at(offset + start, table.view(np.uint8)[start:stop].tobytes())

    def forget(self, offset: int | None = None) -> None:
        """Drop one cached table (or all of them), e.g. after it was moved or freed."""
        if offset is None:
            self._tables.clear()
            self._decoded.clear()
        else:
            self._drop(offset)
