"""Chain discovery: from a top image to its base, without a media registry.

An image's parent is found from the path the format stores (VHD parent locators,
VMDK ``parentFileNameHint``, QCOW2/QED backing file), resolved against the child's
folder; failing that (VDI stores only a UUID), by looking for the image whose UUID
is the child's parent UUID in the child's folder and in the search paths.
"""

from __future__ import annotations

import logging
import os
import uuid as uuidlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from . import registry
from .container import Disk
from .errors import Corrupted, FileNotFound, NotSupported, VDError
from .formats.base import Image
from .io import StorageProvider, default_provider
from .types import NIL_UUID, DiskType, OpenFlags

log = logging.getLogger(__name__)

#: Longest chain followed; anything deeper is treated as a loop or hostile input.
MAX_CHAIN_DEPTH = 1000

_INSPECT = OpenFlags.READONLY | OpenFlags.INFO


class ParentNotFound(FileNotFound):
    """A differencing image's parent could not be located."""

    status = "VERR_VD_IMAGE_NOT_FOUND"


@dataclass(frozen=True)
class ChainLink:
    """One image of a discovered chain."""

    path: str
    backend: str
    disk_type: DiskType


def _optional_uuid(get) -> uuidlib.UUID | None:
    try:
        value = get()
    except NotSupported:
        return None
    return None if value == NIL_UUID else value


def _parent_reference(image: Image) -> tuple[uuidlib.UUID | None, str | None]:
    return _optional_uuid(lambda: image.parent_uuid), image.parent_filename


def _candidates(child: str, stored: str) -> list[str]:
    """Where a stored parent path may point: beside the child first, then as stored."""
    folder = os.path.dirname(child)
    normalised = stored.replace("\\", "/")
    out = []
    if not os.path.isabs(normalised):
        out.append(os.path.normpath(os.path.join(folder, normalised)))
    out.append(os.path.join(folder, os.path.basename(normalised)))
    if os.path.isabs(normalised):
        out.append(normalised)
    return list(dict.fromkeys(out))


def _inspect(path: str, io: StorageProvider, backend: str | None = None,
             config: Mapping[str, str] | None = None) -> tuple[Image, str]:
    if backend is not None and not registry.is_known(backend):
        backend = None  # a stored format we have no backend for (qemu's "file"): probe
    if backend is None:
        backend, disk_type = registry.probe(path, DiskType.INVALID, io)
    else:
        disk_type = DiskType.INVALID
    cls = registry.backend_class(backend)
    return cls.open(io, path, _INSPECT, disk_type, config), cls.info.name


class UuidIndex:
    """Finds images by UUID in folders, opening each candidate file only once."""

    def __init__(self, io: StorageProvider, folders: Iterable[str]) -> None:
        self.io = io
        self.folders = list(dict.fromkeys(os.path.abspath(f) for f in folders))
        self._known: dict[str, tuple[uuidlib.UUID | None, uuidlib.UUID | None]] = {}
        self._extensions = {ext for info in registry.backends() for ext, _ in info.extensions}

    def _ids_of(self, path: str) -> tuple[uuidlib.UUID | None, uuidlib.UUID | None]:
        """``(UUID, modification UUID)`` of the image at ``path`` (None where absent)."""
        if path not in self._known:
            self._known[path] = (None, None)
            try:
                image, _ = _inspect(path, self.io)
                try:
                    self._known[path] = (_optional_uuid(lambda: image.uuid),
                                         _optional_uuid(lambda: image.modification_uuid))
                finally:
                    image.close()
            except (VDError, OSError):
                pass
        return self._known[path]

    def find(self, wanted: uuidlib.UUID, exclude: Sequence[str] = (),
             modification: bool = False) -> str | None:
        """The image whose UUID (or, with ``modification``, modification UUID) is
        ``wanted``."""
        skip = {os.path.abspath(p) for p in exclude}
        for folder in self.folders:
            for path in self.io.list_dir(folder):
                ext = os.path.splitext(path)[1].lstrip(".").lower()
                if ext not in self._extensions or os.path.abspath(path) in skip:
                    continue
                if self._ids_of(path)[1 if modification else 0] == wanted:
                    return path
        return None


