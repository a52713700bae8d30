"""Host files: positional I/O, QEMU-compatible byte locks, sparse-file hints."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from typing import Iterator

from ..errors import AlreadyExists, Corrupted, ImageInUse, StorageError, from_os_error
from .base import Storage, StorageProvider

# QEMU's file-posix driver locks single bytes to announce what an open image does:
# byte 100 + n for "I hold permission n", byte 200 + n for "I don't let others hold
# permission n" (n = 0 consistent read, 1 write).  Using the same bytes makes vdgui
# and qemu refuse to write one image at once.
_PERM_READ, _PERM_WRITE = 100, 101
_DENY_WRITE = 201

_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
try:
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except AttributeError:  # pragma: no cover - every glibc has it
    _fallocate = None

_O_NOATIME = getattr(os, "O_NOATIME", 0)

#: What a path may name instead of an image file (a block device may hold a raw disk).
_NOT_IMAGE_FILES = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)",
                    stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device"}


def _flock(fd: int, cmd: int, kind: int, start: int) -> bytes:
    # struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
    request = struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 1, 0)
    return fcntl.fcntl(fd, cmd, request)


def _held_by_other(fd: int, byte: int) -> bool:
    """True when another open file description holds a lock on ``byte``."""
    answer = _flock(fd, _F_OFD_GETLK, fcntl.F_WRLCK, byte)
    return struct.unpack("hhqqi4x", answer)[0] != fcntl.F_UNLCK


class FileStorage(Storage):
    """A host file opened for positional I/O."""

    def __init__(self, path: str, fd: int, writable: bool, provider: FileProvider) -> None:
        self.path = path
        self._fd = fd
        self.writable = writable
        self.provider = provider

    # -- raw operations

    def _readinto(self, offset: int, buf: memoryview) -> int:
        total = 0
        want = len(buf)
        while total < want:
            try:
                n = os.preadv(self._fd, [buf[total:]], offset + total)
            except OSError as exc:
                raise from_os_error(exc, self.path, "reading failed") from exc
            except OverflowError:
                raise Corrupted(f"an offset of {offset} is beyond any file",
                                self.path) from None
            if n == 0:
                break
            total += n
        return total

    def _write(self, offset: int, data: memoryview) -> None:
        done = 0
        while done < len(data):
            try:
                done += os.pwrite(self._fd, data[done:], offset + done)
            except OSError as exc:
                raise from_os_error(exc, self.path, "writing failed") from exc
            except OverflowError:
                raise Corrupted(f"an offset of {offset} is beyond any file",
                                self.path) from None

    def _size(self) -> int:
        return os.fstat(self._fd).st_size

    def _set_size(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise from_os_error(exc, self.path, "resizing the file failed") from exc

    def allocated_size(self) -> int:
        return os.fstat(self._fd).st_blocks * 512

    def _copy(self, offset: int, length: int, target: Storage, target_offset: int) -> int:
        """By the kernel (``copy_file_range``: no copy through this process, and a clone
        on file systems that share extents), where no journal is involved and the
        ranges lie apart."""
        if (type(target) is not FileStorage or self._records() or target._txn is not None
                or (target is self and offset < target_offset + length
                    and target_offset < offset + length)):
            return super()._copy(offset, length, target, target_offset)
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(self._fd, target._fd, length - done, offset + done,
                                       target_offset + done)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    # Not between these files (another file system, an old kernel).
                    return done + super()._copy(offset + done, length - done, target,
                                                target_offset + done)
                raise from_os_error(exc, target.path, "copying failed") from exc
            if n == 0:  # the end of this file
                break
            done += n
        return done

    def advise_sequential(self) -> None:
        if hasattr(os, "posix_fadvise"):  # larger read-ahead, earlier write-back
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def flush(self) -> None:
        if self.writable and not self.ignore_flush:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise from_os_error(exc, self.path, "flushing to disk failed") from exc

    # -- sparse hints

    def punch_hole(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        self._check_writable()
        if _fallocate is not None and _fallocate(
                self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        super().punch_hole(offset, length)

    def allocate(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        self._check_writable()
        if _fallocate is not None and _fallocate(self._fd, 0, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT):
            raise from_os_error(OSError(err, os.strerror(err)), self.path,
                                "reserving space failed")
        super().allocate(offset, length)  # file system without fallocate: extend sparsely

    def data_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        end = min(offset + length, self.size())
        if self._records():  # pending metadata writes: don't trust the holes
            yield from super().data_ranges(offset, length)
            return
        pos = offset
        while pos < end:
            try:
                start = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    return
                yield pos, end  # no SEEK_DATA support: assume data
                return
            if start >= end:
                return
            try:
                stop = os.lseek(self._fd, start, os.SEEK_HOLE)
            except OSError:
                stop = end
            yield start, min(stop, end)
            pos = stop

    def reopen(self, writable: bool, shareable: bool = False) -> None:
        if writable == self.writable:
            return
        other = self.provider.open(self.path, writable=writable, shareable=shareable)
        # Take over the new descriptor (and its locks); drop the old one.
        old, self._fd, other._fd = self._fd, other._fd, -1
        self.writable = writable
        self._pending = other._pending
        os.close(old)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # closing the descriptor drops its OFD locks

    def fileno(self) -> int:
        return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)


class FileProvider(StorageProvider):
    """Opens host files; writers are announced with QEMU-compatible OFD locks."""

    def open(self, path: str, *, writable: bool = False, create: bool = False,
             shareable: bool = False) -> FileStorage:
        path = os.fspath(path)
        if create:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        elif writable:
            flags = os.O_RDWR
        else:
            flags = os.O_RDONLY
        # Non-blocking, so that opening a FIFO cannot wait for a writer forever (it is
        # refused below); regular files ignore the flag.
        flags |= getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK
        try:
            fd = self._open_fd(path, flags, read_only=not (writable or create))
        except FileExistsError as exc:
            raise AlreadyExists("the file already exists; it was left untouched",
                                path) from exc
        except OSError as exc:
            if create and exc.errno == errno.ENOENT:
                raise from_os_error(exc, path, "cannot create the file: its folder "
                                               "does not exist") from exc
            raise from_os_error(exc, path, "cannot open the file") from exc
        try:
            kind = _NOT_IMAGE_FILES.get(stat.S_IFMT(os.fstat(fd).st_mode))
            if kind is not None:
                raise StorageError(f"is {kind}, not an image file", path)
            os.set_blocking(fd, True)
            self._lock(fd, path, writable or create, shareable)
        except BaseException:
            os.close(fd)
            raise
        storage = FileStorage(path, fd, writable or create, self)
        if not create:
            try:
                storage.recover()
            except BaseException:
                storage.close()
                raise
        return storage

    @staticmethod
    def _open_fd(path: str, flags: int, read_only: bool) -> int:
        if read_only and _O_NOATIME:
            # Reading must not change even the access time; only the owner (or root)
            # may ask for that, so fall back quietly.
            try:
                return os.open(path, flags | _O_NOATIME)
            except PermissionError:
                pass
        return os.open(path, flags, 0o644)

    @staticmethod
    def _lock(fd: int, path: str, writable: bool, shareable: bool) -> None:
        try:
            if writable:
                if _held_by_other(fd, _DENY_WRITE) or (
                        not shareable and _held_by_other(fd, _PERM_WRITE)):
                    raise ImageInUse("the image is in use: another program (or another "
                                     "open of it) is writing to it", path)
                _flock(fd, _F_OFD_SETLK, fcntl.F_RDLCK, _PERM_WRITE)
                if not shareable:
                    _flock(fd, _F_OFD_SETLK, fcntl.F_RDLCK, _DENY_WRITE)
            _flock(fd, _F_OFD_SETLK, fcntl.F_RDLCK, _PERM_READ)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ImageInUse("the image is in use by another program", path) from exc
            if exc.errno in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
                return  # the file system has no locks (some network mounts)
            raise from_os_error(exc, path, "locking the file failed") from exc

    def delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError as exc:
            raise from_os_error(exc, path, "cannot delete the file") from exc

    def move(self, src: str, dst: str) -> None:
        if os.path.lexists(dst):
            raise AlreadyExists("the destination already exists", dst)
        try:
            os.rename(src, dst)
        except OSError as exc:
            raise from_os_error(exc, src, f"cannot move the file to {dst}") from exc

    def exists(self, path: str) -> bool:
        return os.path.isfile(path)

    def list_dir(self, path: str) -> list[str]:
        try:
            with os.scandir(path or ".") as entries:
                return sorted(e.path for e in entries if e.is_file())
        except OSError:
            return []

    def file_sizes(self, path: str) -> tuple[int, int]:
        try:
            st = os.stat(path)
        except OSError:
            return 0, 0
        return st.st_size, st.st_blocks * 512

    def free_space(self, path: str) -> int | None:
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        try:
            st = os.statvfs(folder)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
