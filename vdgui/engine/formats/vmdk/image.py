"""VmdkImage: one VMDK disk — a descriptor and the extents it names.

Opening reads the descriptor (a text file, or the one embedded in a monolithic
sparse file), resolves and opens every extent, and lays them end to end: extent
*i* covers the virtual disk from the sum of the sizes before it.  Every call from
the container is split at extent boundaries and handed to the extents with
offsets relative to them.

Metadata lives in the descriptor: the UUIDs and the comment in ``ddb.*`` keys,
the geometry in ``ddb.geometry.*``, the content identifier ``CID`` (a new random
one is written the first time content changes after an open, so that VMware
tools notice a changed parent) and, in differencing images, ``parentCID`` and
``parentFileNameHint``.  Any change rewrites the descriptor in place; an embedded
descriptor cannot grow past its reserved area.

Maintenance works on hosted sparse extents (monolithicSparse, twoGbMaxExtentSparse,
differencing images): ``unmap`` releases grains (free, or zero grains where the
header allows them), ``pack`` moves grains into the holes and cuts the files;
resizing grows any variant but streams and raw disks, and shrinks sparse and flat
ones when nothing is stored beyond the new end.  streamOptimized images are
compressed and written once: they cannot be compacted in place.

Extent paths are trusted only inside the descriptor's folder: an absolute path,
one that climbs out with ``..`` or through a symbolic link, and every raw-disk
descriptor need ``AllowExternalExtents=1`` in the per-image configuration
(``Disk.open(..., config=...)``).  Opened with INFO (inspection only) such an
image still opens, and I/O on the refused extents fails.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import os
import uuid as uuidlib
from typing import Iterator, Mapping

import numpy as np

from ...blockmap import zeros
from ...errors import (Corrupted, GeometryNotSet, InvalidHeader, InvalidParameter,
                       InvalidSize, InvalidState, InvalidType, NotSupported,
                       ShrinkNotSupported, VDError)
from ...io import Storage, StorageProvider
from ...progress import Progress
from ...types import (NIL_UUID, SECTOR, Capability, ConfigKey, ConfigKeyFlags,
                      ConfigValueType, DiskType, Geometry, ImageFlags, OpenFlags, Status)
from ..base import (BackendInfo, CreateRequest, Image, ParentLink, relative_parent_path,
                    validate_config)
from .config import ALLOW_EXTERNAL, flag
from .create import MAX_DYNAMIC_SIZE, SPLIT_SIZE, Creator, allocate
from .descriptor import (LCHS_KEYS, NO_PARENT_CID, PCHS_KEYS, UUID_KEYS, Descriptor,
                         ExtentLine, decode_comment, encode, encode_comment,
                         looks_like_descriptor, new_cid, read_cid, read_descriptor)
from .extents import Extent, FlatExtent, UnusableExtent, ZeroExtent
from .sparse import COWD_MAGIC, MAGIC, SparseExtent
from .stream import StreamWriter

RAW_TYPES = ("fullDevice", "partitionedDevice")
SPLIT_TYPES = ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat")

_INVALID = "VERR_VD_VMDK_INVALID_HEADER"
_NOT_FOUND = "VERR_VD_VMDK_VALUE_NOT_FOUND"


class ExtentRefused(VDError):
    """A descriptor names an extent file this program will not open unasked."""

    status = "VERR_ACCESS_DENIED"


def resolve_extent(image_path: str, name: str, allowed: bool) -> str:
    """The host path of extent file ``name`` of the image at ``image_path``, refusing
    (ExtentRefused) paths outside the image's folder unless ``allowed``."""
    folder = os.path.dirname(os.path.abspath(image_path))
    candidate = os.path.normpath(os.path.join(folder, name))
    if allowed:
        return candidate
    if os.path.isabs(name):
        why = "is an absolute path"
    else:
        real_folder = os.path.realpath(folder)
        real = os.path.realpath(candidate)
        if os.path.commonpath([real_folder, real]) == real_folder and real != real_folder:
            return candidate
        why = f"resolves to {real}, outside the image's folder"
    raise ExtentRefused(f"the descriptor names the extent file {name!r}, which {why}; "
                        f"refusing to open it.  If you trust this image, allow it with "
                        f"the per-image option {ALLOW_EXTERNAL}=1", image_path)


