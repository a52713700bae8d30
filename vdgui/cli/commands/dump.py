"""``vdimg dump IMAGE``: every image of the chain with its internal structures
(``VDDumpImages``)."""

from __future__ import annotations

import argparse

from ..args import Parents
from ..images import open_readonly


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "dump", parents=[parents.image], help="describe the chain's internal structures",
        description="Describe every image of IMAGE's chain, base first, including "
                    "format-internal structures (header fields, table locations).")
    parser.add_argument("image", metavar="IMAGE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with open_readonly(args) as disk:
        print(disk.dump())
    return 0
