"""The protocol every format backend implements.

A backend is a subclass of :class:`Image`.  Its class methods probe, open and
create files of its format; an instance is one opened image.  The container asks
an image only about its *own* content: :meth:`Image.block_status` says, for a range
of the virtual disk, whether this image stores data there, defines it as zeros, or
has nothing (so the reader must look further down the chain).  The container does
the rest: falling through the chain, filling newly allocated blocks from below,
suppressing writes that change nothing.
"""

from __future__ import annotations

import abc
import contextlib
import os
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, ContextManager, Mapping

from ..errors import (GeometryNotSet, InvalidParameter, InvalidType, NotSupported, ReadOnly,
                      ShrinkNotSupported)
from ..io import Storage, StorageProvider
from ..progress import Progress
from ..types import (Capability, ConfigKey, DiskType, Geometry, ImageFlags, OpenFlags,
                     SECTOR, Status, variant_names)

if TYPE_CHECKING:
    from ..blockmap import BlockMap


@dataclass(frozen=True)
class BackendInfo:
    """``VDBACKENDINFO``: a backend's name, capabilities, extensions and keys."""

    name: str
    description: str
    capabilities: Capability
    #: ``(extension without dot, device type)`` pairs.
    extensions: tuple[tuple[str, DiskType], ...]
    #: Variant names (see :data:`~vdgui.engine.types.VARIANT_FLAGS`) it can create.
    variants: tuple[str, ...] = ()
    config_keys: tuple[ConfigKey, ...] = ()
    #: Image flags the backend accepts at creation.
    image_flags_mask: ImageFlags = ImageFlags.FIXED | ImageFlags.DIFF
    #: The metadata fields the format stores (so a UI can offer only what exists):
    #: a subset of :data:`METADATA_FIELDS`; None when the backend does not say.
    stores: frozenset[str] | None = None
    #: The largest virtual size the format can create, where it has a limit.
    max_size: int | None = None

    def has(self, cap: Capability) -> bool:
        return bool(self.capabilities & cap)


#: Names used in :attr:`BackendInfo.stores`.
METADATA_FIELDS = frozenset({"uuid", "modification_uuid", "parent_uuid",
                             "parent_modification_uuid", "comment", "pchs", "lchs",
                             "parent_path"})


@dataclass(frozen=True)
class ParentLink:
    """What a new differencing image records about its parent."""

    uuid: uuidlib.UUID | None
    modification_uuid: uuidlib.UUID | None
    #: The parent's file name exactly as the container was given it.
    path: str
    #: The parent's backend name (QCOW2/QED record a backing format).
    format: str
    #: Parent modification time (VHD records it), seconds since the epoch.
    timestamp: float | None = None


@dataclass
class CreateRequest:
    """Everything a backend needs to create an image (``VDCreateBase/Diff``)."""

    path: str
    size: int
    image_flags: ImageFlags
    uuid: uuidlib.UUID
    comment: str | None = None
    pchs: Geometry = field(default_factory=Geometry)
    lchs: Geometry = field(default_factory=Geometry)
    open_flags: OpenFlags = OpenFlags.NORMAL
    disk_type: DiskType = DiskType.HDD
    parent: ParentLink | None = None
    #: Creation options (``-o KEY=VALUE``), validated against the backend's keys.
    config: Mapping[str, str] = field(default_factory=dict)
    progress: Progress | None = None


