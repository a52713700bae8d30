"""The backend registry: which formats exist, what they can do, and probing.

``VDBackendInfo`` / ``VDBackendInfoOne`` / ``VDGetFormat``.  Backends are tried in
VirtualBox's registration order, so that a file two formats could claim is claimed
the same way.
"""

from __future__ import annotations

import os

from .errors import (AccessDenied, FileNotFound, InvalidHeader, InvalidParameter,
                     NotSupported, VDError)
from .formats.base import BackendInfo, Cache, Image
from .formats.dmg import DmgImage
from .formats.parallels import ParallelsImage
from .formats.qcow import QcowImage
from .formats.qcow2 import Qcow2Image
from .formats.qed import QedImage
from .formats.raw import RawImage
from .formats.vci import VciCache
from .formats.vdi import VdiImage
from .formats.vmdk import VmdkImage
from .formats.vhd import VhdImage
from .formats.vhdx import VhdxImage
from .io import StorageProvider, default_provider
from .types import Capability, DiskType

#: Image backends in probe order (VirtualBox: VMDK, VDI, VHD, Parallels, DMG, QED,
#: QCOW, VHDX, ..., RAW).
_BACKENDS: tuple[type[Image], ...] = (VmdkImage, VdiImage, VhdImage, ParallelsImage, DmgImage,
                                       QedImage, QcowImage, Qcow2Image, VhdxImage, RawImage)

#: Other names people use for a format.
ALIASES = {"vpc": "VHD", "img": "RAW", "iso": "RAW"}


#: Cache image backends (``VDCreateCache`` / ``VDCacheOpen``), probed after images.
_CACHE_BACKENDS: tuple[type[Cache], ...] = (VciCache,)


def cache_backends() -> list[BackendInfo]:
    """The cache image backends."""
    return [cls.info for cls in _CACHE_BACKENDS]


def cache_class(name: str) -> type[Cache]:
    """The cache backend called ``name`` (case-insensitive)."""
    for cls in _CACHE_BACKENDS:
        if cls.info.name.lower() == name.lower():
            return cls
    known = ", ".join(info.name.lower() for info in cache_backends()) or "none"
    raise InvalidParameter(f"unknown cache format {name!r} (known: {known})")


def probe_cache(path: str, io: StorageProvider | None = None) -> type[Cache]:
    """The cache backend that recognises ``path``."""
    io = io or default_provider()
    for cls in _CACHE_BACKENDS:
        try:
            cls.probe(io, path)
            return cls
        except InvalidHeader:
            continue
    raise NotSupported("the file is not a cache image in any format this program knows",
                       path)


def backends() -> list[BackendInfo]:
    """``VDBackendInfo``: every registered backend."""
    return [cls.info for cls in _BACKENDS]


def backend_class(name: str) -> type[Image]:
    """The backend called ``name`` (case-insensitive, aliases allowed)."""
    wanted = ALIASES.get(name.lower(), name).lower()
    for cls in _BACKENDS:
        if cls.info.name.lower() == wanted:
            return cls
    known = ", ".join(info.name.lower() for info in backends())
    raise InvalidParameter(f"unknown format {name!r} (known formats: {known})")


def is_known(name: str) -> bool:
    """True when a backend (or alias) of that name exists."""
    wanted = ALIASES.get(name.lower(), name).lower()
    return any(cls.info.name.lower() == wanted for cls in _BACKENDS)


def operations(name: str) -> list[str]:
    """The maintenance operations the backend ``name`` implements.

    ``compact``, ``discard``, ``resize``, ``relink`` (merge/rebase can re-point its
    differencing images), ``repair``, ``compress`` (compressed conversion).
    """
    cls = backend_class(name)

    def has(method: str) -> bool:
        return getattr(cls, method, None) is not getattr(Image, method, None)

    found = []
    if has("unmap") and has("pack"):
        found.append("compact")
        if cls.info.has(Capability.DISCARD):
            found.append("discard")
    if has("resize"):
        found.append("resize")
    if cls.info.has(Capability.DIFF) and (has("set_parent") or not has("parent_filename")):
        found.append("relink")
    if hasattr(cls, "check"):
        found.append("repair")
    if has("write_compressed"):
        found.append("compress")
    return found


def backend_info(name: str) -> BackendInfo:
    """``VDBackendInfoOne``."""
    return backend_class(name).info


def backend_for_extension(path: str) -> type[Image] | None:
    """The backend whose file extension ``path`` carries, if any."""
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    for cls in _BACKENDS:
        if any(ext == e for e, _ in cls.info.extensions):
            return cls
    return None


def probe(path: str, disk_type: DiskType = DiskType.INVALID,
          io: StorageProvider | None = None) -> tuple[str, DiskType]:
    """``VDGetFormat``: the format of ``path`` and the device type it is for.

    A backend claims the file when its probe succeeds or fails with anything but
    "not my format", so that the later open explains what is wrong.  Nothing is
    ever written.
    """
    io = io or default_provider()
    if not io.exists(path):
        # Let the file layer say precisely why (missing, a folder, a FIFO, no
        # permission); what it lets through is still no image file.
        io.open(path).close()
        raise NotSupported("is not a regular file; disk images are files", path)
    expected = backend_for_extension(path)
    reason = ""
    for cls in _BACKENDS:
        try:
            return cls.info.name, cls.probe(io, path, disk_type)
        except InvalidHeader as exc:
            if cls is expected:  # the format its name promises: say why it isn't
                reason = f" (as a {cls.info.name} image: {exc.message})"
            continue
        except (FileNotFound, AccessDenied):
            raise
        except VDError:
            return cls.info.name, DiskType.HDD if disk_type == DiskType.INVALID else disk_type
    raise NotSupported(f"the file is not a disk image in any format this program "
                       f"knows{reason}; if it is a raw disk image, name the format: -f raw",
                       path)
