"""The changes the GUI makes to images, as plain functions run on worker threads.

Every function here is Qt-free and self-contained: it opens what it needs with the
engine, changes it through the engine's setters (``VDSet*``) or creators
(``VDCreateBase``/``VDCreateDiff``), closes everything and returns a
:class:`ChangeSet` naming the files it touched.  Browsing never comes here: the
library reads images with read-only ``INFO`` opens; only these functions open an
image for writing, and only for the duration of one change.

Input is validated *before* anything is opened for writing (the ``validate_*`` and
``parse_*`` helpers raise :class:`~vdgui.engine.errors.InvalidParameter` in words),
so a refused value never writes a byte.
"""

from __future__ import annotations

import os
import shlex
import uuid as uuidlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

from ..engine import (Disk, Geometry, ImageFlags, ImageView, OpenFlags, Progress, open_chain,
                      variant_names)
from ..engine.errors import InvalidParameter, ReadOnly
from ..engine.io import default_provider
from ..engine.ops.identity import change_uuid
from ..engine.types import parse_uuid
from ..library import inspect

#: The four UUIDs of an image, as ImageView property names, with their labels.
UUID_FIELDS: dict[str, str] = {
    "uuid": "UUID",
    "parent_uuid": "parent UUID",
    "modification_uuid": "modification UUID",
    "parent_modification_uuid": "parent modification UUID",
}

#: A child stores its parent's UUID (and modification UUID) under these names.
CHILD_FIELD = {"uuid": "parent_uuid", "modification_uuid": "parent_modification_uuid"}


@dataclass(frozen=True)
class ChangeSet:
    """What an operation changed, so the views refresh and select the right rows."""

    changed: tuple[str, ...] = ()
    created: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: The image to select when the operation is done.
    select: str | None = None
    #: What was done, in a sentence (status bar, jobs panel); "" for the default.
    summary: str = ""


@dataclass(frozen=True)
class Edit:
    """A change a panel asks for; the main window runs ``run`` on a worker thread."""

    #: Shown while it runs ("Changing the comment of base.vdi").
    title: str
    #: Completes "vdgui could not ..." in an error message.
    doing: str
    run: Callable[[Progress], ChangeSet] = field(repr=False)
    #: The images it changes and those it reads: locked while it runs.
    writes: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()


# -- validation -----------------------------------------------------------------------


def parse_uuid_text(text: str, label: str = "UUID") -> uuidlib.UUID:
    """A UUID typed by a person (braces allowed), or InvalidParameter in words."""
    cleaned = text.strip().strip("{}")
    if not cleaned:
        raise InvalidParameter(f"the {label} is empty")
    try:
        return parse_uuid(cleaned)
    except InvalidParameter:
        raise InvalidParameter(
            f"“{text.strip()}” is not a valid {label}: a UUID is 32 hexadecimal digits, "
            f"written like 01234567-89ab-cdef-0123-456789abcdef") from None


def validate_geometry(geometry: Geometry, physical: bool) -> None:
    """Refuse geometries the VD API refuses, and half-set ones."""
    kind = "physical" if physical else "logical"
    if geometry.cylinders and not (geometry.heads and geometry.sectors):
        raise InvalidParameter(
            f"the {kind} geometry {geometry} is incomplete: with cylinders set, heads "
            f"and sectors must be set too (0/0/0 means “not set”)")
    if not geometry.cylinders and (geometry.heads or geometry.sectors):
        raise InvalidParameter(
            f"the {kind} geometry {geometry} has no cylinders (0/0/0 means “not set”)")
    if physical:
        geometry.validate_pchs()
    else:
        geometry.validate_lchs()


# -- metadata edits -------------------------------------------------------------------


def _require_writable(disk: Disk) -> None:
    """Refuse, with the real reason, when the engine fell back to a read-only open.

    ``VDOpen`` silently opens an image read-only when it is locked by another
    program or not writable; the setters would then only say "read-only".
    Opening the file for writing once more yields the precise error (in use,
    permission denied).
    """
    image = disk[-1]
    if not image.read_only:
        return
    _check_not_locked(image.filename)
    raise ReadOnly("the image could not be opened for writing", image.filename)


@contextmanager
def _open_for_edit(path: str) -> Iterator[ImageView]:
    """The image at ``path``, on top of its chain, opened for writing."""
    with open_chain(path, OpenFlags.NORMAL) as disk:
        _require_writable(disk)
        yield disk[-1]


def set_comment(path: str, comment: str) -> ChangeSet:
    """``VDSetComment`` on ``path`` (the top of its chain)."""
    with _open_for_edit(path) as image:
        image.comment = comment
    return ChangeSet(changed=(path,), select=path)


def set_geometry(path: str, pchs: Geometry | None, lchs: Geometry | None) -> ChangeSet:
    """``VDSetPCHSGeometry`` / ``VDSetLCHSGeometry``; None leaves one unchanged."""
    for geometry, physical in ((pchs, True), (lchs, False)):
        if geometry is not None:
            validate_geometry(geometry, physical)
    with _open_for_edit(path) as image:
        if pchs is not None:
            image.pchs = pchs
        if lchs is not None:
            image.lchs = lchs
    return ChangeSet(changed=(path,), select=path)


