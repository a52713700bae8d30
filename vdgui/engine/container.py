"""The HDD container (``VDCreate`` ... ``VDDestroy``): a chain of opened images.

Image 0 is the base, the last one the top.  Reads fall through the chain: each
image is asked what it holds at an offset, and where it holds nothing the next
image down is asked about exactly that run; below the base everything reads as
zeros.  Writes go to the top image; where the top has no storage yet, the write is
widened to whole allocation units, filled with what the chain below returns, and
dropped altogether when it would change nothing (unless HONOR_SAME).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from . import registry
from .blockmap import changed_units, fill_zero, runs_of, zero_units
from .errors import (AccessDenied, CacheAlreadyExists, CacheNotFound, CacheNotUpToDate,
                     GeometryNotSet, ImageInUse, ImageNotFound,
                     InvalidParameter,
                     InvalidSize, InvalidState, InvalidType, NotOpened, NotSupported,
                     ReadOnly, UuidMismatch, VDError)
from .formats.base import Cache, CacheRequest, CreateRequest, Image, ParentLink
from .image_view import ImageView
from .io import StorageProvider, buffer, default_provider
from .progress import Progress, report
from .sizes import align_down, align_up
from .types import (CONTAINER_OPEN_FLAGS, IMAGE_FLAGS_MASK, LAST_IMAGE, NIL_UUID,
                    OPEN_FLAGS_MASK, SECTOR, Capability, DiskType, Geometry, ImageFlags,
                    OpenFlags, Status)

log = logging.getLogger(__name__)

#: Largest piece a write allocates in one go (memory bound for huge writes).
MAX_ALLOCATION_BATCH = 16 << 20


@dataclass
class _Slot:
    """One image of the chain and what the container keeps about it."""

    image: Image
    backend: str
    flags: ImageFlags  # sanitised: DIFF set for every image with a parent
    generic_flags: OpenFlags  # HONOR_SAME, DISCARD, ... kept by the container
    read_only_reason: str = ""

    @property
    def honor_same(self) -> bool:
        return bool(self.generic_flags & OpenFlags.HONOR_SAME)


@dataclass(frozen=True)
class MapExtent:
    """One extent of :meth:`Disk.map`: which image holds ``[offset, offset+length)``."""

    offset: int
    length: int
    depth: int | None  # chain index, None where no image holds it (zeros)
    path: str | None
    zero: bool
    status: Status = field(default=Status.FREE, compare=False)


class Disk:
    """``VDCreate``: an HDD container holding a chain of images.

    Use as a context manager, or call :meth:`close_all` (``VDDestroy``) when done:
    every image is closed even when closing one of them fails.
    """

    def __init__(self, disk_type: DiskType = DiskType.HDD,
                 io: StorageProvider | None = None) -> None:
        self.disk_type = disk_type
        self.io = io or default_provider()
        self._slots: list[_Slot] = []
        #: Held by every call; operations hold it across their steps.
        self.lock = threading.RLock()
        self._size = 0
        self._pchs = Geometry()
        self._lchs = Geometry()
        self._first_write_pending = False
        self._modified = False
        self._cache: Cache | None = None

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()

    def __len__(self) -> int:
        return len(self._slots)

    def __repr__(self) -> str:
        return f"<Disk {[s.image.path for s in self._slots]}>"

    # -- chain bookkeeping ---------------------------------------------------------

    @property
    def count(self) -> int:
        """``VDGetCount``."""
        return len(self._slots)

    def _index(self, n: int) -> int:
        if n == LAST_IMAGE or n == -1:
            n = len(self._slots) - 1
        if not 0 <= n < len(self._slots):
            raise ImageNotFound(f"there is no image number {n} in the chain "
                                f"(it has {len(self._slots)})")
        return n

    def _slot(self, n: int) -> _Slot:
        return self._slots[self._index(n)]

    def _writable_slot(self, n: int) -> _Slot:
        """Image ``n``'s slot, or ReadOnly saying why it cannot be changed."""
        slot = self._slot(n)
        if slot.image.read_only:
            why = f" ({slot.read_only_reason})" if slot.read_only_reason else ""
            raise ReadOnly(f"the image is opened read-only{why}", slot.image.path)
        return slot

    def _top(self) -> _Slot:
        if not self._slots:
            raise NotOpened("no image is opened")
        return self._slots[-1]

    def __getitem__(self, n: int) -> ImageView:
        return ImageView(self, self._index(n))

    @property
    def images(self) -> list[ImageView]:
        return [ImageView(self, i) for i in range(len(self._slots))]

    def image(self, n: int) -> Image:
        """The backend object of image ``n`` (for operations inside the engine)."""
        return self._slot(n).image

    def _refresh_cache(self) -> None:
        """Cached size and geometry come from the top image."""
        if not self._slots:
            self._size = 0
            self._pchs = self._lchs = Geometry()
            return
        top = self._slots[-1].image
        self._size = top.size
        self._pchs = _geometry_or_none(lambda: top.pchs).clipped_pchs()
        self._lchs = _geometry_or_none(lambda: top.lchs).clipped_lchs()

    @property
    def size(self) -> int:
        """The container's virtual size: the top image's size."""
        return self._size

    @property
    def is_read_only(self) -> bool:
        """``VDIsReadOnly``: the top image's state; true when empty."""
        return not self._slots or self._slots[-1].image.read_only

    # -- opening -------------------------------------------------------------------

    def open(self, path: str | os.PathLike[str], backend: str | None = None,
             flags: OpenFlags = OpenFlags.NORMAL,
             config: Mapping[str, str] | None = None) -> int:
        """``VDOpen``: add an existing image on top of the chain; returns its number.

        ``backend`` None probes the format; ``config`` is the per-image configuration
        the backend understands.  Differencing images must be opened on
        top of the image they were made from: their stored parent UUID is checked
        (``VERR_VD_UUID_MISMATCH``) unless ``INFO`` is given.
        """
        path = os.fspath(path)
        flags = OpenFlags(flags)
        _check_open_flags(flags)
        with self.lock:
            if backend is None:
                backend, _ = registry.probe(path, self.disk_type, self.io)
            cls = registry.backend_class(backend)
            caps = cls.info.capabilities
            if flags & OpenFlags.ASYNC_IO and not caps & Capability.ASYNC:
                raise NotSupported(f"the {cls.info.name} format has no asynchronous I/O", path)
            if flags & OpenFlags.DISCARD and not caps & Capability.DISCARD:
                raise NotSupported(f"the {cls.info.name} format cannot discard", path,
                                   status="VERR_VD_DISCARD_NOT_SUPPORTED")
            backend_flags = flags & ~CONTAINER_OPEN_FLAGS
            reason = ""
            try:
                image = cls.open(self.io, path, backend_flags, self.disk_type, config)
            except (AccessDenied, ImageInUse) as exc:
                if flags & OpenFlags.READONLY:
                    raise
                # VDOpen's fallback: open read-only and say why in later write errors.
                image = cls.open(self.io, path, backend_flags | OpenFlags.READONLY,
                                 self.disk_type, config)
                reason = exc.message
            try:
                slot = self._make_slot(image, cls.info.name, flags, reason)
                _check_shareable(slot, flags)
                self._link(slot, flags)
            except BaseException:
                image.close()
                raise
            self._append(slot)
            return len(self._slots) - 1

    def _make_slot(self, image: Image, backend: str, flags: OpenFlags,
                   reason: str) -> _Slot:
        sanitised = image.image_flags
        if self._slots:
            sanitised |= ImageFlags.DIFF
        if _parent_uuid_or_nil(image) != NIL_UUID or image.parent_filename:
            sanitised |= ImageFlags.DIFF
        generic = flags & CONTAINER_OPEN_FLAGS
        if sanitised & ImageFlags.FIXED:
            generic |= OpenFlags.HONOR_SAME
        return _Slot(image, backend, ImageFlags(sanitised), OpenFlags(generic), reason)

    def _link(self, slot: _Slot, flags: OpenFlags) -> None:
        """The type and linkage checks VDOpen does (and VirtualBox skips)."""
        if flags & OpenFlags.INFO:
            return
        image = slot.image
        if not self._slots:
            if slot.flags & ImageFlags.DIFF:
                raise InvalidType("this is a differencing image: open its parent first "
                                  "(or open the whole chain)", image.path)
            return
        if image.image_flags & ImageFlags.FIXED:
            raise InvalidType("a fixed image cannot be a differencing image", image.path)
        below = self._slots[-1].image
        parent_uuid = _parent_uuid_or_nil(image)
        below_uuid = _uuid_or_none(below)
        if parent_uuid != NIL_UUID and below_uuid is not None and parent_uuid != below_uuid:
            raise UuidMismatch(
                f"this differencing image belongs on top of the image with UUID "
                f"{parent_uuid}, but the image below it ({below.path}) has UUID {below_uuid}",
                image.path)

    @staticmethod
    def _apply_storage_flags(slot: _Slot) -> None:
        """IGNORE_FLUSH and SEQUENTIAL act on the image's files."""
        ignore = bool(slot.generic_flags & OpenFlags.IGNORE_FLUSH)
        sequential = bool(slot.image.open_flags & OpenFlags.SEQUENTIAL)
        for storage in slot.image.storages():
            storage.ignore_flush = ignore
            if sequential:
                storage.advise_sequential()

    def _append(self, slot: _Slot) -> None:
        if self._slots:
            previous = self._slots[-1]
            if not previous.image.read_only:
                previous.image.set_open_flags(previous.image.open_flags | OpenFlags.READONLY)
        self._slots.append(slot)
        self._apply_storage_flags(slot)
        self._refresh_cache()
        self._first_write_pending = not slot.image.read_only
        self._modified = False
        self._forget_cached()

    # -- creating ------------------------------------------------------------------

    def create_base(self, path: str | os.PathLike[str], size: int, backend: str = "VDI",
                    image_flags: ImageFlags = ImageFlags.NONE, comment: str | None = None,
                    pchs: Geometry | None = None, lchs: Geometry | None = None,
                    uuid: uuidlib.UUID | None = None,
                    open_flags: OpenFlags = OpenFlags.NORMAL,
                    config: Mapping[str, str] | None = None,
                    progress: Progress | None = None) -> int:
        """``VDCreateBase``: create a new base image in an empty container."""
        path = os.fspath(path)
        image_flags = ImageFlags(image_flags)
        pchs = pchs or Geometry()
        lchs = lchs or Geometry()
        with self.lock:
            if self._slots:
                raise InvalidState("the container already holds images; a base image can "
                                   "only be created in an empty one", path)
            if size <= 0:
                raise InvalidParameter("the size of a new image must be larger than 0", path)
            if size % SECTOR and not image_flags & ImageFlags.VMDK_RAWDISK:
                raise InvalidSize(f"the size {size} is not aligned on a sector boundary "
                                  f"(a multiple of 512 bytes)", path)
            pchs.validate_pchs()
            lchs.validate_lchs()
            cls = registry.backend_class(backend)
            if cls.info.has(Capability.CREATE_FIXED) and not cls.info.has(
                    Capability.CREATE_DYNAMIC):
                image_flags |= ImageFlags.FIXED  # RAW: every image is fixed
            self._check_create_flags(cls, image_flags, path)
            if not cls.info.capabilities & (Capability.CREATE_FIXED | Capability.CREATE_DYNAMIC):
                raise InvalidParameter(f"the {cls.info.name} format cannot create base images",
                                       path)
            request = CreateRequest(
                path=path, size=size, image_flags=image_flags & ~ImageFlags.DIFF,
                uuid=uuid or uuidlib.uuid4(), comment=comment, pchs=pchs, lchs=lchs,
                open_flags=OpenFlags(open_flags), disk_type=self.disk_type,
                config=dict(config or {}), progress=progress)
            image = self._create(cls, request)
            slot = self._make_slot(image, cls.info.name, request.open_flags, "")
            self._append(slot)
            report(progress, 1, 1, "done")
            return len(self._slots) - 1

    def create_diff(self, path: str | os.PathLike[str], backend: str | None = None,
                    image_flags: ImageFlags = ImageFlags.NONE, comment: str | None = None,
                    uuid: uuidlib.UUID | None = None,
                    parent_uuid: uuidlib.UUID | None = None,
                    open_flags: OpenFlags = OpenFlags.NORMAL,
                    config: Mapping[str, str] | None = None,
                    progress: Progress | None = None) -> int:
        """``VDCreateDiff``: create a differencing image on top of the chain.

        The new image has the container's size and geometry; its parent UUID is
        ``parent_uuid`` or the current top's UUID.  ``backend`` None uses the top's
        format where it supports differencing images.
        """
        path = os.fspath(path)
        with self.lock:
            top = self._top() if self._slots else None
            if top is None:
                raise InvalidState("a differencing image needs a parent: open or create "
                                   "one first", path)
            cls = registry.backend_class(backend or top.backend)
            caps = cls.info.capabilities
            if not caps & Capability.DIFF or not caps & (Capability.CREATE_DYNAMIC
                                                           | Capability.CREATE_FIXED):
                raise InvalidParameter(f"the {cls.info.name} format cannot create "
                                       f"differencing images", path)
            image_flags = ImageFlags(image_flags)
            if image_flags & ImageFlags.FIXED:
                raise InvalidParameter("a differencing image cannot be fixed", path)
            self._check_create_flags(cls, image_flags, path)
            link = self.parent_link(len(self._slots) - 1)
            if parent_uuid and parent_uuid != NIL_UUID:
                link = dataclasses.replace(link, uuid=parent_uuid)
            if link.uuid is None and cls.parent_filename is Image.parent_filename:
                # The child could never find its parent again.
                raise InvalidType(f"a {cls.info.name} differencing image links to its parent "
                                  f"only by UUID, and the {top.backend} image below has "
                                  f"none; choose a format that stores the parent's path",
                                  path)
            request = CreateRequest(
                path=path, size=self._size, image_flags=image_flags | ImageFlags.DIFF,
                uuid=uuid or uuidlib.uuid4(), comment=comment, pchs=self._pchs,
                lchs=self._lchs, open_flags=OpenFlags(open_flags), disk_type=self.disk_type,
                parent=link, config=dict(config or {}), progress=progress)
            image = self._create(cls, request)
            slot = self._make_slot(image, cls.info.name, request.open_flags, "")
            try:
                self._append(slot)
            except BaseException:
                image.close()
                image.delete_files()
                raise
            report(progress, 1, 1, "done")
            return len(self._slots) - 1

    def parent_link(self, n: int) -> ParentLink:
        """What a child of image ``n`` records about it as its parent."""
        slot = self._slot(n)
        image = slot.image
        return ParentLink(uuid=_uuid_or_none(image),
                          modification_uuid=_modification_uuid_or_none(image),
                          path=image.path, format=slot.backend, timestamp=_mtime(image.path))

    def remove_images(self, first: int, last: int, delete: bool) -> None:
        """Close images ``first`` .. ``last`` (inclusive) from the middle of the chain.

        For merges, once the remaining images are linked past them.  Files are
        deleted when ``delete`` is true, the highest image first, so that an
        interruption never leaves an image whose parent is gone.  Errors are raised
        after every image was handled.
        """
        with self.lock:
            removed = self._slots[first:last + 1]
            del self._slots[first:last + 1]
            self._refresh_cache()
            first_error: BaseException | None = None
            for slot in reversed(removed):
                try:
                    slot.image.close()
                    if delete:
                        slot.image.delete_files()
                except Exception as exc:
                    log.error("removing %s failed: %s", slot.image.path, exc)
                    first_error = first_error or exc
            if first_error is not None:
                raise first_error

    @staticmethod
    def _check_create_flags(cls: type[Image], flags: ImageFlags, path: str) -> None:
        info = cls.info
        if flags & ~IMAGE_FLAGS_MASK:
            raise InvalidParameter(f"unknown image flags {int(flags):#x}", path)
        if flags & ImageFlags.VMDK_RAWDISK and flags & ~(ImageFlags.VMDK_RAWDISK
                                                          | ImageFlags.FIXED):
            raise InvalidParameter("a raw-disk image can only be combined with fixed", path)
        if flags & ImageFlags.FIXED and not info.has(Capability.CREATE_FIXED):
            raise InvalidParameter(f"the {info.name} format cannot create fixed images "
                                   f"(variants: {', '.join(info.variants)})", path)
        if not flags & ImageFlags.FIXED and not info.has(Capability.CREATE_DYNAMIC) \
                and not flags & ImageFlags.DIFF:
            raise InvalidParameter(f"the {info.name} format cannot create dynamically "
                                   f"growing images (variants: {', '.join(info.variants)})",
                                   path)
        if flags & ImageFlags.VMDK_SPLIT_2G and not info.has(Capability.CREATE_SPLIT_2G):
            raise InvalidParameter(f"the {info.name} format cannot split images", path)
        extra = flags & ~(info.image_flags_mask | ImageFlags.DIFF)
        if extra:
            raise InvalidParameter(f"the {info.name} format does not support the selected "
                                   f"variant (variants: {', '.join(info.variants)})", path)

    def _create(self, cls: type[Image], request: CreateRequest) -> Image:
        existed = self.io.exists(request.path)
        try:
            image = cls.create(self.io, request)
        except BaseException:
            # A failed create removes what it made, never a file that was there before.
            if not existed and self.io.exists(request.path):
                try:
                    self.io.delete(request.path)
                except VDError:
                    log.warning("could not remove %s after a failed create", request.path)
            raise
        if request.open_flags & OpenFlags.READONLY:
            image.set_open_flags(image.open_flags | OpenFlags.READONLY)
        return image

    # -- closing -------------------------------------------------------------------

    def close(self, delete: bool = False) -> None:
        """``VDClose``: close the top image (and delete its files when asked)."""
        with self.lock:
            slot = self._top()
            self._slots.pop()
            was_writable = not slot.image.read_only
            try:
                slot.image.close()
                if delete:
                    slot.image.delete_files()
            finally:
                self._refresh_cache()
                self._forget_cached()
                if was_writable and self._slots:
                    new_top = self._slots[-1].image
                    new_top.set_open_flags(new_top.open_flags & ~OpenFlags.READONLY)
                    self._first_write_pending = True
                    self._modified = False

    def close_all(self) -> None:
        """``VDCloseAll`` / ``VDDestroy``: close the cache, then every image, top first.

        Closing continues after a failure; the first error is raised at the end.
        """
        with self.lock:
            first_error: BaseException | None = None
            if self._cache is not None:
                cache, self._cache = self._cache, None
                try:
                    cache.close()
                except Exception as exc:
                    log.error("closing the cache %s failed: %s", cache.path, exc)
                    first_error = exc
            while self._slots:
                slot = self._slots.pop()
                try:
                    slot.image.close()
                except Exception as exc:  # keep closing the others
                    log.error("closing %s failed: %s", slot.image.path, exc)
                    first_error = first_error or exc
            self._refresh_cache()
            if first_error is not None:
                raise first_error

    destroy = close_all

    # -- the cache image --------------------------------------------------------------

    @property
    def cache(self) -> Cache | None:
        """The attached cache image, if any."""
        return self._cache

    def create_cache(self, path: str | os.PathLike[str], max_size: int, backend: str = "VCI",
                     comment: str | None = None, uuid: uuidlib.UUID | None = None,
                     open_flags: OpenFlags = OpenFlags.NORMAL,
                     config: Mapping[str, str] | None = None,
                     progress: Progress | None = None) -> None:
        """``VDCreateCache``: create a cache image and attach it."""
        path = os.fspath(path)
        with self.lock:
            if self._cache is not None:
                raise CacheAlreadyExists("the container already has a cache", path)
            if max_size <= 0:
                raise InvalidParameter("a cache needs a size larger than 0", path)
            cls = registry.cache_class(backend)
            request = CacheRequest(path, max_size, uuid or uuidlib.uuid4(), comment,
                                   OpenFlags(open_flags), dict(config or {}), progress)
            cache = cls.create(self.io, request)
            if self._slots:
                mod = _modification_uuid_or_none(self._slots[-1].image)
                if mod is not None:
                    cache.modification_uuid = mod
            self._cache = cache

    def open_cache(self, path: str | os.PathLike[str], backend: str | None = None,
                   flags: OpenFlags = OpenFlags.NORMAL) -> None:
        """``VDCacheOpen``: attach an existing cache made for the top image."""
        path = os.fspath(path)
        with self.lock:
            if self._cache is not None:
                raise CacheAlreadyExists("the container already has a cache", path)
            cls = registry.cache_class(backend) if backend else registry.probe_cache(
                path, self.io)
            try:
                cache = cls.open(self.io, path, flags)
            except (AccessDenied, ImageInUse):
                if flags & OpenFlags.READONLY:
                    raise
                cache = cls.open(self.io, path, flags | OpenFlags.READONLY)
            if self._slots:
                mod = _modification_uuid_or_none(self._slots[-1].image)
                if mod is not None and cache.modification_uuid not in (mod, NIL_UUID):
                    cache.close()
                    raise CacheNotUpToDate("the cache was made for other content of the "
                                           "disk (its modification UUID differs)", path)
            self._cache = cache

    def close_cache(self, delete: bool = False) -> None:
        """``VDCacheClose``: detach the cache (and delete its file when asked)."""
        with self.lock:
            if self._cache is None:
                raise CacheNotFound("the container has no cache")
            cache, self._cache = self._cache, None
            cache.close()
            if delete:
                cache.delete_files()

    def cache_update(self, offset: int, length: int) -> None:
        """Tell the cache a range changed by other means than :meth:`write`."""
        if self._cache is not None:
            self._cache.update(offset, None, length)

    def _forget_cached(self) -> None:
        """The top image changed: what the cache holds may no longer be the disk's."""
        if self._cache is not None:
            self._cache.update(0, None, max(self._size, 1) << 1)

    # -- reading -------------------------------------------------------------------

    def _check_range(self, offset: int, length: int, what: str) -> None:
        if not self._slots:
            raise NotOpened("no image is opened")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise InvalidParameter(
                f"{what} of {length} bytes at offset {offset} lies outside the disk "
                f"(size {self._size} bytes)", self._slots[-1].image.path)

    def read(self, offset: int, length: int) -> bytes:
        """``VDRead``: ``length`` bytes of the virtual disk at ``offset``."""
        buf = bytearray(length)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, offset: int, buf: memoryview | bytearray) -> None:
        """``VDRead`` into a caller's buffer (through the cache, when one is attached)."""
        view = memoryview(buf).cast("B")
        with self.lock:
            self._check_range(offset, len(view), "a read")
            if self._cache is None:
                self.read_chain(offset, view, len(self._slots) - 1)
            else:
                self._read_cached(offset, view)

    def _read_cached(self, offset: int, view: memoryview) -> None:
        cache = self._cache
        assert cache is not None
        pos, end = offset, offset + len(view)
        while pos < end:
            hit, run = cache.lookup(pos, end - pos)
            part = view[pos - offset:pos - offset + run]
            if hit:
                try:
                    cache.read_into(pos, part)
                except VDError as exc:  # a cache is disposable: read the chain instead
                    log.warning("the cache %s failed (%s); reading the images", cache.path,
                                exc)
                    self.read_chain(pos, part, len(self._slots) - 1)
            else:
                self.read_chain(pos, part, len(self._slots) - 1)
                if not cache.read_only:
                    cache.store(pos, part)
            pos += run

    def read_chain(self, offset: int, buf: memoryview, top: int, bottom: int = 0) -> None:
        """Read through images ``top`` down to ``bottom``; below them, zeros.

        For operations inside the engine (merge, copy): no locking, no range check.
        """
        pos, end = offset, offset + len(buf)
        while pos < end:
            depth, status, length = self.resolve(pos, end - pos, top, bottom)
            at = pos - offset
            if status is Status.DATA:
                self._slots[depth].image.read_into(pos, buf[at:at + length])
            else:
                fill_zero(buf, at, at + length)
            pos += length

    def resolve(self, offset: int, length: int, top: int,
                 bottom: int = 0) -> tuple[int, Status, int]:
        """Which image (``top`` .. ``bottom``) answers for ``offset``, and for how long.

        Returns ``(depth, status, length)``; depth -1 and FREE where none does.  A
        lower image is asked only about the run the image above left free.  For
        operations inside the engine: no locking, no range check.
        """
        for depth in range(top, bottom - 1, -1):
            image = self._slots[depth].image
            if offset >= image.size:
                continue  # past an image's own size it holds nothing
            status, run = image.block_status(offset, min(length, image.size - offset))
            length = run
            if status.present:
                return depth, status, length
        return -1, Status.FREE, length

    def block_status(self, offset: int, length: int) -> tuple[int | None, Status, int]:
        """Which image of the chain holds ``offset``: ``(depth or None, status, run)``."""
        with self.lock:
            self._check_range(offset, length, "a query")
            depth, status, run = self.resolve(offset, length, len(self._slots) - 1)
            return (depth if depth >= 0 else None), status, run

    def map(self, offset: int = 0, length: int | None = None) -> Iterator[MapExtent]:
        """Extents covering the disk, each naming the image that holds it."""
        end = self._size if length is None else offset + length
        pending: MapExtent | None = None
        pos = offset
        while pos < end:
            depth, status, run = self.block_status(pos, end - pos)
            path = self._slots[depth].image.path if depth is not None else None
            zero = depth is None or status.reads_zero
            if pending and (pending.depth, pending.zero, pending.status) == (depth, zero, status):
                pending = MapExtent(pending.offset, pending.length + run, depth, path, zero,
                                    status)
            else:
                if pending:
                    yield pending
                pending = MapExtent(pos, run, depth, path, zero, status)
            pos += run
        if pending:
            yield pending

    # -- writing -------------------------------------------------------------------

    def write(self, offset: int, data: bytes | bytearray | memoryview, *,
              track_modification: bool = True) -> None:
        """``VDWrite``: write ``data`` at ``offset`` into the top image.

        ``track_modification`` False is for internal copies (``VDCopy``), which must
        not renew the modification UUID.
        """
        view = memoryview(data).cast("B")
        with self.lock:
            self._check_range(offset, len(view), "a write")
            self._writable_slot(-1)
            if not view:
                return
            if track_modification:
                self._mark_modified()
            top = len(self._slots) - 1
            try:
                self.write_image(top, offset, view, top - 1)
            except BaseException:
                self.cache_update(offset, len(view))  # part may be written: forget it
                raise
            if self._cache is not None:
                self._cache.update(offset, view, len(view))

    def write_image(self, index: int, offset: int, data: memoryview, below: int) -> None:
        """The write path into image ``index``, with images ``below`` .. 0 beneath it.

        Where the image has no storage yet, the write is widened to whole units,
        filled from the chain below and dropped unit by unit where it changes
        nothing.  Merges pass a ``below`` other than ``index - 1`` (the chain that
        remains after the merge).  For operations inside the engine: no locking, no
        range or read-only check.
        """
        slot = self._slots[index]
        image = slot.image
        pos, end = offset, offset + len(data)
        while pos < end:
            status, run = image.block_status(pos, end - pos)
            if status.in_place:
                image.write(pos, data[pos - offset:pos - offset + run])
                pos += run
                continue
            unit = image.allocation_unit
            start = align_down(pos, unit)
            stop = min(pos + run, start + max(unit, align_down(MAX_ALLOCATION_BATCH, unit)))
            unit_end = align_up(stop, unit)
            filled = min(unit_end, image.size) - start
            old_is_zero = status is Status.ZERO or below < 0
            if pos == start and stop == start + filled == unit_end and (
                    old_is_zero or slot.honor_same):
                # Whole units replaced and nothing below to compare with: no copy.
                new = data[pos - offset:stop - offset]
                old: bytes | None = None
            else:
                block = buffer(unit_end - start)
                if status is Status.FREE and below >= 0:
                    self.read_chain(start, block[:filled], below)
                old = None if old_is_zero else bytes(block)
                block[pos - start:stop - start] = data[pos - offset:stop - offset]
                new = block
            if slot.honor_same:
                image.write_blocks(start, new)
            else:
                changed = (~zero_units(new, unit) if old is None
                           else changed_units(new, old, unit))
                for first, count, value in runs_of(changed):
                    if value:
                        image.write_blocks(start + first * unit,
                                           new[first * unit:(first + count) * unit])
            pos = stop

    def _mark_modified(self) -> None:
        """Modification tracking (VD section 12): new UUID on the first write."""
        self._modified = True
        if self._first_write_pending:
            self._first_write_pending = False
            self._renew_modification_uuid()
            self._slots[-1].image.flush()

    def _renew_modification_uuid(self) -> None:
        if not self._modified:
            return
        self._modified = False
        new = uuidlib.uuid4()
        try:
            self._slots[-1].image.modification_uuid = new
        except NotSupported:
            return
        if self._cache is not None and not self._cache.read_only:
            self._cache.modification_uuid = new  # the cache stays paired with the top

    def flush(self) -> None:
        """``VDFlush``: write the top image's metadata and make it durable."""
        with self.lock:
            slot = self._top()
            if slot.image.read_only:
                return
            self._renew_modification_uuid()
            slot.image.flush()
            if self._cache is not None and not self._cache.read_only:
                self._cache.flush()

    # -- per-image getters and setters ---------------------------------------------

    def set_uuid(self, n: int, value: uuidlib.UUID | None = None) -> None:
        """``VDSetUuid``: None generates a fresh random UUID."""
        with self.lock:
            self._writable_slot(n).image.uuid = value or uuidlib.uuid4()

    def set_modification_uuid(self, n: int, value: uuidlib.UUID | None = None) -> None:
        """``VDSetModificationUuid``: None generates a fresh random UUID."""
        with self.lock:
            self._writable_slot(n).image.modification_uuid = value or uuidlib.uuid4()

    def set_parent_uuid(self, n: int, value: uuidlib.UUID | None = None) -> None:
        """``VDSetParentUuid``.  None clears the link (VirtualBox invents a random one)."""
        with self.lock:
            self._writable_slot(n).image.parent_uuid = value or NIL_UUID

    def set_parent_modification_uuid(self, n: int, value: uuidlib.UUID | None = None) -> None:
        with self.lock:
            self._writable_slot(n).image.parent_modification_uuid = value or NIL_UUID

    def set_comment(self, n: int, value: str | None) -> None:
        """``VDSetComment``: None clears the comment."""
        with self.lock:
            self._writable_slot(n).image.comment = value or ""

    def set_pchs(self, n: int, geometry: Geometry) -> None:
        """``VDSetPCHSGeometry``."""
        geometry.validate_pchs()
        with self.lock:
            index = self._index(n)
            image = self._slots[index].image
            if _geometry_or_none(lambda: image.pchs) == geometry:
                return
            self._writable_slot(index)
            image.pchs = geometry
            if index == len(self._slots) - 1:
                self._refresh_cache()

    def set_lchs(self, n: int, geometry: Geometry) -> None:
        """``VDSetLCHSGeometry``."""
        geometry.validate_lchs()
        with self.lock:
            index = self._index(n)
            image = self._slots[index].image
            if _geometry_or_none(lambda: image.lchs) == geometry:
                return
            self._writable_slot(index)
            image.lchs = geometry
            if index == len(self._slots) - 1:
                self._refresh_cache()

    def pchs(self, n: int = LAST_IMAGE) -> Geometry:
        """``VDGetPCHSGeometry``: raises GeometryNotSet when none is stored."""
        with self.lock:
            index = self._index(n)
            if index == len(self._slots) - 1:
                if not self._pchs.is_set:
                    raise GeometryNotSet("the image stores no physical geometry",
                                         self._slots[index].image.path)
                return self._pchs
            return self._slots[index].image.pchs

    def lchs(self, n: int = LAST_IMAGE) -> Geometry:
        """``VDGetLCHSGeometry``: raises GeometryNotSet when none is stored."""
        with self.lock:
            index = self._index(n)
            if index == len(self._slots) - 1:
                if not self._lchs.is_set:
                    raise GeometryNotSet("the image stores no logical geometry",
                                         self._slots[index].image.path)
                return self._lchs
            return self._slots[index].image.lchs

    def open_flags(self, n: int) -> OpenFlags:
        """``VDGetOpenFlags``: the backend's flags plus the container's own."""
        slot = self._slot(n)
        return OpenFlags(slot.image.open_flags | slot.generic_flags)

    def set_open_flags(self, n: int, flags: OpenFlags) -> None:
        """``VDSetOpenFlags``."""
        flags = OpenFlags(flags)
        _check_open_flags(flags)
        with self.lock:
            index = self._index(n)
            slot = self._slots[index]
            was_read_only = slot.image.read_only
            slot.image.set_open_flags(flags & ~CONTAINER_OPEN_FLAGS)
            slot.generic_flags = flags & CONTAINER_OPEN_FLAGS
            if slot.flags & ImageFlags.FIXED:
                slot.generic_flags |= OpenFlags.HONOR_SAME
            self._apply_storage_flags(slot)
            slot.read_only_reason = ""
            if index == len(self._slots) - 1 and was_read_only and not slot.image.read_only:
                self._first_write_pending = True

    def dump(self) -> str:
        """``VDDumpImages``: every image, base first, with its internal structures."""
        lines = []
        with self.lock:
            for depth, slot in enumerate(self._slots):
                lines.append(f'Dumping VD image "{slot.image.path}" (Backend={slot.backend})')
                for name, value in slot.image.describe():
                    lines.append(f"  {name}: {value}")
        return "\n".join(lines)


