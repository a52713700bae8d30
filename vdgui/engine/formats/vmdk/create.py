"""Creating VMDK images: every variant's files, laid out as VirtualBox and qemu do.

* monolithicSparse: one file, header + embedded descriptor + both grain directories
  with every grain table allocated up front (as holes), grains from 64 KiB on.
* monolithicFlat / vmfs (ESX): a descriptor file and a preallocated ``-flat`` file.
* twoGbMaxExtentSparse / Flat: a descriptor file and ``-s001``.. / ``-f001``..
  extents of at most 2047 MiB.
* streamOptimized: one file written front to back (:mod:`.stream`).
* fullDevice / partitionedDevice: raw-disk descriptors (:mod:`.rawdisk`).
* Differencing images are monolithicSparse (or split sparse), with
  ``parentCID`` = the parent's CID (``ffffffff`` when the parent is not a VMDK),
  ``parentFileNameHint`` and the parent's UUIDs.

New sparse extents are version 1 (what VirtualBox reads); the creation option
``ZeroedGrain=1`` makes version 2 extents with zeroed-grain entries (qemu's
``zeroed_grain=on``), which store all-zero grains without space.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from dataclasses import dataclass
from typing import Mapping

from ...errors import InvalidParameter, InvalidSize, InvalidType, VDError
from ...io import Storage, StorageProvider
from ...progress import Progress, report
from ...types import NIL_UUID, SECTOR, ImageFlags, OpenFlags, default_pchs
from ..base import CreateRequest, ParentLink, relative_parent_path
from .config import ALLOW_EXTERNAL, flag, option
from .descriptor import (LCHS_KEYS, NO_PARENT_CID, UUID_KEYS, Descriptor, ExtentLine, encode,
                         encode_comment, new_cid, read_cid)
from .rawdisk import raw_disk_from_config
from .sparse import (DEFAULT_DESCRIPTOR_SECTORS, FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GT,
                     FLAG_ZERO_GRAINS, MAX_DESCRIPTOR_SECTORS, SparseLayout)
from .stream import StreamWriter

#: VirtualBox splits images into extents of 2047 MiB.
SPLIT_SIZE = 2047 << 20
#: Largest growing image VirtualBox creates.
MAX_DYNAMIC_SIZE = (256 << 40) - (64 << 10)


@dataclass
class Created:
    """What :class:`Creator` made: files to open (with ``config``), or a stream writer
    that is the image's only extent ``(storage, descriptor, writer, descriptor area)``."""

    config: Mapping[str, str] | None = None
    stream: tuple[Storage, Descriptor, StreamWriter, tuple[int, int]] | None = None


def allocate(storage: Storage, start: int, length: int, progress: Progress | None,
              done: int = 0, total: int | None = None) -> None:
    """Reserve ``length`` bytes of a flat extent file from ``start``, reporting progress."""
    total = total or length
    step = 64 << 20
    for pos in range(0, length, step):
        report(progress, done + pos, total, "allocating")
        storage.allocate(start + pos, min(step, length - pos))
    if storage.size() < start + length:
        storage.set_size(start + length)