def set_uuids(path: str, values: Mapping[str, uuidlib.UUID],
              children: Sequence[str] = ()) -> ChangeSet:
    """The ``VDSet*Uuid`` calls on ``path``; ``children`` keep their link.

    ``values`` maps names of :data:`UUID_FIELDS` to new UUIDs.  When the image's own
    UUID or modification UUID changes, those of ``children`` (differencing images
    made from it) that refer to the old value get the new one as their parent
    (modification) UUID, as ``vdimg set --uuid ... --child CHILD`` does.  The UUID
    itself goes through the engine's :func:`~vdgui.engine.ops.identity.change_uuid`,
    which checks every child before it changes anything.
    """
    unknown = set(values) - set(UUID_FIELDS)
    if unknown:
        raise InvalidParameter(f"unknown UUID fields: {', '.join(sorted(unknown))}", path)
    old = inspect(path)
    follow = {name: [c for c in children
                     if getattr(inspect(c), CHILD_FIELD[name]) == getattr(old, name)]
              for name in CHILD_FIELD if name in values}
    others = {name: value for name, value in values.items() if name != "uuid"}
    if others:
        with _open_for_edit(path) as image:
            for name, value in others.items():
                setattr(image, name, value)
    for child in follow.get("modification_uuid", []):
        with Disk() as disk:
            # INFO: the child is opened alone (its recorded parent no longer matches).
            disk.open(child, None, OpenFlags.INFO)
            _require_writable(disk)
            disk[0].parent_modification_uuid = values["modification_uuid"]
    if "uuid" in values:
        for target in (path, *follow["uuid"]):
            _check_not_locked(target)
        change_uuid(path, values["uuid"], follow["uuid"])
    relinked = sorted({c for group in follow.values() for c in group})
    return ChangeSet(changed=(path, *relinked), select=path)


def _check_not_locked(path: str) -> None:
    """Raise the precise error (in use, permission denied) when ``path`` is not writable."""
    default_provider().open(path, writable=True).close()


# -- creating images ------------------------------------------------------------------


def size_argument(size: int) -> str:
    """A size for the command line: ``20G`` when exact, else the byte count."""
    for suffix, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{suffix}"
    return str(size)


@dataclass(frozen=True)
class CreateParams:
    """Everything the New Image wizards collect."""

    path: str
    backend: str
    image_flags: ImageFlags = ImageFlags.NONE
    #: Virtual size in bytes; None for a differencing image (the parent's size).
    size: int | None = None
    comment: str = ""
    #: The image a differencing image is made from; None for a base image.
    parent: str | None = None
    #: The format's creation options (``-o KEY=VALUE``).
    config: tuple[tuple[str, str], ...] = ()
    #: Geometries to store (None: the format's default).
    pchs: Geometry | None = None
    lchs: Geometry | None = None
    #: Folders searched for the parent's own ancestors (differencing images).
    search_paths: tuple[str, ...] = ()

    def command(self) -> str:
        """The equivalent ``vdimg`` command line, for scripting what the wizard did."""
        args = ["vdimg", "create", "-f", self.backend.lower()]
        if self.parent is None:
            args += ["-v", ",".join(variant_names(self.image_flags))]
        else:
            args += ["--parent", self.parent] + search_arguments(self.search_paths)
        args += option_arguments(self.config)
        for flag, geometry in (("--pchs", self.pchs), ("--lchs", self.lchs)):
            if geometry is not None:
                args += [flag, str(geometry)]
        if self.comment:
            args += ["--comment", self.comment]
        args.append(self.path)
        if self.parent is None and self.size is not None:
            args.append(size_argument(self.size))
        return shlex.join(args)


def option_arguments(config: Sequence[tuple[str, str]]) -> list[str]:
    """``-o KEY=VALUE`` arguments for a format's creation options."""
    return [arg for key, value in config for arg in ("-o", f"{key}={value}")]


def search_arguments(folders: Sequence[str]) -> list[str]:
    """``--search-path DIR`` arguments."""
    return [arg for folder in folders for arg in ("--search-path", folder)]


def create_image(params: CreateParams, progress: Progress | None = None) -> ChangeSet:
    """``VDCreateBase`` or ``VDCreateDiff`` as ``params`` say; closes what it made."""
    if os.path.exists(params.path):
        raise InvalidParameter("a file with this name already exists; vdgui never "
                               "overwrites files", params.path)
    comment = params.comment or None
    config = dict(params.config)
    if params.parent is None:
        if params.size is None:
            raise InvalidParameter("a new base image needs a size", params.path)
        with Disk() as disk:
            disk.create_base(params.path, params.size, params.backend, params.image_flags,
                             comment=comment, pchs=params.pchs, lchs=params.lchs,
                             config=config, progress=progress)
    else:
        with open_chain(params.parent, OpenFlags.READONLY, params.search_paths) as disk:
            disk.create_diff(params.path, params.backend, params.image_flags,
                             comment=comment, config=config, progress=progress)
    return ChangeSet(created=(params.path,), select=params.path)
