"""``vdimg create``: a new base image (``VDCreateBase``) or, with ``--parent``, a
differencing image on top of PARENT's chain (``VDCreateDiff``).

The format comes from ``-f``, else IMAGE's extension, else VDI (for a
differencing image: PARENT's format where it can have children).  Variants are
checked against what the format can create before anything is written; the
engine's refusal of a parameter (an unknown option, an impossible size) is a
usage error too.
"""

from __future__ import annotations

import argparse
from typing import Callable

from vdgui.engine import (BackendInfo, Capability, Disk, DiskType, Geometry, ImageFlags,
                          OpenFlags, backend_info, open_chain, parse_variant)
from vdgui.engine import registry
from vdgui.engine.errors import InvalidParameter, InvalidSize, VDError
from vdgui.engine.sizes import align_up
from vdgui.engine.types import SECTOR

from .. import args as types
from ..images import image_config
from ..args import Parents, UsageError
from ..output import human_size
from ..progress import operation, wanted


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "create", parents=[parents.image], help="create a new image",
        usage="%(prog)s [options] IMAGE SIZE\n       %(prog)s [options] --parent PARENT IMAGE",
        description="Create a new base image of SIZE bytes, or with --parent a "
                    "differencing image on top of PARENT's chain.")
    parser.add_argument("-v", "--variant", metavar="VARIANT[,VARIANT...]",
                        help="standard (dynamically growing, the default), fixed, ...; "
                             "see 'vdimg formats'")
    parser.add_argument("-o", "--option", metavar="KEY=VALUE", type=types.key_value,
                        action="append", default=[], help="a format creation option")
    parser.add_argument("--comment", metavar="TEXT")
    parser.add_argument("--uuid", metavar="UUID", type=types.uuid)
    parser.add_argument("--pchs", metavar="C/H/S", type=types.pchs,
                        help="physical geometry")
    parser.add_argument("--lchs", metavar="C/H/S", type=types.lchs, help="logical geometry")
    parser.add_argument("--type", metavar="hdd|dvd|floppy", type=types.disk_type,
                        help="the kind of medium (default hdd)")
    parser.add_argument("--parent", metavar="PARENT",
                        help="create a differencing image on top of PARENT's chain")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("size", metavar="SIZE", type=types.size, nargs="?")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.parent is not None:
        return _create_diff(args)
    if args.size is None:
        raise UsageError("create needs IMAGE and SIZE (or --parent PARENT for a "
                         "differencing image)")
    if args.size <= 0:
        raise UsageError(f"the size of {args.image} must be larger than 0")
    size = align_up(args.size, SECTOR)
    info = backend_info(args.format) if args.format else _info_for_extension(args.image)
    flags = image_flags(info, args.variant, args.image)
    disk_type = args.type or DiskType.HDD
    with operation(f"creating {args.image}", wanted(args) and bool(flags & ImageFlags.FIXED)) \
            as progress, Disk(disk_type) as disk:
        as_usage(lambda: disk.create_base(
            args.image, size, info.name, flags, args.comment, args.pchs or Geometry(),
            args.lchs or Geometry(), args.uuid, config=dict(args.option),
            progress=progress))
        _report(disk)
    return 0


def _create_diff(args: argparse.Namespace) -> int:
    misplaced = [opt for opt, value in (("SIZE", args.size), ("--pchs", args.pchs),
                                        ("--lchs", args.lchs), ("--type", args.type))
                 if value is not None]
    if misplaced:
        raise UsageError(f"{', '.join(misplaced)} cannot be given for a differencing image "
                         f"({args.image} takes its size and geometry from {args.parent})")
    with operation(f"creating {args.image}", False) as progress, \
            open_chain(args.parent, OpenFlags.READONLY, args.search_path,
                       config=image_config(args)) as disk:
        info = backend_info(args.format) if args.format else _diff_format(disk, args.image)
        flags = image_flags(info, args.variant, args.image, diff=True)
        as_usage(lambda: disk.create_diff(
            args.image, info.name, flags, args.comment, args.uuid,
            config=dict(args.option), progress=progress))
        _report(disk)
    return 0


def _info_for_extension(path: str) -> BackendInfo:
    cls = registry.backend_for_extension(path)
    return cls.info if cls is not None else backend_info("VDI")


def _diff_format(disk: Disk, path: str) -> BackendInfo:
    """PARENT's format where it can have children, else IMAGE's extension's, else VDI."""
    for info in (disk[-1].backend_info, _info_for_extension(path)):
        if info.has(Capability.DIFF):
            return info
    return backend_info("VDI")


def image_flags(info: BackendInfo, text: str | None, path: str,
                diff: bool = False) -> ImageFlags:
    """The image flags ``-v`` asks for, refusing variants ``info`` cannot create."""
    fmt = info.name.lower()
    if not info.variants:
        raise UsageError(f"the {fmt} format cannot create images ({path})")
    if text is None:
        # Dynamically growing where the format can be; raw is always fixed.
        return ImageFlags.NONE if diff or "standard" in info.variants else ImageFlags.FIXED
    try:
        flags = parse_variant(text)
    except InvalidParameter as exc:
        raise UsageError(f"{path}: {exc}") from None
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    unsupported = [n for n in names if n not in info.variants]
    if unsupported:
        raise UsageError(f"the {fmt} format cannot create {', '.join(unsupported)} images "
                         f"({path}); its variants are: {', '.join(info.variants)}")
    return flags


def as_usage(call: Callable[[], object]) -> None:
    """Run an engine call that creates an image (``create``, ``convert``); a parameter
    it refuses is the user's mistake (exit 2)."""
    try:
        call()
    except (InvalidParameter, InvalidSize) as exc:
        raise UsageError(str(exc)) from exc


def _report(disk: Disk) -> None:
    view = disk[-1]
    try:
        ident = f", UUID {view.uuid}"
    except VDError:
        ident = ""
    kind = "differencing image" if disk.count > 1 else ", ".join(view.variant)
    print(f"created {view.path}: {view.backend.lower()} {kind}, "
          f"{human_size(view.size)}{ident}")