class Image(abc.ABC):
    """One opened image file (or set of files) of some format."""

    info: ClassVar[BackendInfo]

    # -- class-level entry points -------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        """Say whether ``path`` is of this format, without writing anything.

        Returns the device type the image is for.  Raises
        :class:`~vdgui.engine.errors.InvalidHeader` when the file is not of this
        format; any other error means "mine, but unusable" (VDGetFormat semantics).
        """

    @classmethod
    @abc.abstractmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags,
             disk_type: DiskType, config: Mapping[str, str] | None = None) -> Image:
        """Open an existing image.

        ``config`` is the per-image configuration (VD's config interface): options
        such as VMDK's permission to follow extent paths outside the image's folder.
        """

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> Image:
        """Create a new image and return it opened (read/write)."""
        raise NotSupported(f"the {cls.info.name} format cannot create images", request.path)

    # -- identity -----------------------------------------------------------------

    def __init__(self, io: StorageProvider, path: str, flags: OpenFlags,
                 disk_type: DiskType = DiskType.HDD) -> None:
        self.io = io
        self.path = path
        self.open_flags = flags
        self.disk_type = disk_type

    @property
    def read_only(self) -> bool:
        return bool(self.open_flags & OpenFlags.READONLY)

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("the image is opened read-only", self.path)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"

    # -- geometry of the virtual disk ----------------------------------------------

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Virtual size in bytes (``VDGetSize``)."""

    @property
    def sector_size(self) -> int:
        """Logical block size (``VDGetSectorSize``): 512, or 2048 for optical media."""
        return 2048 if self.disk_type == DiskType.DVD else SECTOR

    # -- content ------------------------------------------------------------------

    @abc.abstractmethod
    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        """What this image holds at ``offset``: a status and how many bytes it lasts.

        The run is at least 1 byte and at most ``length``; ``offset < size``.
        """

    @abc.abstractmethod
    def read_into(self, offset: int, buf: memoryview) -> None:
        """Read a range this image reported present (DATA or zero kinds)."""

    def write(self, offset: int, data: memoryview) -> None:
        """Write into storage that already exists (status DATA or ALLOCATED_ZERO)."""
        raise ReadOnly(f"the {self.info.name} format cannot be written", self.path)

    @property
    def allocation_unit(self) -> int:
        """Size of the aligned unit a write must fill whole where nothing is stored.

        A write into a FREE or ZERO range is widened to whole units, filled with what
        the chain below returns, and handed to :meth:`write_blocks`.
        """
        return SECTOR

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Allocate storage for whole units at ``offset`` and write ``data`` there.

        ``offset`` is aligned to :attr:`allocation_unit` and ``data`` covers whole
        units (the part past the end of the disk is zeros).  The range is FREE or
        ZERO in this image.  A backend that can mark a block "zero" may do so for an
        all-zero unit instead of allocating, unless opened with HONOR_ZEROES.
        """
        raise ReadOnly(f"the {self.info.name} format cannot be written", self.path)

    def write_compressed(self, offset: int, data: memoryview) -> None:
        """Store whole allocation units compressed (a compressing conversion into a
        new image); formats with compressed clusters implement it."""
        raise NotSupported(f"the {self.info.name} format cannot store compressed data",
                           self.path)

    def flush(self) -> None:
        """Write cached metadata and make everything durable."""

    # -- optional capabilities used by operations (compact, discard, resize) --------

    @property
    def can_mark_zero(self) -> bool:
        """True when :meth:`unmap` can leave units that read as zeros and hide the
        images below (VDI zero blocks, QCOW2 zero clusters, VMDK zero grains)."""
        return False

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        """Release the storage of the whole allocation units in the range.

        ``zero`` False leaves them FREE (reads fall through to the image below);
        ``zero`` True leaves them reading as zeros (needs :attr:`can_mark_zero`).
        Each table change is written at once, so an interruption loses nothing.
        The space is reclaimed by :meth:`pack`.
        """
        raise NotSupported(f"the {self.info.name} format cannot release blocks", self.path)

    def check_compactable(self) -> None:
        """Raise NotSupported, changing nothing, when this image cannot be compacted."""
        if type(self).pack is Image.pack or type(self).unmap is Image.unmap:
            raise NotSupported(f"the {self.info.name} format cannot be compacted",
                               self.path)

    def pack(self, progress: Progress | None = None) -> None:
        """Move allocated blocks into the holes :meth:`unmap` left and shrink the file."""
        raise NotSupported(f"the {self.info.name} format cannot be compacted", self.path)

    def check_resize(self, size: int) -> None:
        """Raise what :meth:`resize` would refuse for ``size``, changing nothing.

        The default: NotSupported where the format has no resize, and for a shrink,
        ShrinkNotSupported when the image stores data beyond the new end (formats
        that allow more, e.g. cutting zeros, may override).
        """
        if type(self).resize is Image.resize:
            raise NotSupported(f"the {self.info.name} format cannot be resized", self.path)
        pos = size
        while pos < self.size:
            status, run = self.block_status(pos, self.size - pos)
            if status is Status.DATA:
                raise ShrinkNotSupported(f"data is stored beyond the new end (from offset "
                                         f"{pos}); shrinking would lose it", self.path)
            pos += run

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Change the virtual size (``VDResize``), keeping the content.

        Growing must keep every byte; shrinking is refused (ShrinkNotSupported)
        unless the format allows it and nothing stored lies beyond the new end.
        """
        raise NotSupported(f"the {self.info.name} format cannot be resized", self.path)

    @abc.abstractmethod
    def close(self) -> None:
        """Write back metadata (when writable) and release the files."""

    def storages(self) -> list[Storage]:
        """The image's open files."""
        return []

    def abandon(self) -> None:
        """Release the files without writing anything (the process is going away
        after a failure; what is on disk must stay exactly as it is)."""
        for storage in self.storages():
            storage.close()

    def delete_files(self) -> None:
        """Remove the image's files; the image must be closed."""
        for path in self.files:
            self.io.delete(path)

    def set_open_flags(self, flags: OpenFlags) -> None:
        """Switch between read-only and read/write (``VDSetOpenFlags``)."""
        self.open_flags = flags

    def check_parent(self, link: ParentLink | None) -> None:
        """Raise what :meth:`set_parent` would raise for ``link``, changing nothing
        (so an operation can refuse before it starts rather than at its end)."""
        if self.parent_filename is not None and \
                type(self).set_parent is Image.set_parent:
            raise NotSupported(f"changing the parent of a {self.info.name} image is not "
                               f"supported yet", self.path)

    def set_parent(self, link: ParentLink | None) -> None:
        """Point the image at a new parent (merge, rebase); None makes it a base.

        Updates the parent UUIDs and, where the format stores them, the parent's
        path, format and time stamp.  This default suits formats that store only
        UUIDs; formats that store a parent path override it.
        """
        self.check_writable()
        if self.parent_filename is not None:
            raise NotSupported(f"changing the parent of a {self.info.name} image is not "
                               f"supported yet", self.path)
        for name, value in (("parent_uuid", link.uuid if link else None),
                            ("parent_modification_uuid",
                             link.modification_uuid if link else None)):
            try:
                setattr(self, name, value or uuidlib.UUID(int=0))
            except NotSupported:
                pass

    def transaction(self) -> ContextManager[None]:
        """A group of changes that a crash applies all or not at all.

        Single-file images journal their file's writes (``Storage.transaction``);
        multi-file formats override this.
        """
        return contextlib.nullcontext()

    def rename(self, new_path: str) -> None:
        """Move the image's files to ``new_path`` while it stays open."""
        raise NotSupported(f"the {self.info.name} format cannot be moved by renaming",
                           self.path)

    # -- what the image stores about itself ----------------------------------------

    @property
    def files(self) -> list[str]:
        """Every host file the image consists of."""
        return [self.path]

    @property
    def file_size(self) -> int:
        """Length of all the image's files together (``VDGetFileSize``)."""
        return sum(self.io.file_sizes(path)[0] for path in self.files)

    @property
    def allocated_size(self) -> int:
        """Bytes the image's files really occupy on the host (sparse files use less)."""
        return sum(self.io.file_sizes(path)[1] for path in self.files)

    @property
    def version(self) -> int:
        """The format's own version number as stored (``VDGetVersion``)."""
        return 1

    @property
    def image_flags(self) -> ImageFlags:
        """The image's variant as stored (FIXED, DIFF, format-specific bits)."""
        return ImageFlags.NONE

    @property
    def variant(self) -> list[str]:
        return variant_names(self.image_flags & ~ImageFlags.DIFF)

    @property
    def encrypted(self) -> bool:
        return False

    @property
    def parent_filename(self) -> str | None:
        """The parent's file name as the image stores it, or None."""
        return None

    @property
    def parent_format(self) -> str | None:
        """The parent's format as the image stores it (QCOW2 backing format), or None."""
        return None

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"the {self.info.name} format does not store {what}", self.path)

    # UUIDs (``VDGet/SetUuid``, ``...ModificationUuid``, ``...ParentUuid``,
    # and the backends' parent modification UUID).  Formats without them raise
    # NotSupported, as VirtualBox's do.

    @property
    def uuid(self) -> uuidlib.UUID:
        raise self._unsupported("a UUID")

    @uuid.setter
    def uuid(self, value: uuidlib.UUID) -> None:
        raise self._unsupported("a UUID")

    @property
    def modification_uuid(self) -> uuidlib.UUID:
        raise self._unsupported("a modification UUID")

    @modification_uuid.setter
    def modification_uuid(self, value: uuidlib.UUID) -> None:
        raise self._unsupported("a modification UUID")

    @property
    def parent_uuid(self) -> uuidlib.UUID:
        raise self._unsupported("a parent UUID")

    @parent_uuid.setter
    def parent_uuid(self, value: uuidlib.UUID) -> None:
        raise self._unsupported("a parent UUID")

    @property
    def parent_modification_uuid(self) -> uuidlib.UUID:
        raise self._unsupported("a parent modification UUID")

    @parent_modification_uuid.setter
    def parent_modification_uuid(self, value: uuidlib.UUID) -> None:
        raise self._unsupported("a parent modification UUID")

    @property
    def comment(self) -> str:
        raise self._unsupported("a comment")

    @comment.setter
    def comment(self, value: str) -> None:
        raise self._unsupported("a comment")

    @property
    def pchs(self) -> Geometry:
        raise GeometryNotSet("the image stores no physical geometry", self.path)

    @pchs.setter
    def pchs(self, value: Geometry) -> None:
        raise self._unsupported("a physical geometry")

    @property
    def lchs(self) -> Geometry:
        raise GeometryNotSet("the image stores no logical geometry", self.path)

    @lchs.setter
    def lchs(self, value: Geometry) -> None:
        raise self._unsupported("a logical geometry")

    def describe(self) -> list[tuple[str, str]]:
        """Format-internal structures for ``VDDumpImages``: (field, value) pairs."""
        return []


