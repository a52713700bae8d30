"""``vdimg discard IMAGE OFFSET LENGTH``: ``VDDiscardRanges`` on IMAGE opened with
``VD_OPEN_FLAGS_DISCARD``.

The range then reads as zeros, and the storage of the whole blocks inside it is
released (the file is packed).  A format that cannot discard is refused when the
image is opened, before anything is written.
"""

from __future__ import annotations

import argparse

from vdgui.engine import LAST_IMAGE, OpenFlags, open_chain
from vdgui.engine.ops import discard

from .. import args as types
from ..args import Parents, UsageError
from ..images import image_config, make_writable
from ..output import human_size
from ..progress import operation, wanted


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "discard", parents=[parents.image], help="release a range of the virtual disk",
        description="Discard LENGTH bytes of IMAGE's virtual disk from OFFSET: they read "
                    "as zeros afterwards and their storage is released.")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("offset", metavar="OFFSET", type=types.size)
    parser.add_argument("length", metavar="LENGTH", type=types.size)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    flags = OpenFlags.READONLY | OpenFlags.DISCARD
    with open_chain(args.image, flags, args.search_path, args.format,
                    config=image_config(args)) as disk:
        if args.offset + args.length > disk.size:
            raise UsageError(f"{args.image}: discarding {args.length} bytes at offset "
                             f"{args.offset} would go past the end of the virtual disk "
                             f"({disk.size} bytes)")
        if args.length == 0:
            print(f"nothing to discard in {args.image} (LENGTH is 0)")
            return 0
        make_writable(disk)
        before = disk[LAST_IMAGE].file_size
        with operation(f"discarding in {args.image}", wanted(args)) as progress:
            discard.discard(disk, [(args.offset, args.length)], progress)
        after = disk[LAST_IMAGE].file_size
    print(f"discarded {human_size(args.length)} at offset {args.offset} of {args.image}; "
          f"file size {human_size(before)} -> {human_size(after)}")
    return 0
