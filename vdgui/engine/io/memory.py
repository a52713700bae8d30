"""Files kept in memory: for tests and for images built on the fly."""

from __future__ import annotations

import posixpath
import threading

from ..errors import AlreadyExists, FileNotFound, ImageInUse
from .base import Storage, StorageProvider


class _MemoryFile:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writers = 0
        self.exclusive = False


class MemoryStorage(Storage):
    """An open in-memory file."""

    def __init__(self, provider: MemoryProvider, path: str, file: _MemoryFile,
                 writable: bool, exclusive: bool) -> None:
        self.path = path
        self.provider = provider
        self._file = file
        self.writable = writable
        self._exclusive = exclusive
        self._closed = False

    def _readinto(self, offset: int, buf: memoryview) -> int:
        chunk = self._file.data[offset:offset + len(buf)]
        buf[:len(chunk)] = chunk
        return len(chunk)

    def _write(self, offset: int, data: memoryview) -> None:
        buf = self._file.data
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data

    def _size(self) -> int:
        return len(self._file.data)

    def _set_size(self, size: int) -> None:
        buf = self._file.data
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))

    def flush(self) -> None:
        pass

    def reopen(self, writable: bool, shareable: bool = False) -> None:
        if writable == self.writable:
            return
        other = self.provider.open(self.path, writable=writable, shareable=shareable)
        self.provider._release(self._file, self.writable, self._exclusive)
        self.writable, self._exclusive = other.writable, other._exclusive
        self._pending = other._pending
        other._closed = True  # its lock now belongs to this storage

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.provider._release(self._file, self.writable, self._exclusive)


class MemoryProvider(StorageProvider):
    """A dictionary of path -> bytes, with the same locking rules as host files."""

    def __init__(self) -> None:
        self.files: dict[str, _MemoryFile] = {}
        self._lock = threading.Lock()

    def open(self, path: str, *, writable: bool = False, create: bool = False,
             shareable: bool = False) -> MemoryStorage:
        path = posixpath.normpath(path)
        writable = writable or create
        with self._lock:
            file = self.files.get(path)
            if create:
                if file is not None:
                    raise AlreadyExists("the file already exists; it was left untouched", path)
                file = self.files[path] = _MemoryFile()
            elif file is None:
                raise FileNotFound("cannot open the file: file not found", path)
            if writable:
                if file.exclusive or (file.writers and not shareable):
                    raise ImageInUse("the image is in use: another open of it is "
                                     "writing to it", path)
                file.writers += 1
                file.exclusive = not shareable
            storage = MemoryStorage(self, path, file, writable, writable and not shareable)
        if not create:
            storage.recover()
        return storage

    def _release(self, file: _MemoryFile, writable: bool, exclusive: bool) -> None:
        with self._lock:
            if writable:
                file.writers -= 1
                if exclusive:
                    file.exclusive = False

    def delete(self, path: str) -> None:
        path = posixpath.normpath(path)
        if self.files.pop(path, None) is None:
            raise FileNotFound("cannot delete the file: file not found", path)

    def move(self, src: str, dst: str) -> None:
        src, dst = posixpath.normpath(src), posixpath.normpath(dst)
        if dst in self.files:
            raise AlreadyExists("the destination already exists", dst)
        if src not in self.files:
            raise FileNotFound("cannot move the file: file not found", src)
        self.files[dst] = self.files.pop(src)

    def exists(self, path: str) -> bool:
        return posixpath.normpath(path) in self.files

    def list_dir(self, path: str) -> list[str]:
        folder = posixpath.normpath(path or ".")
        return sorted(p for p in self.files if posixpath.dirname(p) == folder)

    def file_sizes(self, path: str) -> tuple[int, int]:
        file = self.files.get(posixpath.normpath(path))
        return (len(file.data), len(file.data)) if file else (0, 0)

    def put(self, path: str, data: bytes) -> None:
        """Place a file (test helper)."""
        file = _MemoryFile()
        file.data[:] = data
        self.files[posixpath.normpath(path)] = file

    def get(self, path: str) -> bytes:
        """The current contents of a file (test helper)."""
        return bytes(self.files[posixpath.normpath(path)].data)
