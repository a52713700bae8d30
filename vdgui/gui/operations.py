"""The operations the wizards run, as plain functions on worker threads.

Each operation has a parameter class, filled in by its wizard, whose
``command()`` gives the equivalent ``vdimg`` command line, and a function
``fn(params, progress) -> ChangeSet`` that opens what it needs with the engine,
does the work through :mod:`vdgui.engine.ops`, closes everything and says what
changed.  The ``*_facts`` functions are the read-only looks a wizard takes before
anything runs (what a merge moves, what a compaction frees, where data lies).

Everything is opened read-only first; the image that changes is switched to
read/write (``VDSetOpenFlags``) only once the checks passed, which is also when a
lock held by another program is found.  Qt-free.
"""

from __future__ import annotations

import os
import shlex
import uuid as uuidlib
from dataclasses import dataclass
from typing import Sequence

from ..engine import (LAST_IMAGE, Disk, ImageFlags, OpenFlags, Progress, RepairFlags,
                      default_provider, open_chain, registry, variant_names)
from ..engine.chain import UuidIndex
from ..engine.errors import AlreadyExists, InvalidParameter, InvalidState, NotSupported
from ..engine.formats.base import Image
from ..engine.ops import compact as compact_op
from ..engine.ops import copy as copy_op
from ..engine.ops import merge as merge_op
from ..engine.ops import rebase as rebase_op
from ..engine.ops import resize as resize_op
from ..engine.ops.compact import CompactPlan
from ..engine.ops.preflight import held_bytes
from ..engine.ops.repair import RepairReport, repair
from ..engine.types import IMAGE_CONTENT_UNKNOWN
from ..library import path_key
from .allocation import UNALLOCATED, AllocationMap, MapBuilder
from .edits import ChangeSet, option_arguments, search_arguments, size_argument
from .formatting import human_size

READ = OpenFlags.READONLY

#: Most folders a search for a parent image looks into (a whole disk is too much).
MAX_SEARCH_FOLDERS = 2000


def _command(*args: str) -> str:
    return shlex.join(["vdimg", *args])


def _make_writable(disk: Disk) -> None:
    """Reopen the top image for writing; the precise error when another program
    holds it (the engine would otherwise stay read-only and say only that)."""
    disk.set_open_flags(LAST_IMAGE, disk.open_flags(LAST_IMAGE) & ~OpenFlags.READONLY)


def _refuse_existing(paths: Sequence[str]) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise AlreadyExists("a file with this name already exists; vdgui never "
                                "overwrites files", path)


