"""``vdimg compare IMAGE_A IMAGE_B``: are the virtual contents of two chains equal?

Exit 0 when identical, 1 when not (printing the first differing offset).  Images
of different sizes are equal when the longer one's extra part reads as zeros.
Ranges that both chains know to read as zeros (unallocated or zero blocks) are
skipped without reading (see :mod:`vdgui.engine.ops.compare`).
"""

from __future__ import annotations

import argparse

from vdgui.engine.ops.compare import first_difference

from .. import args as types
from ..args import Parents
from ..images import open_readonly
from ..progress import operation, wanted

#: Bytes compared per step.
def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "compare", parents=[parents.image], help="compare the contents of two images",
        description="Compare the virtual contents of two image chains (any formats). "
                    "Exit status 0: identical, 1: different.")
    parser.add_argument("-F", "--format-b", metavar="FMT", type=types.format_name,
                        help="IMAGE_B's format (default: probed; -f is IMAGE_A's)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("image_a", metavar="IMAGE_A")
    parser.add_argument("image_b", metavar="IMAGE_B")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with open_readonly(args, args.image_a, args.format) as a, \
            open_readonly(args, args.image_b, args.format_b) as b:
        with operation(f"comparing {args.image_a} and {args.image_b}",
                       wanted(args)) as progress:
            offset = first_difference(a, b, progress)
        sizes = (a.size, b.size)
    if offset is not None:
        print(f"Images differ: first difference at offset {offset} ({offset:#x})")
        return 1
    if sizes[0] != sizes[1]:
        print(f"Images are identical (sizes differ, {sizes[0]} and {sizes[1]} bytes, but the "
              f"extra part of the larger one reads as zeros)")
    else:
        print("Images are identical")
    return 0
