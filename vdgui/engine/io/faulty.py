"""Fault injection: a provider whose files fail on command.

Tests use it to prove that an I/O error, a full disk or a crash part-way through an
operation leaves every image readable with its data intact.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Iterator

from ..errors import from_os_error
from .base import Storage, StorageProvider


class SimulatedCrash(BaseException):
    """Raised instead of a write once the provider's write budget is spent.

    It derives from BaseException so that no ``except VDError``/``except Exception``
    in the engine can swallow it: like a real crash, nothing after it runs.
    """


@dataclass
class Fault:
    """When and how writes fail.

    ``after_writes``: the number of writes that succeed before the fault strikes;
    ``kind``: ``"crash"`` (stop dead), ``"enospc"`` or ``"eio"`` (an OSError);
    ``path_contains``: only writes to files whose path contains this text count.
    """

    after_writes: int
    kind: str = "crash"
    path_contains: str = ""


class _FaultyStorage(Storage):
    """Counts (and fails) the raw writes of another storage; transactions and
    their journal go through the faulty provider too, so they can be cut short."""

    def __init__(self, inner: Storage, provider: FaultyProvider) -> None:
        self._inner = inner
        self.provider = provider
        self.path = inner.path
        self.writable = inner.writable

    def _readinto(self, offset: int, buf: memoryview) -> int:
        return self._inner._readinto(offset, buf)

    def _write(self, offset: int, data: memoryview) -> None:
        self.provider._before_write(self.path)
        self._inner._write(offset, data)

    def _size(self) -> int:
        return self._inner._size()

    def _set_size(self, size: int) -> None:
        self.provider._before_write(self.path)
        self._inner._set_size(size)

    def flush(self) -> None:
        if not self.ignore_flush:
            self._inner.flush()

    def advise_sequential(self) -> None:
        self._inner.advise_sequential()

    def allocated_size(self) -> int:
        return self._inner.allocated_size()

    def punch_hole(self, offset: int, length: int) -> None:
        self.provider._before_write(self.path)
        self._inner.punch_hole(offset, length)

    def allocate(self, offset: int, length: int) -> None:
        self.provider._before_write(self.path)
        self._inner.allocate(offset, length)

    def data_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        if self._records():
            return super().data_ranges(offset, length)
        return self._inner.data_ranges(offset, length)

    def reopen(self, writable: bool, shareable: bool = False) -> None:
        self._inner.reopen(writable, shareable)
        self.writable = self._inner.writable
        self._pending = None
        self.recover()

    def close(self) -> None:
        self._inner.close()


class FaultyProvider(StorageProvider):
    """Wraps another provider; counts writes and fails as the :class:`Fault` says."""

    def __init__(self, inner: StorageProvider, fault: Fault | None = None) -> None:
        self.inner = inner
        self.fault = fault
        self.writes = 0

    def _before_write(self, path: str) -> None:
        fault = self.fault
        if fault is None or fault.path_contains not in path:
            return
        if self.writes >= fault.after_writes:
            if fault.kind == "crash":
                raise SimulatedCrash(path)
            code = errno.ENOSPC if fault.kind == "enospc" else errno.EIO
            raise from_os_error(OSError(code, "injected fault"), path, "writing failed")
        self.writes += 1

    def open(self, path: str, *, writable: bool = False, create: bool = False,
             shareable: bool = False) -> Storage:
        if create:
            self._before_write(path)
        inner = self.inner.open(path, writable=writable, create=create, shareable=shareable)
        storage = _FaultyStorage(inner, self)
        if not create:
            storage.recover()
        return storage

    def delete(self, path: str) -> None:
        self._before_write(path)
        self.inner.delete(path)

    def move(self, src: str, dst: str) -> None:
        self._before_write(src)
        self.inner.move(src, dst)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def list_dir(self, path: str) -> list[str]:
        return self.inner.list_dir(path)

    def file_sizes(self, path: str) -> tuple[int, int]:
        return self.inner.file_sizes(path)

    def free_space(self, path: str) -> int | None:
        return self.inner.free_space(path)