def _sub_progress(outer: Progress | None, offset: int, weight: int,
                  total: int) -> Progress | None:
    """A progress for one step of a longer operation, mapped into ``outer``'s range
    (cancelling ``outer`` cancels the step)."""
    if outer is None:
        return None

    def forward(done: int, steps: int, stage: str) -> None:
        outer.update(offset + (done * weight // steps if steps else weight), total, stage)

    return Progress(forward, outer.cancel_token, rate=0)


# -- copy and convert -----------------------------------------------------------------


@dataclass(frozen=True)
class CopyParams:
    """A copy of the chain ending in ``source``: flattened into one new image
    (``target`` is its path), or cloned image by image (``target`` is a folder)."""

    source: str
    target: str
    backend: str
    image_flags: ImageFlags = ImageFlags.NONE
    #: New virtual size (flatten only); None keeps the source's.
    size: int | None = None
    config: tuple[tuple[str, str], ...] = ()
    clone: bool = False
    #: The source chain, base first (names of the clone's files).
    chain: tuple[str, ...] = ()
    extension: str = ""
    search_paths: tuple[str, ...] = ()

    def targets(self) -> list[str]:
        """The files the copy creates, base first."""
        if not self.clone:
            return [self.target]
        return [os.path.join(self.target, f"{os.path.splitext(os.path.basename(p))[0]}."
                                          f"{self.extension}") for p in self.chain]

    def command(self) -> str:
        args = ["convert", "-O", self.backend.lower(), "-v",
                ",".join(variant_names(self.image_flags))]
        args += option_arguments(self.config) + search_arguments(self.search_paths)
        if self.size is not None:
            args += ["--size", size_argument(self.size)]
        if not self.clone:
            return _command(*args, self.source, self.target)
        # vdimg can only flatten; say so rather than show a command that differs.
        return ("# vdimg has no command that clones a chain image by image; this flattens "
                "it into one image instead:\n"
                + _command(*args, self.source, self.targets()[-1]))


def copy_image(params: CopyParams, progress: Progress | None = None) -> ChangeSet:
    """``vdimg convert`` (flatten) or ``VDCopyEx`` image by image (clone).

    A failed or cancelled copy removes every file it created; the source is only
    read.
    """
    targets = params.targets()
    _refuse_existing(targets)
    config = dict(params.config)
    with open_chain(params.source, READ, params.search_paths) as src:
        if not params.clone:
            copy_op.convert(src, params.target, params.backend, image_flags=params.image_flags,
                            size=params.size or 0, config=config, progress=progress)
            what = "a standalone image"
        else:
            _clone(src, targets, params.backend, params.image_flags, config, progress)
            what = f"a chain of {len(targets)} images"
    return ChangeSet(created=(targets[-1],), select=targets[-1],
                     summary=f"Copied {os.path.basename(params.source)} into {what}")


def _clone(src: Disk, targets: list[str], backend: str, flags: ImageFlags,
           config: dict[str, str], progress: Progress | None) -> None:
    sizes = [src.image(i).size for i in range(len(src))]
    if len(set(sizes)) > 1:
        raise NotSupported("the images of this chain have different sizes (a differencing "
                           "image was resized); copy it flattened instead", src.image(-1).path)
    total = sum(sizes)
    with Disk(src.disk_type, src.io) as dst:
        try:
            for i, path in enumerate(targets):
                # Images 0 .. i-1 are already identical in both chains: copy only image
                # i's own content, as a differencing image of the copy below it.
                same = IMAGE_CONTENT_UNKNOWN if i == 0 else i - 1
                copy_op.copy(src, i, dst, path, backend, from_same=same, to_same=same,
                             image_flags=flags if i == 0 else ImageFlags.NONE,
                             config=config, progress=_sub_progress(
                                 progress, sum(sizes[:i]), sizes[i], total))
        except BaseException:
            while len(dst):
                dst.close(delete=True)
            raise


@dataclass(frozen=True)
class SourceFacts:
    """What a copy wizard needs to know about its source chain."""

    size: int
    #: Bytes of data the chain holds (a dynamic copy needs about this much).
    held: int
    #: End of the last range that does not read as zeros (a smaller copy loses data).
    data_end: int
    #: Virtual size of each image, base first (a clone needs them equal).
    sizes: tuple[int, ...]


def source_facts(path: str, progress: Progress | None = None,
                 search_paths: Sequence[str] = ()) -> SourceFacts:
    with open_chain(path, READ, search_paths) as disk:
        data_end = 0
        for extent in disk.map():
            if progress is not None:
                progress.update(extent.offset, disk.size, "reading the block tables")
            if not extent.zero:
                data_end = extent.offset + extent.length
        return SourceFacts(disk.size, held_bytes(disk, len(disk) - 1), data_end,
                           tuple(image.size for image in disk.images))


# -- merge ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeParams:
    """``VDMerge(source, target)`` on the chain ``chain`` (paths, base first)."""

    chain: tuple[str, ...]
    source: int
    target: int
    search_paths: tuple[str, ...] = ()

    @property
    def deleted(self) -> range:
        """Indices of the images merged away."""
        if self.source < self.target:
            return range(self.source, self.target)
        return range(self.target + 1, self.source + 1)

    @property
    def merged(self) -> tuple[int, int]:
        """``(top, bottom)`` of the images whose data moves into the target."""
        return (self.target - 1, self.source) if self.source < self.target else (
            self.source, self.target + 1)

    @property
    def survivors(self) -> list[str]:
        return [p for i, p in enumerate(self.chain) if i not in self.deleted]

    def command(self) -> str:
        return _command("merge", "--from", str(self.source), "--to", str(self.target),
                        *search_arguments(self.search_paths), self.chain[-1])


def _open_merge_chain(params: MergeParams) -> Disk:
    disk = open_chain(params.chain[-1], READ, params.search_paths)
    found = [path_key(image.path) for image in disk.images]
    if found != [path_key(p) for p in params.chain]:
        disk.close_all()
        raise InvalidState("the chain changed since the merge was planned; read it again "
                           "(Refresh) and plan the merge anew", params.chain[-1])
    return disk


def merge_moves(params: MergeParams, progress: Progress | None = None) -> int:
    """Bytes of data the merge moves into its target (read-only)."""
    with _open_merge_chain(params) as disk:
        top, bottom = params.merged
        return held_bytes(disk, top, bottom)


def merge_images(params: MergeParams, progress: Progress | None = None) -> ChangeSet:
    with _open_merge_chain(params) as disk:
        if len(disk) - 1 in params.deleted:
            _make_writable(disk)  # it will be deleted: refuse now if another program has it
        merge_op.merge(disk, params.source, params.target, progress)
    target = params.chain[params.target]
    gone = tuple(params.chain[i] for i in params.deleted)
    return ChangeSet(changed=(target,), removed=gone, select=target,
                     summary=f"Merged {len(gone)} image{'s' if len(gone) > 1 else ''} into "
                             f"{os.path.basename(target)}")


# -- resize ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResizeParams:
    path: str
    size: int
    old_size: int
    search_paths: tuple[str, ...] = ()

    def command(self) -> str:
        shrink = ["--shrink"] if self.size < self.old_size else []
        return _command("resize", *shrink, *search_arguments(self.search_paths), self.path,
                        size_argument(self.size))


def can_resize(image: Image) -> bool:
    """Whether the image's format implements ``VDResize`` at all."""
    return type(image).resize is not Image.resize


@dataclass(frozen=True)
class ChainFacts:
    """The allocation map of a chain and what its top image's format can do."""

    map: AllocationMap
    backend: str
    fixed: bool
    file_size: int
    #: Why the top image cannot be resized / compacted ("" when it can).
    resize_refusal: str
    compact_refusal: str

    @property
    def top(self) -> int:
        return len(self.map.paths) - 1

    def data_end(self, depth: int | None = None) -> int:
        """End of the last data range (of layer ``depth``, or of any layer)."""
        m = self.map
        mask = ~m.zeros & (m.depths != UNALLOCATED)
        if depth is not None:
            mask &= m.depths == depth
        ends = (m.starts + m.lengths)[mask]
        return int(ends.max()) if len(ends) else 0


def chain_facts(path: str, progress: Progress | None = None,
                search_paths: Sequence[str] = ()) -> ChainFacts:
    with open_chain(path, READ, search_paths) as disk:
        top = disk.image(LAST_IMAGE)
        view = disk[LAST_IMAGE]
        try:
            compact_op.check_compactable(top)
            compact_refusal = ""
        except NotSupported as exc:
            compact_refusal = exc.message
        resize_refusal = "" if can_resize(top) else \
            f"the {view.backend} format cannot be resized"
        return ChainFacts(MapBuilder(disk).run(progress), view.backend,
                          bool(view.image_flags & ImageFlags.FIXED), view.file_size,
                          resize_refusal, compact_refusal)


def resize_image(params: ResizeParams, progress: Progress | None = None) -> ChangeSet:
    with open_chain(params.path, READ, params.search_paths) as disk:
        _make_writable(disk)
        old = disk.size
        resize_op.resize(disk, params.size, progress=progress)
    return ChangeSet(changed=(params.path,), select=params.path,
                     summary=f"Resized {os.path.basename(params.path)} from {human_size(old)} "
                             f"to {human_size(params.size)}")


# -- compact --------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactParams:
    path: str
    search_paths: tuple[str, ...] = ()

    def command(self) -> str:
        return _command("compact", *search_arguments(self.search_paths), self.path)


def compact_plan(params: CompactParams, progress: Progress | None = None) -> CompactPlan:
    """``compact(dry_run=True)``: what a compaction would release (read-only)."""
    with open_chain(params.path, READ, params.search_paths) as disk:
        compact_op.check_compactable(disk.image(LAST_IMAGE))
        return compact_op.compact(disk, LAST_IMAGE, progress, dry_run=True)


def compact_image(params: CompactParams, progress: Progress | None = None) -> ChangeSet:
    with open_chain(params.path, READ, params.search_paths) as disk:
        compact_op.check_compactable(disk.image(LAST_IMAGE))
        _make_writable(disk)
        before = disk[LAST_IMAGE].file_size
        compact_op.compact(disk, LAST_IMAGE, progress)
        after = disk[LAST_IMAGE].file_size
    return ChangeSet(changed=(params.path,), select=params.path,
                     summary=f"Compacted {os.path.basename(params.path)}: "
                             f"{human_size(max(before - after, 0))} reclaimed "
                             f"({human_size(before)} → {human_size(after)})")


# -- check and repair -----------------------------------------------------------------


@dataclass(frozen=True)
class RepairParams:
    path: str
    #: The format to check the file as; None probes it.  A file too damaged to be
    #: recognised is checked as the format its extension names.
    backend: str | None = None
    search_paths: tuple[str, ...] = ()

    @classmethod
    def for_file(cls, path: str, known_format: str | None,
                 search_paths: Sequence[str] = ()) -> RepairParams:
        backend = None
        if known_format is None:
            guess = registry.backend_for_extension(path)
            backend = guess.info.name if guess is not None else None
        return cls(path, backend, tuple(search_paths))

    def command(self, dry_run: bool = False) -> str:
        forced = ["-f", self.backend.lower()] if self.backend else []
        return _command("check" if dry_run else "repair", *forced,
                        *search_arguments(self.search_paths), self.path)


def check_image(params: RepairParams, progress: Progress | None = None) -> RepairReport:
    """``VDRepair`` with ``DRY_RUN``: the findings, changing nothing."""
    return repair(params.path, params.backend, flags=RepairFlags.DRY_RUN, progress=progress,
                  search_paths=params.search_paths)


def repair_image(params: RepairParams,
                 progress: Progress | None = None) -> tuple[RepairReport, RepairReport]:
    """Apply every fix, then check again: ``(what the repair did, the new check)``."""
    done = repair(params.path, params.backend, progress=_sub_progress(progress, 0, 1, 2),
                  search_paths=params.search_paths)
    again = check_image(params, _sub_progress(progress, 1, 1, 2))
    return done, again


# -- links and identity ---------------------------------------------------------------


@dataclass(frozen=True)
class RelinkParams:
    """``vdimg rebase``: make ``new_parent`` the parent of ``path``."""

    path: str
    new_parent: str
    unsafe: bool
    search_paths: tuple[str, ...] = ()

    def command(self) -> str:
        unsafe = ["--unsafe"] if self.unsafe else []
        return _command("rebase", *unsafe, *search_arguments(self.search_paths), self.path,
                        self.new_parent)


def relink(params: RelinkParams, progress: Progress | None = None) -> ChangeSet:
    rebase_op.rebase(params.path, params.new_parent, unsafe=params.unsafe,
                     search_paths=params.search_paths, progress=progress)
    return ChangeSet(changed=(params.path,), select=params.path,
                     summary=f"{os.path.basename(params.path)} now sits on "
                             f"{os.path.basename(params.new_parent)}")


def find_by_uuid(wanted: uuidlib.UUID, folder: str, progress: Progress | None = None,
                 exclude: Sequence[str] = ()) -> str | None:
    """The first image with UUID ``wanted`` in ``folder`` or below it (None if none)."""
    folders: list[str] = []
    for root, subdirs, _files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        folders.append(root)
        if len(folders) >= MAX_SEARCH_FOLDERS:
            break
    io = default_provider()
    for done, where in enumerate(folders):
        if progress is not None:
            progress.update(done, len(folders), f"searching {where}")
        found = UuidIndex(io, [where]).find(wanted, exclude=exclude)
        if found is not None:
            return os.path.abspath(found)
    return None


def image_files(path: str) -> list[str]:
    """Every host file of the image at ``path`` (a split VMDK has several)."""
    with Disk() as disk:
        disk.open(path, None, OpenFlags.READONLY | OpenFlags.INFO)
        return list(disk.image(0).files)


def delete_images(paths: Sequence[str], progress: Progress | None = None) -> ChangeSet:
    """Delete the files of the images ``paths`` (children before their parents)."""
    if not paths:
        raise InvalidParameter("no image to delete")
    files = [(path, image_files(path)) for path in paths]
    io = default_provider()
    for done, (path, parts) in enumerate(files):
        if progress is not None:
            progress.update(done, len(files), f"deleting {os.path.basename(path)}")
        for part in parts:
            io.delete(part)
    return ChangeSet(removed=tuple(paths),
                     summary=f"Deleted {len(paths)} image{'s' if len(paths) > 1 else ''}")