def _check_shareable(slot: _Slot, flags: OpenFlags) -> None:
    """Several writers at once are safe only where no write allocates anything."""
    if flags & OpenFlags.SHAREABLE and not slot.image.read_only and (
            not slot.flags & ImageFlags.FIXED or slot.flags & ImageFlags.DIFF):
        raise InvalidType("only fixed base images can be opened shareable for writing: "
                          "writers of a growing image would allocate the same space",
                          slot.image.path)


def _check_open_flags(flags: OpenFlags) -> None:
    if int(flags) & ~OPEN_FLAGS_MASK:
        raise InvalidParameter(f"unknown open flags {int(flags):#x}")
    if flags & OpenFlags.SKIP_CONSISTENCY_CHECKS and not flags & OpenFlags.READONLY:
        raise InvalidParameter("SKIP_CONSISTENCY_CHECKS is only allowed with READONLY")


def _uuid_or_none(image: Image) -> uuidlib.UUID | None:
    try:
        return image.uuid
    except NotSupported:
        return None


def _parent_uuid_or_nil(image: Image) -> uuidlib.UUID:
    try:
        return image.parent_uuid
    except NotSupported:
        return NIL_UUID


def _modification_uuid_or_none(image: Image) -> uuidlib.UUID | None:
    try:
        return image.modification_uuid
    except NotSupported:
        return None


def _geometry_or_none(get) -> Geometry:
    try:
        return get()
    except VDError:
        return Geometry()


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
