"""``vdimg compact IMAGE``: ``VDCompact`` of IMAGE (the top of its chain).

Blocks that only repeat what the images below show, and all-zero blocks, are
released and the file shrunk; the chain's content does not change.  The file size
before and after shows what was reclaimed.  ``--dry-run`` reports what would be
released, by cause, without changing anything.
"""

from __future__ import annotations

import argparse

from vdgui.engine import LAST_IMAGE
from vdgui.engine.ops import compact
from vdgui.engine.ops.compact import CompactPlan

from ..args import Parents
from ..images import make_writable, open_readonly
from ..output import human_size, print_fields
from ..progress import operation, wanted


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "compact", parents=[parents.image], help="release unneeded blocks and shrink the file",
        description="Release the blocks of IMAGE that hold only zeros or only repeat its "
                    "parents' content, and shrink its file.  The content does not change.")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be released; change nothing")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("image", metavar="IMAGE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with open_readonly(args) as disk:
        # A format that cannot compact is refused before the image is opened for
        # writing (and before a dry run promises anything).
        compact.check_compactable(disk.image(LAST_IMAGE))
        label = f"compacting {args.image}"
        if args.dry_run:
            with operation(label, wanted(args)) as progress:
                found = compact.compact(disk, LAST_IMAGE, progress, dry_run=True)
            print(f"compacting {args.image} would release {human_size(found.reclaimable)}")
            _print_plan(found)
            print("nothing was changed (dry run)")
            return 0
        make_writable(disk)
        before = disk[LAST_IMAGE].file_size
        with operation(label, wanted(args)) as progress:
            done = compact.compact(disk, LAST_IMAGE, progress)
        after = disk[LAST_IMAGE].file_size
    print(f"compacted {args.image}: {human_size(max(before - after, 0))} reclaimed, file size "
          f"{human_size(before)} -> {human_size(after)}")
    _print_plan(done)
    return 0


def _print_plan(found: CompactPlan) -> None:
    fields = [
        ("same as the images below", human_size(found.same_as_below)),
        ("all-zero blocks", human_size(found.zero)),
    ]
    if found.kept_zero:
        fields.append(("all-zero blocks kept", f"{human_size(found.kept_zero)} (the format "
                                               f"cannot mark blocks as zero here)"))
    fields.append(("allocated blocks examined", human_size(found.allocated)))
    print_fields(fields, indent="  ")