def validate_config(info: BackendInfo, config: Mapping[str, str], path: str) -> None:
    """Refuse creation options the backend does not know."""
    known = {key.name.lower() for key in info.config_keys}
    unknown = [k for k in config if k.lower() not in known]
    if unknown:
        listing = ", ".join(k.name for k in info.config_keys) or "none"
        raise InvalidParameter(
            f"the {info.name} format has no option {', '.join(unknown)} (options: {listing})",
            path)


def config_int(config: Mapping[str, str], key: str, default: int, path: str) -> int:
    """An integer creation option (case-insensitive key; size suffixes allowed)."""
    from ..sizes import parse_size
    for name, value in config.items():
        if name.lower() == key.lower():
            try:
                return parse_size(value)
            except ValueError:
                raise InvalidParameter(f"option {key}={value!r} is not a number", path) from None
    return default


def open_storage(io: StorageProvider, path: str, flags: OpenFlags) -> Storage:
    """Open an image's main file as the open flags say."""
    writable = not flags & OpenFlags.READONLY
    return io.open(path, writable=writable, shareable=bool(flags & OpenFlags.SHAREABLE))


class SingleFileImage(Image):
    """An image that lives in one file, opened as ``self.storage``.

    Subclasses implement :meth:`_load` (read and check the file's structures);
    :meth:`open` does the rest: the device-type check, opening the file, and
    closing it again when loading fails.  Formats that mark a file while it is
    open for writing (an in-use flag, a need-check or dirty bit), or check it
    before the first write, do so in :meth:`_start_writing` and
    :meth:`_end_writing`, which opening, reopening and closing call.
    """

    def __init__(self, io: StorageProvider, path: str, flags: OpenFlags,
                 disk_type: DiskType = DiskType.HDD) -> None:
        super().__init__(io, path, flags, disk_type)
        self.storage: Storage = open_storage(io, path, flags)

    @classmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags,
             disk_type: DiskType = DiskType.HDD,
             config: Mapping[str, str] | None = None) -> Image:
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType(f"{cls.info.name} images are hard disks", path)
        image = cls(io, path, flags)
        try:
            image._load()
            if not image.read_only:
                image._start_writing()
        except BaseException:
            image.storage.close()
            raise
        return image

    def _load(self) -> None:
        """Read and check the file's structures (called by :meth:`open`)."""
        raise NotImplementedError

    def _start_writing(self) -> None:
        """The file was just opened (or reopened) for writing and nothing is written
        yet: check or repair what an unclean close left, mark the file in use."""

    def _end_writing(self) -> None:
        """The file is about to be closed or reopened read-only: clear what
        :meth:`_start_writing` marked."""

    def set_open_flags(self, flags: OpenFlags) -> None:
        """Reopen the file read-only or read/write as ``flags`` say."""
        want_writable = not flags & OpenFlags.READONLY
        shareable = bool(flags & OpenFlags.SHAREABLE)
        if want_writable == self.storage.writable:
            self.open_flags = flags
        elif want_writable:
            self.storage.reopen(True, shareable)
            self.open_flags = flags
            try:
                self._start_writing()
            except BaseException:
                # Refused (or failed) before anything was marked: back to reading only,
                # writing nothing more.
                self.storage.reopen(False, shareable)
                self.open_flags = flags | OpenFlags.READONLY
                raise
        else:
            self._end_writing()
            self.flush()
            self.storage.reopen(False, shareable)
            self.open_flags = flags

    def transaction(self) -> ContextManager[None]:
        return self.storage.transaction()

    def storages(self) -> list[Storage]:
        return [self.storage]

    def rename(self, new_path: str) -> None:
        # The open descriptor stays valid across a rename on the same file system.
        self.io.move(self.path, new_path)
        self.path = self.storage.path = new_path

    def flush(self) -> None:
        if self.storage.writable:
            self.storage.flush()

    def close(self) -> None:
        try:
            if self.storage.writable:
                self._end_writing()
        finally:
            self.storage.close()


