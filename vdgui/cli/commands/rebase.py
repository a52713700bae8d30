"""``vdimg rebase [--unsafe] IMAGE NEW_PARENT``: make NEW_PARENT's chain the parent
of IMAGE.

Safe (the default): wherever the old and the new parent chains differ and IMAGE
holds nothing, the old content is first copied into IMAGE, so IMAGE's virtual
content does not change; then the link (parent UUID, modification UUID, path) is
rewritten.  ``--unsafe`` only rewrites the link, which also works when the old
parent is gone.
"""

from __future__ import annotations

import argparse

from vdgui.engine import probe
from vdgui.engine.ops import rebase

from ..args import Parents, UsageError
from ..progress import operation, wanted


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "rebase", parents=[parents.image], help="give an image a different parent",
        description="Make NEW_PARENT's chain the parent of IMAGE.  Without --unsafe, data "
                    "that differs between the old and the new parent is first copied into "
                    "IMAGE, so IMAGE's content does not change.")
    parser.add_argument("--unsafe", action="store_true",
                        help="only rewrite the links (for a parent known to hold the same "
                             "content, e.g. a copy); the old parent need not exist")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("new_parent", metavar="NEW_PARENT")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.format is not None:
        # The engine probes IMAGE itself: -f can only confirm what it will find.
        found, _ = probe(args.image)
        if found.lower() != args.format.lower():
            raise UsageError(f"{args.image} is a {found.lower()} image, not "
                             f"{args.format.lower()}; rebase cannot force a format")
    with operation(f"rebasing {args.image}", wanted(args)) as progress:
        rebase.rebase(args.image, args.new_parent, unsafe=args.unsafe,
                      search_paths=args.search_path, progress=progress)
    if args.unsafe:
        print(f"{args.image} now has {args.new_parent} as its parent (unsafe: only the links "
              f"were rewritten; its content was not compared)")
    else:
        print(f"{args.image} now has {args.new_parent} as its parent; its content is "
              f"unchanged")
    return 0