class _Files:
    """The host files of an image, each opened once (extents may share a file)."""

    def __init__(self, io: StorageProvider, shareable: bool) -> None:
        self.io = io
        self.shareable = shareable
        self._open: dict[str, Storage] = {}
        #: Files that should be writable while the image is.
        self._wants_write: set[str] = set()

    def open(self, path: str, writable: bool, may_write: bool | None = None) -> Storage:
        """Open ``path`` (writable now or not); ``may_write`` says whether it should
        become writable when the image does (default: ``writable``)."""
        key = os.path.realpath(path)
        storage = self._open.get(key)
        if storage is None:
            storage = self.io.open(path, writable=writable, shareable=self.shareable)
            self._open[key] = storage
        elif writable and not storage.writable:
            storage.reopen(True, self.shareable)
        if writable if may_write is None else may_write:
            self._wants_write.add(key)
        return storage

    def adopt(self, path: str, storage: Storage) -> None:
        key = os.path.realpath(path)
        self._open[key] = storage
        self._wants_write.add(key)

    def renamed(self, moves: dict[str, str]) -> None:
        """Follow files that were moved while open."""
        reverse = {os.path.realpath(src): dst for src, dst in moves.items()}
        opened, self._open = self._open, {}
        for key, storage in opened.items():
            dst = reverse.get(key)
            if dst is not None:
                storage.path = dst
                if key in self._wants_write:
                    self._wants_write.discard(key)
                    self._wants_write.add(os.path.realpath(dst))
                key = os.path.realpath(dst)
            self._open[key] = storage

    def forget(self, path: str | None) -> None:
        """Close and drop one file (an extent being abandoned)."""
        storage = self._open.pop(os.path.realpath(path), None) if path else None
        if storage is not None:
            storage.close()

    def storages(self) -> list[Storage]:
        return list(self._open.values())

    def reopen(self, writable: bool) -> None:
        for key, storage in self._open.items():
            target = writable and key in self._wants_write
            if storage.writable != target:
                storage.reopen(target, self.shareable)

    def close(self) -> None:
        first: BaseException | None = None
        for storage in self._open.values():
            try:
                storage.close()
            except Exception as exc:  # close them all, report the first failure
                first = first or exc
        self._open.clear()
        if first is not None:
            raise first