class MappedContent(Image):
    """Reading and writing through a :class:`~vdgui.engine.blockmap.BlockMap` at
    ``self.map``: the content paths of a block-map backend, which it overrides
    where its format differs (a mixin, listed before the backend's image class)."""

    map: BlockMap

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        return self.map.block_status(offset, length)

    def read_into(self, offset: int, buf: memoryview) -> None:
        self.map.read_into(offset, buf)

    def write(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        self.map.write(offset, data)


def relative_parent_path(child_path: str, parent_path: str) -> str:
    """The parent reference a new differencing image should store.

    Relative to the child's folder when the parent lies in that folder or below it
    (the chain then survives moving the folder), otherwise the absolute path.
    """
    child_dir = os.path.dirname(os.path.abspath(child_path))
    parent_abs = os.path.abspath(parent_path)
    rel = os.path.relpath(parent_abs, child_dir)
    if rel.startswith(os.pardir + os.sep) or rel == os.pardir:
        return parent_abs
    return rel


@dataclass
class CacheRequest:
    """Everything a cache backend needs to create a cache image (``VDCreateCache``)."""

    path: str
    max_size: int
    uuid: uuidlib.UUID
    comment: str | None = None
    open_flags: OpenFlags = OpenFlags.NORMAL
    config: Mapping[str, str] = field(default_factory=dict)
    progress: Progress | None = None


class Cache(abc.ABC):
    """A cache image (VCI): copies of disk ranges, consulted before the chain.

    The container asks :meth:`lookup` before reading the chain, fills the cache
    with :meth:`store` after a miss, and tells it about every change of the
    disk's content with :meth:`update`, so a cache never serves stale data.  A
    cache may decline to store anything (full, read-only); it must never return
    data it was not given.
    """

    info: ClassVar[BackendInfo]

    @classmethod
    @abc.abstractmethod
    def probe(cls, io: StorageProvider, path: str) -> None:
        """Raise InvalidHeader when ``path`` is not a cache of this format."""

    @classmethod
    @abc.abstractmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags) -> Cache:
        """Open an existing cache image."""

    @classmethod
    @abc.abstractmethod
    def create(cls, io: StorageProvider, request: CacheRequest) -> Cache:
        """Create a new cache image, returned opened read/write."""

    path: str

    @abc.abstractmethod
    def lookup(self, offset: int, length: int) -> tuple[bool, int]:
        """``(cached?, run)``: whether ``offset`` is cached, and for how many bytes
        (at least 1, at most ``length``) that answer holds."""

    @abc.abstractmethod
    def read_into(self, offset: int, buf: memoryview) -> None:
        """Read a range :meth:`lookup` reported cached."""

    @abc.abstractmethod
    def store(self, offset: int, data: memoryview) -> None:
        """Keep a copy of disk content just read (may keep part of it, or none)."""

    @abc.abstractmethod
    def update(self, offset: int, data: memoryview | None, length: int) -> None:
        """The disk's content of ``[offset, offset+length)`` changed to ``data``
        (None: to something not given, e.g. discarded); update or forget it."""

    @property
    @abc.abstractmethod
    def read_only(self) -> bool:
        """True when opened read-only (it then stores nothing)."""

    @property
    @abc.abstractmethod
    def modification_uuid(self) -> uuidlib.UUID:
        """Pairs the cache with the top image's modification UUID."""

    @modification_uuid.setter
    @abc.abstractmethod
    def modification_uuid(self, value: uuidlib.UUID) -> None: ...

    @property
    @abc.abstractmethod
    def uuid(self) -> uuidlib.UUID: ...

    @abc.abstractmethod
    def flush(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def delete_files(self) -> None:
        self.io.delete(self.path)

    io: StorageProvider
