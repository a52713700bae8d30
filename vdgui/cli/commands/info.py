"""``vdimg info [--json] [--chain] IMAGE``: the properties of an image (``VDGetXxx``).

Without ``--chain`` only IMAGE is opened (read-only), so the properties of a
differencing image whose parent is missing can still be shown; ``--chain`` opens
the whole chain and describes every image, base first.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from vdgui.engine import Capability, Disk, DiskType

from ..args import Parents
from ..images import open_readonly, open_single
from ..output import (geometry_value, human_size, human_value, optional, print_fields,
                      print_json, uuid_value)

#: The keys of one image's record, in the contract's order.
KEYS = ("path", "format", "type", "virtual_size", "file_size", "uuid", "parent_uuid",
        "modification_uuid", "parent_modification_uuid", "comment", "pchs", "lchs",
        "variant", "image_flags", "version", "read_only", "encrypted")

_SIZES = {"virtual_size", "file_size"}


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "info", parents=[parents.image], help="show an image's properties",
        description="Show the properties of IMAGE (and with --chain, of each ancestor).")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--chain", action="store_true",
                        help="also describe every ancestor (base first)")
    parser.add_argument("image", metavar="IMAGE")
    parser.set_defaults(run=run)


def image_record(disk: Disk, n: int) -> dict[str, Any]:
    """The contract's ``info --json`` object for image ``n`` of ``disk``."""
    view = disk[n]
    kind = view.disk_type if view.disk_type != DiskType.INVALID else DiskType.HDD
    return {
        "path": view.path,
        "format": view.backend.lower(),
        "type": kind.label,
        "virtual_size": view.size,
        "file_size": view.file_size,
        "uuid": uuid_value(optional(lambda: view.uuid)),
        "parent_uuid": uuid_value(optional(lambda: view.parent_uuid)),
        "modification_uuid": uuid_value(optional(lambda: view.modification_uuid)),
        "parent_modification_uuid": uuid_value(optional(lambda: view.parent_modification_uuid)),
        "comment": optional(lambda: view.comment),
        "pchs": geometry_value(optional(lambda: view.pchs)),
        "lchs": geometry_value(optional(lambda: view.lchs)),
        "variant": list(view.variant),
        "image_flags": int(view.image_flags),
        "version": view.version,
        "read_only": _read_only(disk, n),
        "encrypted": bool(view.encrypted),
    }


def _read_only(disk: Disk, n: int) -> bool:
    """Whether the image cannot be opened for writing.

    ``info`` itself opens everything read-only, so this describes the image, not
    this open: a format that cannot write, an optical disc, or files we may not
    write.
    """
    view = disk[n]
    if not view.backend_info.capabilities & (Capability.CREATE_FIXED | Capability.CREATE_DYNAMIC):
        return True
    if view.disk_type == DiskType.DVD:
        return True
    return not all(os.access(path, os.W_OK) for path in disk.image(n).files)


def run(args: argparse.Namespace) -> int:
    if args.chain:
        disk = open_readonly(args)
    else:
        disk = open_single(args.image, args.format)
    with disk:
        records = [image_record(disk, n) for n in range(disk.count)]
    top = records[-1]
    if args.json:
        print_json({**top, "chain": records} if args.chain else top)
    elif args.chain:
        for n, record in enumerate(records):
            if n:
                print()
            role = "base" if n == 0 else "top" if n == len(records) - 1 else "differencing"
            print(f"image {n} of {len(records)} ({role}):")
            print_fields(_human(record), indent="  ")
    else:
        print_fields(_human(top))
    return 0


def _human(record: dict[str, Any]) -> list[tuple[str, str]]:
    fields = []
    for key in KEYS:
        value = record[key]
        if key in _SIZES:
            text = human_size(value)
        elif key == "image_flags":
            text = f"{value:#x}"
        else:
            text = human_value(value)
        fields.append((key, text))
    return fields