class VmdkImage(Image):
    """An opened VMDK image."""

    info = BackendInfo(
        name="VMDK",
        description="VMware Virtual Machine Disk",
        capabilities=(Capability.UUID | Capability.CREATE_FIXED | Capability.CREATE_DYNAMIC
                      | Capability.CREATE_SPLIT_2G | Capability.DIFF | Capability.FILE
                      | Capability.ASYNC | Capability.VFS | Capability.DISCARD
                      | Capability.PREFERRED),
        extensions=(("vmdk", DiskType.HDD),),
        variants=("standard", "fixed", "split2g", "stream", "esx", "rawdisk"),
        config_keys=(
            ConfigKey(ALLOW_EXTERNAL, "0", ConfigValueType.INTEGER, ConfigKeyFlags.EXPERT),
            ConfigKey("ZeroedGrain", "0", ConfigValueType.INTEGER,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("AdapterType", "ide", ConfigValueType.STRING,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("RawDrive", None, ConfigValueType.STRING, ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("Partitions", None, ConfigValueType.STRING, ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("BootSector", None, ConfigValueType.BYTES, ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("Relative", "0", ConfigValueType.INTEGER, ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("RawDisk", None, ConfigValueType.STRING,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
        ),
        image_flags_mask=(ImageFlags.FIXED | ImageFlags.DIFF | ImageFlags.VMDK_SPLIT_2G
                          | ImageFlags.VMDK_RAWDISK | ImageFlags.VMDK_STREAM_OPTIMIZED
                          | ImageFlags.VMDK_ESX),
        stores=frozenset({"uuid", "modification_uuid", "parent_uuid",
                          "parent_modification_uuid", "comment", "pchs", "lchs",
                          "parent_path"}),
    )

    def __init__(self, io: StorageProvider, path: str, flags: OpenFlags,
                 disk_type: DiskType = DiskType.HDD) -> None:
        super().__init__(io, path, flags, disk_type)
        self._files = _Files(io, bool(flags & OpenFlags.SHAREABLE))
        self.descriptor: Descriptor | None = None
        self._desc_storage: Storage | None = None
        self._desc_area: tuple[int, int] | None = None
        self.extents: list[Extent] = []
        self._starts: list[int] = []
        self._size = 0
        self._unit = SECTOR
        self._flags = ImageFlags.NONE
        self._create_type = ""
        self._cid_fresh = False
        #: Why the image is read-only whatever the caller asked (empty: it is not).
        self._forced_read_only: list[str] = []

    # -- probing and opening ------------------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            head = storage.read_at(0, 4096)
        if head[:4] not in (MAGIC, COWD_MAGIC) and not looks_like_descriptor(head):
            raise InvalidHeader("not a VMDK image", path, status=_INVALID)
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("VMDK images are hard disks", path)
        return DiskType.HDD

    @classmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags,
             disk_type: DiskType = DiskType.HDD,
             config: Mapping[str, str] | None = None) -> VmdkImage:
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("VMDK images are hard disks", path)
        image = cls(io, path, flags)
        try:
            image._load(config)
        except BaseException:
            image._files.close()
            raise
        return image

    def _load(self, config: Mapping[str, str] | None) -> None:
        writable = not self.read_only
        main = self._files.open(self.path, writable, may_write=True)
        source = read_descriptor(main, self.path)
        descriptor = source.descriptor
        self._check_version(descriptor)
        self._create_type = descriptor.get("createType") or (
            "monolithicSparse" if source.header else "custom")
        if source.cowd:
            sparse = SparseExtent.open(main, None, "RW", self.path)
            extents: list[Extent] = [sparse]
        elif source.header is not None:
            extents = [self._monolithic_extent(main, descriptor)]
        else:
            extents = [self._open_extent(line, config) for line in descriptor.extents]
        if not extents:
            raise Corrupted("the VMDK descriptor lists no extents", self.path, status=_INVALID)
        self._assemble(descriptor, extents, main, source.area)
        if not self.read_only:
            self._add_missing_uuids()

    def _check_version(self, descriptor: Descriptor) -> None:
        version = descriptor.get_int("version", self.path)
        if version is not None and not 1 <= version <= 3:
            raise NotSupported(f"VMDK descriptor version {version} is not supported", self.path,
                               status="VERR_VD_VMDK_UNSUPPORTED_VERSION")

    def _monolithic_extent(self, main: Storage, descriptor: Descriptor) -> Extent:
        """The single extent of a monolithic sparse file: the file itself.

        The file name in the embedded extent line is ignored (the file may have been
        renamed); its size is the virtual size (VirtualBox rounds the header's
        capacity up to 64 KiB).
        """
        lines = descriptor.extents
        if len(lines) > 1:
            raise Corrupted(f"the descriptor embedded in a monolithic sparse file lists "
                            f"{len(lines)} extents", self.path, status=_INVALID)
        sectors = lines[0].sectors if lines else None
        access = lines[0].access if lines else "RW"
        if access == "NOACCESS":
            raise NotSupported("the image's only extent is marked NOACCESS", self.path)
        return SparseExtent.open(main, sectors, access, self.path,
                                 bool(self.open_flags & OpenFlags.HONOR_ZEROES),
                                 not self.open_flags & OpenFlags.SKIP_CONSISTENCY_CHECKS)

    def _resolve(self, name: str, allowed: bool) -> str:
        return resolve_extent(self.path, name, allowed)

    def _open_extent(self, line: ExtentLine, config: Mapping[str, str] | None) -> Extent:
        if line.type == "ZERO":
            return ZeroExtent(line.sectors, line.access)
        allowed = flag(config, ALLOW_EXTERNAL)
        raw = self._create_type in RAW_TYPES
        try:
            if raw and not allowed:
                raise ExtentRefused(f"this is a raw-disk VMDK ({self._create_type}): it gives "
                                    f"access to host devices or files ({line.filename!r}).  "
                                    f"Open it only if you trust it, with the per-image option "
                                    f"{ALLOW_EXTERNAL}=1", self.path)
            path = self._resolve(line.filename, allowed)
        except ExtentRefused as exc:
            if self.open_flags & OpenFlags.INFO:
                return UnusableExtent(line.sectors, line.access, line.type, line.filename, exc)
            raise
        if line.access == "NOACCESS":
            return UnusableExtent(line.sectors, line.access, line.type, path, InvalidState(
                f"the extent {line.filename!r} is marked NOACCESS in the descriptor", self.path,
                status="VERR_VD_VMDK_INVALID_STATE"))
        if line.type in ("VMFSRDM", "VMFSRAW", "SESPARSE"):
            raise NotSupported(f"{line.type} extents are not supported", self.path)
        storage = self._files.open(path, not self.read_only and line.access == "RW",
                                   may_write=line.access == "RW")
        if line.type in ("FLAT", "VMFS"):
            device = raw and os.path.isabs(line.filename)
            return FlatExtent(storage, line.sectors, line.offset, line.access, path, line.type,
                              device)
        magic = storage.read_at(0, 4)
        if magic not in (MAGIC, COWD_MAGIC):
            raise Corrupted(f"the extent file {line.filename!r} is not a VMDK sparse extent",
                            self.path, status=_INVALID)
        extent = SparseExtent.open(storage, line.sectors, line.access, path,
                                   bool(self.open_flags & OpenFlags.HONOR_ZEROES),
                                   not self.open_flags & OpenFlags.SKIP_CONSISTENCY_CHECKS)
        if line.type == "VMFSSPARSE":
            extent.kind = "VMFSSPARSE"
        return extent

    def _assemble(self, descriptor: Descriptor, extents: list[Extent], main: Storage,
                  area: tuple[int, int] | None) -> None:
        """Lay the extents end to end and work out what the image is."""
        self.descriptor = descriptor
        self._desc_storage = main
        self._desc_area = area
        self.extents = extents
        self._starts = []
        pos = 0
        for extent in extents:
            self._starts.append(pos)
            pos += extent.size
        self._size = pos
        sparse = [e for e in extents if isinstance(e, SparseExtent)]
        grains = {e.grain_bytes for e in sparse}
        self._unit = max(grains, default=SECTOR)
        reasons = [e.read_only_reason for e in sparse if e.read_only_reason]
        if len(grains) > 1:
            reasons.append("its sparse extents have different grain sizes")
        elif any(start % self._unit for start in self._starts):
            reasons.append("an extent does not start on a grain boundary")
        self._forced_read_only = list(dict.fromkeys(reasons))
        self._flags = self._derive_flags(descriptor, sparse)
        if self._forced_read_only and not self.read_only:
            self._files.reopen(False)
            self.open_flags |= OpenFlags.READONLY

    def _derive_flags(self, descriptor: Descriptor, sparse: list[SparseExtent]) -> ImageFlags:
        kind = self._create_type
        flags = ImageFlags.NONE
        if kind in SPLIT_TYPES:
            flags |= ImageFlags.VMDK_SPLIT_2G
        if kind in RAW_TYPES:
            flags |= ImageFlags.VMDK_RAWDISK
        if kind == "streamOptimized" or any(e.compressed for e in sparse):
            flags |= ImageFlags.VMDK_STREAM_OPTIMIZED
        if kind in ("vmfs", "vmfsThin"):
            flags |= ImageFlags.VMDK_ESX
        if not sparse and not flags & ImageFlags.VMDK_STREAM_OPTIMIZED:
            flags |= ImageFlags.FIXED
        parent_cid = descriptor.get_hex("parentCID", self.path)
        if (parent_cid not in (None, NO_PARENT_CID) or self.parent_filename
                or self._get_uuid("parent") not in (None, NIL_UUID)):
            flags |= ImageFlags.DIFF
        return flags

    def _add_missing_uuids(self) -> None:
        """VirtualBox gives images from other programs UUIDs on their first read/write
        open; done here too, when the descriptor has room for them.  (qemu and VMware
        ignore these keys.)"""
        if self._desc_area == (0, 0) or self._get_uuid("uuid") is not None:
            return
        before = self.descriptor.render()
        self.descriptor.set(UUID_KEYS["uuid"], str(uuidlib.uuid4()))
        for name, value in (("modification", uuidlib.uuid4()), ("parent", NIL_UUID),
                            ("parent_modification", NIL_UUID)):
            if self.descriptor.get(UUID_KEYS[name]) is None:
                self.descriptor.set(UUID_KEYS[name], str(value))
        try:
            self._write_descriptor()  # at once: a child may record this UUID next
        except InvalidParameter:
            self.descriptor = Descriptor.parse(before, self.path)  # no room: leave it be

    # -- the virtual disk -----------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def allocation_unit(self) -> int:
        return self._unit

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[Extent, int, int, int]]:
        """``(extent, offset in it, length, offset in the request)`` pieces of a range."""
        i = bisect.bisect_right(self._starts, offset) - 1
        done = 0
        while done < length:
            extent = self.extents[i]
            rel = offset + done - self._starts[i]
            n = min(length - done, extent.size - rel)
            yield extent, rel, n, done
            done += n
            i += 1

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        extent, rel, n, _ = next(self._pieces(offset, min(length, self._size - offset)))
        return extent.block_status(rel, n)

    def read_into(self, offset: int, buf: memoryview) -> None:
        for extent, rel, n, at in self._pieces(offset, len(buf)):
            extent.read_into(rel, buf[at:at + n])

    def write(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        self._content_changing()
        for extent, rel, n, at in self._pieces(offset, len(data)):
            extent.write(rel, data[at:at + n])

    def write_blocks(self, offset: int, data: memoryview) -> None:
        self.check_writable()
        self._content_changing()
        length = min(len(data), self._size - offset)  # past the end: zeros, not stored
        for extent, rel, n, at in self._pieces(offset, length):
            extent.write_blocks(rel, data[at:at + n])

    def _content_changing(self) -> None:
        """The first change of content after an open gets a new CID."""
        if self._cid_fresh:
            return
        self._cid_fresh = True
        if self._desc_area == (0, 0):
            return  # a bare sparse extent: nowhere to record it
        old = self.descriptor.get_hex("CID", self.path)
        self.descriptor.set("CID", f"{new_cid(old):08x}")
        self._write_descriptor()

    # -- the descriptor ------------------------------------------------------------------

    def _write_descriptor(self) -> None:
        """Rewrite the descriptor in place, all or nothing (journalled)."""
        raw = encode(self.descriptor.render())
        storage = self._desc_storage
        self._check_room(raw)
        with storage.transaction():
            if self._desc_area is None:
                storage.write_at(0, raw)
                if storage.size() > len(raw):
                    storage.set_size(len(raw))
            else:
                offset, size = self._desc_area
                storage.write_at(offset, raw + zeros(size - len(raw)))

    def _check_room(self, raw: bytes) -> None:
        """Refuse a descriptor that does not fit the area embedded in the file."""
        if self._desc_area is None:
            return
        size = self._desc_area[1]
        if len(raw) >= size:
            raise InvalidParameter(
                f"the descriptor would need {len(raw) + 1} bytes, but the area reserved "
                f"for it in the file holds {size}" if size else
                "this sparse extent has no room for a descriptor", self.path)

    def _update(self, values: dict[str, str | None]) -> None:
        """Change descriptor keys and write the descriptor (all or nothing)."""
        self.check_writable()
        if self._desc_area == (0, 0):
            raise NotSupported("this file is a bare sparse extent without a descriptor; open "
                               "the image's descriptor file instead", self.path)
        before = self.descriptor.render()
        for key, value in values.items():
            self.descriptor.set(key, value)
        try:
            self._write_descriptor()
        except BaseException:
            self.descriptor = Descriptor.parse(before, self.path)
            raise

    # -- metadata --------------------------------------------------------------------------

    def _get_uuid(self, name: str) -> uuidlib.UUID | None:
        value = self.descriptor.get(UUID_KEYS[name]) if self.descriptor else None
        if value is None or not value.strip():
            return None
        try:
            return uuidlib.UUID(value.strip())
        except ValueError:
            raise Corrupted(f"the descriptor's {UUID_KEYS[name]}={value!r} is not a UUID",
                            self.path, status=_INVALID) from None

    @property
    def uuid(self) -> uuidlib.UUID:
        value = self._get_uuid("uuid")
        if value is None:
            raise NotSupported("the VMDK image has no UUID yet (ddb.uuid.image; it gets one "
                               "when opened for writing)", self.path, status=_NOT_FOUND)
        return value

    @uuid.setter
    def uuid(self, value: uuidlib.UUID) -> None:
        self._update({UUID_KEYS["uuid"]: str(value)})

    @property
    def modification_uuid(self) -> uuidlib.UUID:
        return self._get_uuid("modification") or NIL_UUID

    @modification_uuid.setter
    def modification_uuid(self, value: uuidlib.UUID) -> None:
        self._update({UUID_KEYS["modification"]: str(value)})

    @property
    def parent_uuid(self) -> uuidlib.UUID:
        return self._get_uuid("parent") or NIL_UUID

    @parent_uuid.setter
    def parent_uuid(self, value: uuidlib.UUID) -> None:
        self._update({UUID_KEYS["parent"]: str(value)})

    @property
    def parent_modification_uuid(self) -> uuidlib.UUID:
        return self._get_uuid("parent_modification") or NIL_UUID

    @parent_modification_uuid.setter
    def parent_modification_uuid(self, value: uuidlib.UUID) -> None:
        self._update({UUID_KEYS["parent_modification"]: str(value)})

    @property
    def comment(self) -> str:
        return decode_comment(self.descriptor.get("ddb.comment") or "")

    @comment.setter
    def comment(self, value: str) -> None:
        self._update({"ddb.comment": encode_comment(value) if value else None})

    def _geometry(self, keys: tuple[str, str, str], what: str) -> Geometry:
        values = [self.descriptor.get_int(key, self.path) for key in keys]
        if any(not v for v in values):
            raise GeometryNotSet(f"the image stores no {what} geometry", self.path)
        return Geometry(*values)

    def _set_geometry(self, keys: tuple[str, str, str], value: Geometry) -> None:
        parts = (value.cylinders, value.heads, value.sectors)
        self._update({key: str(v) if value.is_set else None for key, v in zip(keys, parts)})

    @property
    def pchs(self) -> Geometry:
        return self._geometry(PCHS_KEYS, "physical")

    @pchs.setter
    def pchs(self, value: Geometry) -> None:
        self._set_geometry(PCHS_KEYS, value)

    @property
    def lchs(self) -> Geometry:
        return self._geometry(LCHS_KEYS, "logical")

    @lchs.setter
    def lchs(self, value: Geometry) -> None:
        self._set_geometry(LCHS_KEYS, value)

    @property
    def version(self) -> int:
        for extent in self.extents:
            if isinstance(extent, SparseExtent):
                return extent.header.version
        return self.descriptor.get_int("version", self.path) or 1

    @property
    def image_flags(self) -> ImageFlags:
        return self._flags

    @property
    def parent_filename(self) -> str | None:
        return self.descriptor.get("parentFileNameHint") or None

    def _parent_values(self, link: ParentLink | None) -> dict[str, str | None]:
        """The descriptor keys that record ``link`` (None: no parent)."""
        if link is not None and self._flags & ImageFlags.VMDK_RAWDISK:
            raise NotSupported("a raw-disk VMDK cannot be a differencing image", self.path)
        if self._desc_area == (0, 0):
            raise NotSupported("this file is a bare sparse extent without a descriptor; open "
                               "the image's descriptor file instead", self.path)
        if link is None:
            return {"parentFileNameHint": None, "parentCID": f"{NO_PARENT_CID:08x}",
                    UUID_KEYS["parent"]: str(NIL_UUID),
                    UUID_KEYS["parent_modification"]: str(NIL_UUID)}
        cid = read_cid(self.io, link.path) if link.format.upper() == "VMDK" \
            else NO_PARENT_CID
        return {"parentFileNameHint": relative_parent_path(self.path, link.path),
                "parentCID": f"{cid:08x}",
                UUID_KEYS["parent"]: str(link.uuid or NIL_UUID),
                UUID_KEYS["parent_modification"]: str(link.modification_uuid or NIL_UUID)}

    def check_parent(self, link: ParentLink | None) -> None:
        """Refuse up front a link the descriptor cannot hold (a long parent path in
        the fixed area embedded in a monolithic file, a raw disk, a bare extent)."""
        trial = Descriptor.parse(self.descriptor.render(), self.path)
        for key, value in self._parent_values(link).items():
            trial.set(key, value)
        self._check_room(encode(trial.render()))

    def set_parent(self, link: ParentLink | None) -> None:
        """Point the image at a new parent (merge, rebase), or make it a base."""
        self._update(self._parent_values(link))
        sparse = [e for e in self.extents if isinstance(e, SparseExtent)]
        self._flags = self._derive_flags(self.descriptor, sparse)

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Grow the disk: the last extent grows (split images: up to 2047 MiB) and
        split images get new extents.  Shrink it when nothing is stored beyond the new
        end (VirtualBox cannot): extents past it go, the last one is cut."""
        self.check_writable()
        if size <= 0 or size % SECTOR:
            raise InvalidSize(f"the size {size} is not a positive multiple of 512", self.path)
        if size == self._size:
            return
        if self._flags & (ImageFlags.VMDK_STREAM_OPTIMIZED | ImageFlags.VMDK_RAWDISK):
            raise NotSupported("streamOptimized and raw-disk VMDKs cannot be resized",
                               self.path)
        if size < self._size:
            self._shrink(size)
            return
        fixed = bool(self._flags & ImageFlags.FIXED)
        if not fixed and size >= MAX_DYNAMIC_SIZE:
            raise InvalidSize("a growing VMDK must be smaller than 256 TiB - 64 KiB", self.path)
        split = self._create_type in SPLIT_TYPES
        lines = self._extent_lines()
        last = self.extents[-1]
        add = (size - self._size) // SECTOR
        room = max(0, SPLIT_SIZE // SECTOR - last.sectors) if split else add
        grow = min(add, room)
        extents, before, old_sectors = list(self.extents), self.descriptor.render(), last.sectors
        creator = Creator(self.io, _resize_request(self, progress))
        try:
            if grow:
                self._grow_extent(last, grow, progress)
                lines[-1] = dataclasses.replace(lines[-1], sectors=last.sectors)
            for part in Creator.split(add - grow) if add > grow else []:
                number = len(self.extents) + 1
                name = creator.name(f"-f{number:03d}" if fixed else f"-s{number:03d}")
                creator.extent_file(name, part, fixed)
                line = ExtentLine("RW", part, "FLAT", name, 0) if fixed else \
                    ExtentLine("RW", part, "SPARSE", name)
                self.extents.append(self._open_extent(line, None))
                lines.append(line)
            if self.descriptor.extents:
                self.descriptor.set_extents(lines)
                self._write_descriptor()
        except BaseException:
            # The descriptor keeps the old size (a grown sparse header is harmless).
            self.descriptor = Descriptor.parse(before, self.path)
            for extent in self.extents[len(extents):]:
                self._files.forget(extent.path)
            self.extents = extents
            last.sectors = old_sectors
            if isinstance(last, SparseExtent):
                last.map.size = last.size
            creator.remove_files()
            raise
        self._assemble(self.descriptor, self.extents, self._desc_storage, self._desc_area)

    def _shrink(self, size: int) -> None:
        """Cut the disk at ``size``: the descriptor first (a crash then leaves extents
        larger than the descriptor says, which is harmless), then the last extent's
        header or file, then the files of the extents past the end."""
        self._refuse_shrink(size)
        keep = bisect.bisect_left(self._starts, size)
        last = self.extents[keep - 1]
        sectors = (size - self._starts[keep - 1]) // SECTOR
        if isinstance(last, FlatExtent):
            if last.device:
                raise NotSupported("an extent on a host device cannot shrink", self.path)
            last.check_writable()
        elif not isinstance(last, (SparseExtent, ZeroExtent)):
            raise NotSupported(f"the {last.kind} extent cannot shrink", self.path)
        lines = self._extent_lines()[:keep]
        lines[-1] = dataclasses.replace(lines[-1], sectors=sectors)
        kept, dropped = self.extents[:keep], self.extents[keep:]
        before = self.descriptor.render()
        same_file = isinstance(last, SparseExtent) and last.storage is self._desc_storage
        try:
            with self._desc_storage.transaction() if same_file else contextlib.nullcontext():
                if self.descriptor.extents:
                    self.descriptor.set_extents(lines)
                    self._write_descriptor()
                if isinstance(last, SparseExtent):
                    last.shrink(sectors)
        except BaseException:
            self.descriptor = Descriptor.parse(before, self.path)
            raise
        if isinstance(last, FlatExtent):
            last.sectors = sectors
            end = last.start + last.size
            owners = [e for e in self.extents if getattr(e, "path", None) == last.path]
            if len(owners) == 1 and last.path != self.path and last.storage.size() > end:
                last.storage.set_size(end)
        elif isinstance(last, ZeroExtent):
            last.sectors = sectors
        still_used = {e.path for e in kept} | {self.path}
        for extent in dropped:
            if extent.path and extent.path not in still_used and \
                    not getattr(extent, "device", False) and \
                    not isinstance(extent, UnusableExtent):
                still_used.add(extent.path)
                self._files.forget(extent.path)
                self.io.delete(extent.path)
        self._assemble(self.descriptor, kept, self._desc_storage, self._desc_area)

    def _refuse_shrink(self, size: int) -> None:
        """ShrinkNotSupported, naming the offset, when data lies at or after ``size``.

        Allocated grains past the end count as data (as in VDI); in the grain the new
        end cuts, and in flat extents, only non-zero bytes do.
        """
        pos, end = size, self._size
        while pos < end:
            i = bisect.bisect_right(self._starts, pos) - 1
            extent, rel = self.extents[i], pos - self._starts[i]
            if isinstance(extent, UnusableExtent):
                raise NotSupported(f"the extent {extent.path!r} cannot be used; the image "
                                   f"cannot shrink", self.path)
            status, run = extent.block_status(rel, min(end - pos, extent.size - rel))
            if status is Status.DATA:
                if not isinstance(extent, SparseExtent):
                    self._require_zeros(pos, pos + run)
                elif (self._starts[i] + rel // extent.grain_bytes * extent.grain_bytes
                      < size):
                    grain_end = self._starts[i] + (rel // extent.grain_bytes + 1) \
                        * extent.grain_bytes
                    run = min(grain_end, end) - pos
                    self._require_zeros(pos, pos + run)
                else:
                    raise ShrinkNotSupported(f"data is stored beyond the new end (from "
                                             f"offset {pos}); shrinking would lose it",
                                             self.path)
            pos += run

    def _require_zeros(self, start: int, stop: int) -> None:
        step = 16 << 20
        for pos in range(start, stop, step):
            data = bytearray(min(step, stop - pos))
            self.read_into(pos, memoryview(data))
            nonzero = np.flatnonzero(np.frombuffer(data, dtype=np.uint8))
            if nonzero.size:
                raise ShrinkNotSupported(f"data is stored beyond the new end (at offset "
                                         f"{pos + int(nonzero[0])}); shrinking would lose "
                                         f"it", self.path)

    # -- releasing grains (compact, discard) ------------------------------------------------

    def check_compactable(self) -> None:
        self._compactable(writable=False)

    def _compactable(self, writable: bool = True) -> list[SparseExtent]:
        """The sparse extents, refusing images whose extents cannot be compacted."""
        if self._flags & ImageFlags.VMDK_STREAM_OPTIMIZED:
            raise NotSupported("streamOptimized VMDK images cannot be compacted in place: "
                               "their grains are compressed records written once, front to "
                               "back.  Convert the image to a new streamOptimized one "
                               "instead (that stores no all-zero grains)", self.path)
        if writable:
            self.check_writable()
        sparse = []
        for extent in self.extents:
            if isinstance(extent, SparseExtent):
                extent.check_compactable(writable)
                sparse.append(extent)
            elif not isinstance(extent, ZeroExtent):
                raise NotSupported(f"{extent.kind} extents (preallocated files) cannot be "
                                   f"compacted; only sparse VMDKs can", self.path)
        return sparse

    @property
    def can_mark_zero(self) -> bool:
        """Zero grains need version 2+ headers with the zeroed-grain flag in every
        sparse extent (qemu ``zeroed_grain=on``, creation option ZeroedGrain=1)."""
        sparse = [e for e in self.extents if isinstance(e, SparseExtent)]
        return bool(sparse) and all(isinstance(e, (SparseExtent, ZeroExtent))
                                    for e in self.extents) and \
            all(e.zero_grains and not e.compressed and e.kind == "SPARSE" for e in sparse)

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        """Release whole grains.  The CID stays: compaction changes no content, and a
        child's parentCID must keep matching."""
        self._compactable()
        if zero and not self.can_mark_zero:
            raise NotSupported("this VMDK cannot mark grains as zero (its sparse extents "
                               "need version 2 headers with zeroed-grain entries)", self.path)
        for extent, rel, n, _ in self._pieces(offset, min(length, self._size - offset)):
            if isinstance(extent, SparseExtent):
                extent.unmap(rel, n, zero)

    def pack(self, progress: Progress | None = None) -> None:
        for extent in self._compactable():
            extent.pack(progress)

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list:
        """``VDRepair`` for VMDK (see :mod:`.check`)."""
        from .check import check
        return check(io, path, repair, progress)

    def _grow_extent(self, extent: Extent, sectors: int, progress: Progress | None) -> None:
        if isinstance(extent, SparseExtent) and not isinstance(extent, StreamWriter):
            extent.grow(extent.sectors + sectors)
            return
        shared = sum(1 for e in self.extents if e.path == extent.path)
        if not isinstance(extent, FlatExtent) or shared > 1 or extent.device:
            raise NotSupported(f"the last extent ({extent.kind}) cannot grow", self.path)
        extent.check_writable()
        start = extent.start + extent.size
        allocate(extent.storage, start, sectors * SECTOR, progress)
        extent.sectors += sectors

    def storages(self) -> list[Storage]:
        return self._files.storages()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Journal the writes to every writable file of the image (each file's group
        is applied all or nothing)."""
        with contextlib.ExitStack() as stack:
            for storage in self._files.storages():
                if storage.writable:
                    stack.enter_context(storage.transaction())
            yield

    def rename(self, new_path: str) -> None:
        """Move the descriptor and the extent files named after it (``-flat``,
        ``-s001``, ``-pt``...) to ``new_path``'s name, as VirtualBox does."""
        self.check_writable()
        old_folder = os.path.dirname(os.path.abspath(self.path))
        new_folder = os.path.dirname(os.path.abspath(new_path))
        old_stem = os.path.splitext(os.path.basename(self.path))[0]
        new_stem = os.path.splitext(os.path.basename(new_path))[0]
        moves: list[tuple[str, str]] = []
        lines = []
        for extent, line in zip(self.extents, self._extent_lines()):
            if extent.path is None or extent.path == self.path or \
                    getattr(extent, "device", False):
                lines.append(line)
                continue
            name = os.path.basename(extent.path)
            if os.path.dirname(os.path.abspath(extent.path)) != old_folder:
                raise NotSupported(f"the extent {line.filename!r} lies outside the image's "
                                   f"folder; move it by hand", self.path)
            if name.startswith(old_stem + "-"):
                name = new_stem + name[len(old_stem):]
            target = os.path.join(new_folder, name)
            if (extent.path, target) not in moves:
                moves.append((extent.path, target))
            lines.append(dataclasses.replace(line, filename=name))
        if len(lines) == 1 and self.extents[0].path == self.path:  # monolithic: cosmetic
            lines = [dataclasses.replace(lines[0], filename=os.path.basename(new_path))]
        before = self.descriptor.render()
        hint = self.parent_filename
        done: list[tuple[str, str]] = []
        written = False
        try:
            for src, dst in moves:
                if src != dst:
                    self.io.move(src, dst)
                    done.append((src, dst))
            if self.descriptor.extents:
                self.descriptor.set_extents(lines)
            if hint and not os.path.isabs(hint):  # stored relative to the old folder
                parent = os.path.normpath(os.path.join(old_folder, hint))
                self.descriptor.set("parentFileNameHint",
                                    relative_parent_path(new_path, parent))
            self._write_descriptor()
            written = True
            self.io.move(self.path, new_path)
        except BaseException:
            for src, dst in reversed(done):
                self.io.move(dst, src)
            self.descriptor = Descriptor.parse(before, self.path)
            if written:
                self._write_descriptor()
            raise
        renamed = dict(done + [(self.path, new_path)])
        for extent in self.extents:
            if extent.path in renamed:
                extent.path = renamed[extent.path]
        self._files.renamed(renamed)
        self.path = new_path

    def _extent_lines(self) -> list[ExtentLine]:
        """The descriptor's extent lines, one per extent (synthesised when absent)."""
        lines = self.descriptor.extents
        if len(lines) == len(self.extents):
            return lines
        return [ExtentLine(e.access, e.sectors, e.kind, os.path.basename(e.path or ""))
                for e in self.extents]

    @property
    def files(self) -> list[str]:
        """The descriptor and every extent file; host devices of raw disks excluded."""
        out = [self.path]
        for extent in self.extents:
            if extent.path and not getattr(extent, "device", False) \
                    and not isinstance(extent, UnusableExtent):
                out.append(extent.path)
        return list(dict.fromkeys(out))

    # -- lifetime ---------------------------------------------------------------------------

    def set_open_flags(self, flags: OpenFlags) -> None:
        if self._forced_read_only:
            flags |= OpenFlags.READONLY
        want_writable = not flags & OpenFlags.READONLY
        if not want_writable and not self.read_only:
            for extent in self.extents:  # a stream switched to read-only is complete
                if isinstance(extent, StreamWriter) and not extent.finished:
                    extent.finish()
                    self._forced_read_only.append(extent.read_only_reason)
            self.flush()
        if want_writable != (not self.read_only):
            self._files.reopen(want_writable)
        honor = bool(flags & OpenFlags.HONOR_ZEROES)
        for extent in self.extents:
            if isinstance(extent, SparseExtent):
                extent.honor_zeroes = honor
        self.open_flags = flags

    def flush(self) -> None:
        # Tables and the descriptor are written as they change: only make them durable.
        for storage in self._files.storages():
            if storage.writable:
                storage.flush()

    def close(self) -> None:
        try:
            if not self.read_only:
                for extent in self.extents:
                    extent.close()
        finally:
            self._files.close()

    def describe(self) -> list[tuple[str, str]]:
        d = self.descriptor
        out = [("create type", self._create_type),
               ("descriptor", "separate file" if self._desc_area is None
                else "none" if self._desc_area == (0, 0) else "embedded"),
               ("CID", d.get("CID") or "missing"), ("parent CID", d.get("parentCID") or "missing"),
               ("parent file name hint", d.get("parentFileNameHint") or "none"),
               ("adapter type", d.get("ddb.adapterType") or "not set"),
               ("virtual hardware version", d.get("ddb.virtualHWVersion") or "not set"),
               ("virtual size", str(self._size)),
               ("allocation unit", str(self._unit))]
        if self._desc_area not in (None, (0, 0)):
            out.append(("descriptor area (offset/bytes)", f"{self._desc_area[0]}/"
                                                          f"{self._desc_area[1]}"))
        for reason in self._forced_read_only:
            out.append(("read-only", reason))
        for i, extent in enumerate(self.extents):
            where = f" {extent.path!r}" if extent.path else ""
            out.append((f"extent {i}", f"{extent.access} {extent.sectors} {extent.kind}{where} "
                                       f"at disk offset {self._starts[i]}"))
            out += [(f"extent {i} {name}", value) for name, value in extent.describe()]
        return out

    # -- creation ------------------------------------------------------------------------------

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> VmdkImage:
        validate_config(cls.info, request.config, request.path)
        if request.disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("VMDK images are hard disks", request.path)
        creator = Creator(io, request)
        made = creator.run()
        flags = request.open_flags & ~OpenFlags.READONLY
        try:
            if made.stream is None:
                image = cls.open(io, request.path, flags, DiskType.HDD, made.config)
            else:
                storage, descriptor, writer, area = made.stream
                image = cls(io, request.path, flags)
                image._files.adopt(request.path, storage)
                image._create_type = "streamOptimized"
                image._assemble(descriptor, [writer], storage, area)
        except BaseException:
            if made.stream is not None:
                made.stream[0].close()
            creator.remove_files()
            raise
        image._cid_fresh = True  # a new image's CID is new already
        return image


def _resize_request(image: VmdkImage, progress: Progress | None) -> CreateRequest:
    """A creation request describing ``image``, for making its new extents."""
    zeroed = any(isinstance(e, SparseExtent) and e.zero_grains for e in image.extents)
    return CreateRequest(path=image.path, size=image.size, image_flags=image.image_flags,
                         uuid=NIL_UUID, config={"ZeroedGrain": "1"} if zeroed else {},
                         progress=progress)
