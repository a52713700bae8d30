"""The engine's exception hierarchy.

Every failure the engine reports is a :class:`VDError`.  Each subclass carries the
VirtualBox status name it corresponds to (``status``), the file it concerns
(``path``, when there is one) and a message in words.  Corrupt or hostile input
raises one of these, never ``struct.error``, ``IndexError`` or ``ValueError``.
"""

from __future__ import annotations

import errno
import os


class VDError(Exception):
    """Base class of every error the engine raises."""

    status = "VERR_GENERAL_FAILURE"

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None,
                 status: str | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.message = message
        if status is not None:
            self.status = status
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.path and self.path not in self.message:
            return f"{self.path}: {self.message}"
        return self.message


class InvalidParameter(VDError):
    """Bad arguments: unknown backend, unsupported variant, out-of-range I/O."""

    status = "VERR_INVALID_PARAMETER"


class NotSupported(VDError):
    """The format or backend cannot do this."""

    status = "VERR_NOT_SUPPORTED"


class InvalidState(VDError):
    """The container is not in a state that allows the call."""

    status = "VERR_VD_INVALID_STATE"


class InvalidType(VDError):
    """Wrong image type for the slot (a diff as base, a fixed image as diff...)."""

    status = "VERR_VD_INVALID_TYPE"


class InvalidSize(VDError):
    """A size outside what the format allows, or not sector aligned."""

    status = "VERR_VD_INVALID_SIZE"


class NotOpened(VDError):
    """The container holds no image."""

    status = "VERR_VD_NOT_OPENED"


class ImageNotFound(VDError):
    """No image with that number in the container."""

    status = "VERR_VD_IMAGE_NOT_FOUND"


class ReadOnly(VDError):
    """The image is opened read-only."""

    status = "VERR_VD_IMAGE_READ_ONLY"


class GeometryNotSet(VDError):
    """The image stores no geometry of that kind."""

    status = "VERR_VD_GEOMETRY_NOT_SET"


class UuidMismatch(VDError):
    """A differencing image does not belong on top of the image below it."""

    status = "VERR_VD_UUID_MISMATCH"


class InvalidHeader(VDError):
    """The file is not in this format (probe failure) or its header is unusable."""

    status = "VERR_VD_GEN_INVALID_HEADER"


class Corrupted(VDError):
    """The image is recognised but damaged."""

    status = "VERR_VD_IMAGE_CORRUPTED"


class ShrinkNotSupported(VDError):
    """Resize to a smaller size is not possible."""

    status = "VERR_VD_SHRINK_NOT_SUPPORTED"


class Cancelled(VDError):
    """The operation was cancelled through its progress callback."""

    status = "VERR_CANCELLED"

    def __init__(self, message: str = "the operation was cancelled",
                 path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message, path)


class CacheAlreadyExists(VDError):
    status = "VERR_VD_CACHE_ALREADY_EXISTS"


class CacheNotFound(VDError):
    status = "VERR_VD_CACHE_NOT_FOUND"


class CacheNotUpToDate(VDError):
    status = "VERR_VD_CACHE_NOT_UP_TO_DATE"


class StorageError(VDError):
    """An I/O error from the host file system, translated to words."""

    status = "VERR_IO_GEN_FAILURE"


class FileNotFound(StorageError):
    status = "VERR_FILE_NOT_FOUND"


class AlreadyExists(StorageError):
    status = "VERR_ALREADY_EXISTS"


class AccessDenied(StorageError):
    status = "VERR_ACCESS_DENIED"


class DiskFull(StorageError):
    status = "VERR_DISK_FULL"


class ImageInUse(StorageError):
    """Another process (or another open in this one) is writing the image."""

    status = "VERR_FILE_LOCK_FAILED"


_ERRNO_CLASSES: dict[int, tuple[type[StorageError], str]] = {
    errno.ENOENT: (FileNotFound, "file not found"),
    errno.EEXIST: (AlreadyExists, "file already exists"),
    errno.EACCES: (AccessDenied, "permission denied"),
    errno.EPERM: (AccessDenied, "operation not permitted"),
    errno.EROFS: (AccessDenied, "the file system is read-only"),
    errno.ENOSPC: (DiskFull, "no space left on the device"),
    errno.EDQUOT: (DiskFull, "disk quota exceeded"),
    errno.EISDIR: (StorageError, "is a directory, not an image file"),
    errno.ENOTDIR: (FileNotFound, "a folder in the path does not exist"),
    errno.EFBIG: (DiskFull, "the file would be too large for the file system"),
}


def from_os_error(exc: OSError, path: str | os.PathLike[str] | None = None,
                  doing: str = "") -> StorageError:
    """Translate an ``OSError`` into the matching :class:`StorageError`."""
    cls, words = _ERRNO_CLASSES.get(exc.errno or 0, (StorageError, ""))
    words = words or (exc.strerror or str(exc)).lower()
    if doing:
        words = f"{doing}: {words}"
    err = cls(words, path if path is not None else exc.filename)
    err.__cause__ = exc
    return err
