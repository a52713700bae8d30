"""The storage protocol every backend reads and writes through.

A :class:`Storage` is one open file.  Subclasses provide the raw operations
(``_readinto``, ``_write``, ``_size``, ``_set_size``); this base adds what every
file gets for free: exact reads with clear errors, and crash-safe transactions
(:meth:`Storage.transaction`, journalled beside the file, see :mod:`.journal`).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import mmap
from typing import Iterator

from . import journal

log = logging.getLogger(__name__)

#: Bytes a streaming loop (copy, compare, compact) moves per step.  Small enough
#: that the buffer is still in the CPU caches when the data is checked or written
#: (16 MiB buffers made page-cache reads up to three times slower), large enough
#: that the per-step overhead stays small.
IO_CHUNK = 2 << 20

#: Buffers from this size up are mapped pages (see :func:`buffer`).
_MAPPED_BUFFER = 128 << 10


def buffer(length: int) -> memoryview:
    """A writable, zero-filled buffer of ``length`` bytes, starting on a page boundary
    when it is large.

    For I/O of large blocks: a big ``bytearray`` starts 16 bytes past a page
    boundary, and the kernel copies page-cache data into (and out of) memory placed
    that way markedly slower (page-cache reads took twice as long).  Small buffers
    come from the heap: mapping pages would cost more than it saves.
    """
    if length < _MAPPED_BUFFER:
        return memoryview(bytearray(length))
    return memoryview(mmap.mmap(-1, length))


class Storage(abc.ABC):
    """One open file of an image: positional I/O, size, flush, sparse hints."""

    path: str
    writable: bool
    #: The provider that opened this file (it stores the journal beside it).
    provider: "StorageProvider"
    #: Writes collected by an open transaction.
    _txn: list[journal.Record] | None = None
    #: A complete journal found by a read-only open: shown, never applied.
    _pending: list[journal.Record] | None = None
    #: ``VD_OPEN_FLAGS_IGNORE_FLUSH``: flushes become no-ops (fast, and unsafe on a
    #: host crash).  Journal commits still flush: they must stay crash-safe.
    ignore_flush: bool = False

    def advise_sequential(self) -> None:
        """Hint: the file will be read or written front to back."""

    # -- raw operations, provided by subclasses ------------------------------------

    @abc.abstractmethod
    def _readinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from the file; returns the bytes read (short at end of file)."""

    @abc.abstractmethod
    def _write(self, offset: int, data: memoryview) -> None:
        """Write all of ``data`` to the file."""

    @abc.abstractmethod
    def _size(self) -> int:
        """The file's length."""

    @abc.abstractmethod
    def _set_size(self, size: int) -> None:
        """Truncate or extend the file."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make everything written so far durable."""

    @abc.abstractmethod
    def reopen(self, writable: bool, shareable: bool = False) -> None:
        """Switch between read-only and read/write in place (locks follow).

        On failure the storage stays open as it was.  Subclasses call
        :meth:`recover` after becoming writable.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file and its locks."""

    # -- the public interface --------------------------------------------------------

    def _records(self) -> list[journal.Record] | None:
        return self._txn or self._pending

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; fewer only at the end of the file."""
        buf = bytearray(length)
        n = self.readinto_at(offset, memoryview(buf))
        return bytes(buf) if n == length else bytes(buf[:n])

    def readinto_at(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; returns the bytes read (short at end of file)."""
        got = self._readinto(offset, buf)
        records = self._records()
        if not records:
            return got
        # Show the file as it is once the collected or pending writes are applied.
        available = max(0, min(len(buf), self.size() - offset))
        if got < available:
            buf[got:available] = bytes(available - got)
        patched = bytearray(buf[:available])
        journal.overlay(records, offset, patched, self._size())
        buf[:available] = patched
        return available

    def read_exact(self, offset: int, length: int, what: str = "data") -> bytes:
        """Exactly ``length`` bytes, or :class:`Corrupted` naming what was cut short."""
        data = self.read_at(offset, length)
        if len(data) != length:
            raise self._truncated(offset, length, what)
        return data

    def _truncated(self, offset: int, length: int, what: str) -> Exception:
        from ..errors import Corrupted
        return Corrupted(f"the file is truncated: {what} at offset {offset} "
                         f"({length} bytes) lies beyond its end", self.path)

    def copy_to(self, offset: int, length: int, target: "Storage", target_offset: int,
                what: str | None = None) -> None:
        """Copy ``length`` bytes at ``offset`` to ``target_offset`` of ``target`` (this
        file or another; within one file the target must not lie after an overlapping
        source).  What lies beyond the end of this file copies as zeros; with
        ``what``, such a range raises :class:`Corrupted` naming it instead, before
        anything is written (as :meth:`read_exact` would).
        """
        target._check_writable()
        if what is not None and offset + length > self.size():
            raise self._truncated(offset, length, what)
        done = self._copy(offset, length, target, target_offset)
        if done < length:
            target.write_at(target_offset + done, bytes(length - done))

    def _copy(self, offset: int, length: int, target: "Storage", target_offset: int) -> int:
        """Copy what exists of the range; returns its length.  Reads and writes
        through a bounded buffer (host files let the kernel copy instead)."""
        buf = buffer(min(length, IO_CHUNK))
        done = 0
        while done < length:
            view = buf[:min(IO_CHUNK, length - done)]
            got = self.readinto_at(offset + done, view)
            target.write_at(target_offset + done, view[:got])
            done += got
            if got < len(view):
                break
        return done

    def _check_writable(self) -> None:
        if not self.writable:
            from ..errors import ReadOnly
            raise ReadOnly("the file is opened read-only", self.path)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset``, extending the file if needed."""
        self._check_writable()
        view = memoryview(data).cast("B")
        if self._txn is not None:
            self._txn.append(journal.Record(journal.WRITE, offset, view.tobytes()))
        else:
            self._write(offset, view)

    def size(self) -> int:
        """Current length of the file in bytes."""
        size = self._size()
        records = self._records()
        return journal.final_size(records, size) if records else size

    def set_size(self, size: int) -> None:
        """Truncate or extend (sparsely) to ``size`` bytes."""
        self._check_writable()
        if self._txn is not None:
            self._txn.append(journal.Record(journal.SET_SIZE, size))
        else:
            self._set_size(size)

    def allocated_size(self) -> int:
        """Bytes the file really occupies on the host (sparse files use less)."""
        return self.size()

    def punch_hole(self, offset: int, length: int) -> None:
        """Hint: the range will read as zeros and need not occupy space.

        Applied at once, even inside a transaction (it is a space hint, not content
        a crash could tear).
        """
        self._check_writable()
        self._write(offset, memoryview(bytes(length)))

    def allocate(self, offset: int, length: int) -> None:
        """Hint: reserve real space for the range (extending the file if needed)."""
        self._check_writable()
        end = offset + length
        if self._size() < end:
            self._set_size(end)

    def data_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """``(start, end)`` ranges within ``[offset, offset+length)`` that may hold data.

        Everything outside them reads as zeros (holes).  The default knows of no holes.
        """
        end = min(offset + length, self.size())
        if end > offset:
            yield offset, end

    # -- transactions ------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Writes inside the block happen all or not at all, even across a crash.

        Reads inside the block see the writes made so far.  Nested blocks join the
        outermost one.  An exception inside the block discards the writes.
        """
        if self._txn is not None:
            yield
            return
        self._check_writable()
        self._txn = []
        try:
            yield
        except BaseException:
            self._txn = None
            raise
        records, self._txn = self._txn, None
        if records:
            self._commit(records)

    def _commit(self, records: list[journal.Record]) -> None:
        from ..errors import InvalidParameter
        raw = journal.encode(records)
        if len(raw) > journal.MAX_JOURNAL_BYTES:
            raise InvalidParameter("internal error: a transaction grew too large", self.path)
        jpath = journal.journal_path(self.path)
        if self.provider.exists(jpath):
            self.provider.delete(jpath)  # a stale, incomplete one
        with self.provider.open(jpath, create=True) as log_file:
            log_file.write_at(0, raw)
            log_file.flush()  # a fresh storage: never ignores flushes
        self._apply(records)
        self.provider.delete(jpath)

    def _apply(self, records: list[journal.Record]) -> None:
        for record in records:
            if record.kind == journal.WRITE:
                self._write(record.offset, memoryview(record.data))
            else:
                self._set_size(record.offset)
        self._durable()

    def _durable(self) -> None:
        """Flush even under IGNORE_FLUSH: a journal's order must hold on disk."""
        ignore, self.ignore_flush = self.ignore_flush, False
        try:
            self.flush()
        finally:
            self.ignore_flush = ignore

    def recover(self) -> None:
        """Finish (or show) a transaction a crash interrupted.

        Called by providers after opening the file.  Writable: a complete journal is
        applied, an incomplete one discarded.  Read-only: a complete journal is
        shown through reads, nothing is written.
        """
        if self.path.endswith(journal.SUFFIX):
            return
        jpath = journal.journal_path(self.path)
        if not self.provider.exists(jpath):
            return
        with self.provider.open(jpath) as log_file:
            raw = log_file.read_at(0, min(log_file.size(), journal.MAX_JOURNAL_BYTES + 4096))
        records = journal.decode(raw)
        if not self.writable:
            self._pending = records
            return
        if records:
            log.warning("%s: completing an operation that was interrupted", self.path)
            self._apply(records)
        self._pending = None
        self.provider.delete(jpath)

    def __enter__(self) -> "Storage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StorageProvider(abc.ABC):
    """Opens, creates, moves and deletes the files images live in."""

    @abc.abstractmethod
    def open(self, path: str, *, writable: bool = False, create: bool = False,
             shareable: bool = False) -> Storage:
        """Open ``path``.

        ``create`` makes a new file and fails if one exists.  Writable opens take an
        exclusive write lock (shared with other writers only when ``shareable``), so
        that a second writer gets :class:`~vdgui.engine.errors.ImageInUse`.  A
        transaction a crash interrupted is completed (writable) or shown (read-only).
        """

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove ``path``."""

    @abc.abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` (refusing to overwrite)."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """True when ``path`` names an existing file."""

    @abc.abstractmethod
    def list_dir(self, path: str) -> list[str]:
        """Full paths of the files in folder ``path`` (empty when unreadable)."""

    @abc.abstractmethod
    def file_sizes(self, path: str) -> tuple[int, int]:
        """``(length, bytes occupied on the host)`` of ``path``; (0, 0) if missing."""

    def free_space(self, path: str) -> int | None:
        """Free bytes on the file system holding ``path``; None when unknown."""
        return None