class Creator:
    """Builds the files of a new VMDK image; removes them if anything fails."""

    def __init__(self, io: StorageProvider, request: CreateRequest) -> None:
        self.io = io
        self.request = request
        self.path = request.path
        self.created: list[str] = []
        folder, name = os.path.split(request.path)
        stem, ext = os.path.splitext(name)
        self.folder, self.stem, self.ext = folder, stem, ext or ".vmdk"

    def run(self) -> Created:
        """Make the files; on failure, remove them again."""
        try:
            return self._create()
        except BaseException:
            self.remove_files()
            raise

    def remove_files(self) -> None:
        """Delete the files made so far (after a failure)."""
        for path in reversed(self.created):
            try:
                self.io.delete(path)
            except VDError:
                pass
        self.created.clear()

    def name(self, suffix: str) -> str:
        """The name of an extent file: ``disk-flat.vmdk``, ``disk-s002.vmdk``..."""
        return f"{self.stem}{suffix}{self.ext}"

    def _new_file(self, name: str) -> Storage:
        path = os.path.join(self.folder, name) if name != os.path.basename(self.path) \
            else self.path
        storage = self.io.open(path, create=True)
        self.created.append(path)
        return storage

    def _create(self) -> Created:
        req, flags = self.request, self.request.image_flags
        sectors = -(-req.size // SECTOR)
        fixed = bool(flags & ImageFlags.FIXED)
        split = bool(flags & ImageFlags.VMDK_SPLIT_2G)
        stream = bool(flags & ImageFlags.VMDK_STREAM_OPTIMIZED)
        esx = bool(flags & ImageFlags.VMDK_ESX)
        if flags & ImageFlags.VMDK_RAWDISK:
            if req.parent is not None:
                raise InvalidType("a raw-disk VMDK cannot be a differencing image", self.path)
            return self._create_raw(sectors)
        if req.parent is not None and (fixed or stream or esx):
            raise InvalidType("a differencing VMDK is sparse (not fixed, stream or ESX)",
                              self.path)
        if stream and (fixed or split or esx):
            raise InvalidParameter("a streamOptimized VMDK cannot also be fixed, split or "
                                   "ESX", self.path)
        if esx and (not fixed or split):
            raise InvalidParameter("ESX VMDKs are fixed and not split (variant fixed,esx)",
                                   self.path)
        if req.size % SECTOR:
            raise InvalidSize(f"the size {req.size} is not a multiple of 512", self.path)
        if not fixed and req.size >= MAX_DYNAMIC_SIZE:
            raise InvalidSize(f"a growing VMDK must be smaller than 256 TiB - 64 KiB (asked "
                              f"for {req.size} bytes)", self.path)
        if stream:
            return self._create_stream(sectors)
        if fixed:
            return self._create_flat(sectors, split, esx)
        return self._create_sparse(sectors, split)

    # -- descriptor ---------------------------------------------------------------------

    def _descriptor(self, create_type: str, extents: list[ExtentLine],
                    adapter: str = "ide") -> Descriptor:
        req = self.request
        parent: ParentLink | None = req.parent
        parent_cid, hint = NO_PARENT_CID, None
        if parent is not None:
            if parent.format.upper() == "VMDK":
                parent_cid = read_cid(self.io, parent.path)
            hint = relative_parent_path(self.path, parent.path)
        pchs = req.pchs if req.pchs.is_set else default_pchs(req.size)
        adapter = str(option(req.config, "AdapterType") or adapter)
        ddb = [("ddb.virtualHWVersion", "4"), ("ddb.adapterType", adapter),
               ("ddb.geometry.cylinders", str(pchs.cylinders)),
               ("ddb.geometry.heads", str(pchs.heads)),
               ("ddb.geometry.sectors", str(pchs.sectors))]
        if req.lchs.is_set:
            ddb += [(key, str(v)) for key, v in zip(LCHS_KEYS, (
                req.lchs.cylinders, req.lchs.heads, req.lchs.sectors))]
        ddb += [(UUID_KEYS["uuid"], str(req.uuid)),
                (UUID_KEYS["modification"], str(uuidlib.uuid4())),
                (UUID_KEYS["parent"], str(parent.uuid or NIL_UUID) if parent else str(NIL_UUID)),
                (UUID_KEYS["parent_modification"],
                 str(parent.modification_uuid or NIL_UUID) if parent else str(NIL_UUID))]
        if req.comment:
            ddb.append(("ddb.comment", encode_comment(req.comment)))
        return Descriptor.new(create_type, new_cid(), parent_cid, extents, ddb, hint)

    def _embedded_sectors(self, text: bytes) -> int:
        """Room for an embedded descriptor: 20 sectors, or twice what it needs."""
        need = -(-(len(text) + 1) // SECTOR)
        sectors = DEFAULT_DESCRIPTOR_SECTORS if need <= DEFAULT_DESCRIPTOR_SECTORS // 2 \
            else 2 * need
        if sectors > MAX_DESCRIPTOR_SECTORS:
            raise InvalidParameter("the descriptor (with its comment) is too large", self.path)
        return sectors

    def _write_descriptor_file(self, descriptor: Descriptor) -> None:
        storage = self._new_file(os.path.basename(self.path))
        try:
            storage.write_at(0, encode(descriptor.render()))
            storage.flush()
        finally:
            storage.close()

    # -- the variants -------------------------------------------------------------------

    def _sparse_flags(self) -> tuple[int, int]:
        if flag(self.request.config, "ZeroedGrain"):
            return 2, FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT | FLAG_ZERO_GRAINS
        return 1, FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT

    def _create_sparse(self, sectors: int, two_gb: bool) -> Created:
        if not two_gb:
            version, flags = self._sparse_flags()
            line = ExtentLine("RW", sectors, "SPARSE", os.path.basename(self.path))
            descriptor = self._descriptor("monolithicSparse", [line])
            text = encode(descriptor.render())
            layout = SparseLayout.plan(sectors, version=version, flags=flags,
                                       desc_sectors=self._embedded_sectors(text))
            storage = self._new_file(os.path.basename(self.path))
            try:
                layout.write(storage, text)
                storage.flush()
            finally:
                storage.close()
            return Created()
        lines = []
        parts = self.split(sectors)
        for i, part in enumerate(parts, 1):
            name = self.name(f"-s{i:03d}")
            self.extent_file(name, part, False)
            lines.append(ExtentLine("RW", part, "SPARSE", name))
            report(self.request.progress, i, len(parts), "creating extents")
        self._write_descriptor_file(self._descriptor("twoGbMaxExtentSparse", lines))
        return Created()

    @staticmethod
    def split(sectors: int) -> list[int]:
        """Extent sizes (sectors) of a split image of ``sectors`` sectors."""
        step = SPLIT_SIZE // SECTOR
        return [min(step, sectors - pos) for pos in range(0, sectors, step)]

    def extent_file(self, name: str, sectors: int, flat: bool, done: int = 0,
                     total: int | None = None) -> None:
        """A new flat (preallocated) or sparse extent file (no embedded descriptor)."""
        storage = self._new_file(name)
        try:
            if flat:
                allocate(storage, 0, sectors * SECTOR, self.request.progress, done, total)
            else:
                version, flags = self._sparse_flags()
                SparseLayout.plan(sectors, version=version, flags=flags).write(storage)
        finally:
            storage.close()

    def _create_flat(self, sectors: int, two_gb: bool, esx: bool) -> Created:
        parts = self.split(sectors) if two_gb else [sectors]
        total = sectors * SECTOR
        done = 0
        lines = []
        for i, part in enumerate(parts, 1):
            name = self.name(f"-f{i:03d}" if two_gb else "-flat")
            self.extent_file(name, part, True, done, total)
            done += part * SECTOR
            lines.append(ExtentLine("RW", part, "VMFS", name) if esx
                         else ExtentLine("RW", part, "FLAT", name, 0))
        create_type = "vmfs" if esx else "twoGbMaxExtentFlat" if two_gb else "monolithicFlat"
        self._write_descriptor_file(self._descriptor(create_type, lines,
                                                     "lsilogic" if esx else "ide"))
        report(self.request.progress, total, total, "allocating")
        return Created()

    def _create_stream(self, sectors: int) -> Created:
        req = self.request
        line = ExtentLine("RW", sectors, "SPARSE", os.path.basename(self.path))
        descriptor = self._descriptor("streamOptimized", [line])
        text = encode(descriptor.render())
        desc_sectors = self._embedded_sectors(text)
        storage = self._new_file(os.path.basename(self.path))
        try:
            writer = StreamWriter.create(storage, sectors, self.path, text, desc_sectors,
                                         bool(req.open_flags & OpenFlags.HONOR_ZEROES))
        except BaseException:
            storage.close()
            raise
        return Created(stream=(storage, descriptor, writer, (SECTOR, desc_sectors * SECTOR)))

    def _create_raw(self, sectors: int) -> Created:
        raw = raw_disk_from_config(self.io, self.request.config, self.path)
        pt_name = self.name("-pt")
        lines, overlay = raw.extents(sectors, pt_name, self.path)
        if overlay:
            storage = self._new_file(pt_name)
            try:
                storage.write_at(0, overlay)
            finally:
                storage.close()
        create_type = "partitionedDevice" if raw.partitions else "fullDevice"
        self._write_descriptor_file(self._descriptor(create_type, lines))
        return Created(config={ALLOW_EXTERNAL: "1"})