def find_parent(image: Image, search_paths: Sequence[str] = (),
                io: StorageProvider | None = None,
                index: UuidIndex | None = None) -> str | None:
    """The path of ``image``'s parent, None for a base image.

    Raises :class:`ParentNotFound` when the image has a parent that cannot be found.
    """
    io = io or default_provider()
    parent_uuid, stored = _parent_reference(image)
    if parent_uuid is None and not stored:
        return None
    if stored:
        for candidate in _candidates(image.path, stored):
            if io.exists(candidate):
                return candidate
    index = index or UuidIndex(io, [os.path.dirname(os.path.abspath(image.path)),
                                    *search_paths])
    if parent_uuid is not None:
        found = index.find(parent_uuid, exclude=[image.path])
        if found:
            return found
    else:
        # Formats that link by the parent's modification UUID (VHDX's parent_linkage).
        linkage = _optional_uuid(lambda: image.parent_modification_uuid)
        found = index.find(linkage, exclude=[image.path], modification=True) \
            if linkage else None
        if found:
            return found
    where = f"stored as {stored!r}, " if stored else ""
    ident = f"UUID {parent_uuid}" if parent_uuid else "no UUID"
    raise ParentNotFound(f"its parent image ({ident}, {where}looked for in the image's "
                         f"folder and the search paths) was not found; add the folder "
                         f"that holds it to the search paths", image.path)


def discover_chain(path: str | os.PathLike[str], search_paths: Sequence[str] = (),
                   backend: str | None = None, io: StorageProvider | None = None,
                   config: Mapping[str, str] | None = None) -> list[ChainLink]:
    """Every image of the chain ending in ``path``, base first.  Opens nothing for write."""
    io = io or default_provider()
    path = os.fspath(path)
    index = UuidIndex(io, [os.path.dirname(os.path.abspath(path)), *search_paths])
    links: list[ChainLink] = []
    seen_paths: set[str] = set()
    seen_uuids: set[uuidlib.UUID] = set()
    current: str | None = path
    current_backend = backend
    while current is not None:
        real = os.path.realpath(current)
        if real in seen_paths or len(links) >= MAX_CHAIN_DEPTH:
            raise Corrupted("the chain of parent images loops back on itself (or is deeper "
                            f"than {MAX_CHAIN_DEPTH} images)", path)
        seen_paths.add(real)
        image, name = _inspect(current, io, current_backend, config)
        try:
            try:
                own = image.uuid
            except NotSupported:
                own = None
            if own is not None and own != NIL_UUID:
                if own in seen_uuids:
                    raise Corrupted(f"the chain of parent images loops back on itself (UUID "
                                    f"{own} appears twice)", path)
                seen_uuids.add(own)
            links.append(ChainLink(current, name, image.disk_type))
            parent = find_parent(image, search_paths, io, index)
            parent_format = image.parent_format
        finally:
            image.close()
        current = parent
        current_backend = parent_format
    links.reverse()
    return links


def open_chain(path: str | os.PathLike[str], flags: OpenFlags = OpenFlags.NORMAL,
               search_paths: Sequence[str] = (), backend: str | None = None,
               io: StorageProvider | None = None,
               config: Mapping[str, str] | None = None) -> Disk:
    """A :class:`Disk` holding the chain ending in ``path``.

    Ancestors are opened read-only; ``path`` itself with ``flags``.  ``config`` is
    given to every image's backend.
    """
    io = io or default_provider()
    links = discover_chain(path, search_paths, backend, io, config)
    disk = Disk(links[-1].disk_type if links[-1].disk_type != DiskType.INVALID
                else DiskType.HDD, io)
    try:
        for i, link in enumerate(links):
            top = i == len(links) - 1
            disk.open(link.path, link.backend,
                      flags if top else (flags & ~OpenFlags.DISCARD) | OpenFlags.READONLY,
                      config)
    except BaseException:
        disk.close_all()
        raise
    return disk
