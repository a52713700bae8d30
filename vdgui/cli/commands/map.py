"""``vdimg map [--json] IMAGE``: which image of the chain holds each extent."""

from __future__ import annotations

import argparse
from typing import Any, Iterable

from vdgui.engine import MapExtent

from ..args import Parents
from ..images import open_readonly
from ..output import print_json, print_table


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "map", parents=[parents.image], help="show which image holds each extent",
        description="List the extents of IMAGE's virtual disk and the chain image "
                    "(0 = base) that holds each.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("image", metavar="IMAGE")
    parser.set_defaults(run=run)


def extents(found: Iterable[MapExtent]) -> list[dict[str, Any]]:
    """The contract's extent objects, adjacent equal ones merged.

    The engine keeps apart extents that differ only in their kind of zero (a zero
    block, a preallocated zero); the contract does not show that difference.
    """
    merged: list[dict[str, Any]] = []
    for ext in found:
        last = merged[-1] if merged else None
        if last and (last["depth"], last["path"], last["zero"]) == (ext.depth, ext.path,
                                                                    ext.zero) \
                and last["offset"] + last["length"] == ext.offset:
            last["length"] += ext.length
        else:
            merged.append({"offset": ext.offset, "length": ext.length, "depth": ext.depth,
                           "path": ext.path, "zero": ext.zero})
    return merged


def run(args: argparse.Namespace) -> int:
    with open_readonly(args) as disk:
        found = extents(disk.map())
    if args.json:
        print_json(found)
        return 0
    print_table(("offset", "length", "depth", "zero", "path"), (
        (f"{e['offset']:#x}", f"{e['length']:#x}",
         "-" if e["depth"] is None else str(e["depth"]), "yes" if e["zero"] else "no",
         e["path"] or "-") for e in found))
    return 0
