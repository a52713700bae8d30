"""``vdimg set``: change an image's stored metadata (the ``VDSet*`` calls).

IMAGE is opened alone (its parent need not be found: fixing a broken link is one
use of this command).  ``--uuid`` (with ``--child CHILD``, which also rewrites each
child's stored parent UUID) goes through the engine's ``change_uuid``, the same
code the desktop application uses.  Every child is checked to point at IMAGE's
current UUID, and every field to exist in the format, before anything is written,
so a refusal changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid as uuidlib
from typing import Any, Callable

from vdgui.engine import Disk
from vdgui.engine.errors import UuidMismatch
from vdgui.engine.ops import identity

from .. import args as types
from ..args import Parents, UsageError
from ..images import make_writable, open_single
from ..output import geometry_value, human_value, optional, uuid_value

#: (option dest, getter, setter) for each settable property of image 0 but its
#: UUID, which :func:`identity.change_uuid` changes (with the children's links).
_PROPERTIES: tuple[tuple[str, Callable[[Disk], Any], Callable[[Disk, Any], None]], ...] = (
    # Geometry first: whether a format stores it shows only when it is set, and a
    # refusal there must come before anything else was changed.
    ("pchs", lambda d: geometry_value(d.pchs(0)), lambda d, v: d.set_pchs(0, v)),
    ("lchs", lambda d: geometry_value(d.lchs(0)), lambda d, v: d.set_lchs(0, v)),
    ("parent_uuid", lambda d: uuid_value(d[0].parent_uuid),
     lambda d, v: d.set_parent_uuid(0, v)),
    ("modification_uuid", lambda d: uuid_value(d[0].modification_uuid),
     lambda d, v: d.set_modification_uuid(0, v)),
    ("parent_modification_uuid", lambda d: uuid_value(d[0].parent_modification_uuid),
     lambda d, v: d.set_parent_modification_uuid(0, v)),
    ("comment", lambda d: d[0].comment, lambda d, v: d.set_comment(0, v)),
)


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "set", parents=[parents.image], help="change an image's UUIDs, comment or geometry",
        description="Change metadata stored in IMAGE.  Changing the UUID of an image that "
                    "has children breaks their link unless each is given with --child.")
    parser.add_argument("--uuid", metavar="UUID|new", type=types.uuid_or_new)
    parser.add_argument("--child", metavar="CHILD", action="append", default=[],
                        help="with --uuid: also update this child's parent UUID; repeatable")
    parser.add_argument("--parent-uuid", metavar="UUID", type=types.uuid)
    parser.add_argument("--modification-uuid", metavar="UUID|new", type=types.uuid_or_new)
    parser.add_argument("--parent-modification-uuid", metavar="UUID", type=types.uuid)
    parser.add_argument("--comment", metavar="TEXT")
    parser.add_argument("--pchs", metavar="C/H/S", type=types.pchs, help="physical geometry")
    parser.add_argument("--lchs", metavar="C/H/S", type=types.lchs, help="logical geometry")
    parser.add_argument("image", metavar="IMAGE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    changes = [(name, get, put, getattr(args, name)) for name, get, put in _PROPERTIES
               if getattr(args, name) is not None]
    if not changes and args.uuid is None:
        raise UsageError(f"nothing to change in {args.image}: give at least one of --uuid, "
                         f"--parent-uuid, --modification-uuid, --parent-modification-uuid, "
                         f"--comment, --pchs, --lchs")
    if args.child and args.uuid is None:
        raise UsageError("--child only makes sense with --uuid")
    lines = []
    with contextlib.ExitStack() as stack:
        # Everything is checked on read-only opens; only then are the files reopened
        # for writing, so a refusal leaves every file as it was.
        disk = stack.enter_context(open_single(args.image, args.format))
        children = [stack.enter_context(_open_child(path, args.image)) for path in args.child]
        old_uuid = disk[0].uuid if args.uuid is not None else None
        for path, child in zip(args.child, children):
            _check_child(path, child, args.image, old_uuid)
        # A field the format lacks fails here.  (An unset geometry cannot be told
        # from an unsupported one; its setter says.)
        before = [get(disk) if name not in ("pchs", "lchs") else optional(lambda: get(disk))
                  for name, get, _, _ in changes]
        # Reopening for writing also proves that no other program is writing an image
        # that change_uuid will open below (it would fall back to read-only and fail
        # with a vaguer message, after the other fields were changed).
        to_write = [disk, *children] if args.uuid is not None else [disk] if changes else []
        for opened in to_write:
            make_writable(opened)
        for (name, get, put, value), old in zip(changes, before):
            put(disk, value)
            lines.append(f"{args.image}: {name}: {human_value(old)} -> "
                         f"{human_value(optional(lambda: get(disk)))}")
        disk.flush()
    if args.uuid is not None:
        # Last: the checks above make a refusal here unlikely, while a geometry the
        # format turns down only shows when it is set.
        new_uuid = identity.change_uuid(args.image, args.uuid, args.child)
        lines.append(f"{args.image}: uuid: {old_uuid} -> {new_uuid}")
        lines += [f"{path}: parent_uuid: {old_uuid} -> {new_uuid}" for path in args.child]
    print("\n".join(lines))
    return 0


def _open_child(path: str, image: str) -> Disk:
    if os.path.realpath(path) == os.path.realpath(image):
        raise UsageError(f"{path} is IMAGE itself, not one of its children")
    return open_single(path)


def _check_child(path: str, child: Disk, image: str, old_uuid: uuidlib.UUID) -> None:
    parent = uuid_value(optional(lambda: child[0].parent_uuid))
    if parent != str(old_uuid):
        what = f"has parent UUID {parent}" if parent else "has no parent UUID"
        raise UuidMismatch(f"not a child of {image}: it {what}, but {image} has UUID "
                           f"{old_uuid}; nothing was changed", path)
