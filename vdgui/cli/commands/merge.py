"""``vdimg merge [--from N] [--to M] IMAGE``: ``VDMerge`` on IMAGE's chain.

Images ``N`` .. ``M`` are folded into image ``M`` and the others are deleted; by
default IMAGE (``N-1``) is committed into its parent (``N-2``), so IMAGE itself is
deleted.  ``--dry-run`` shows what would be deleted, the chain that would remain
and how much data would move, and changes nothing.  The engine keeps the chain
readable at every step, so a cancelled merge leaves it as it was.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from vdgui.engine import Disk
from vdgui.engine.ops import merge
from vdgui.engine.ops.preflight import held_bytes

from ..args import Parents, UsageError
from ..images import make_writable, open_readonly
from ..output import human_size, print_fields
from ..progress import operation, wanted


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "merge", parents=[parents.image], help="merge images of a chain into one",
        description="Merge images N .. M of IMAGE's chain (numbered from 0, the base, to "
                    "IMAGE) into image M, and delete the images merged away.  By default "
                    "IMAGE is merged into its parent and deleted.")
    parser.add_argument("--from", dest="source", metavar="N", type=int,
                        help="the first image to merge (default: IMAGE, the last)")
    parser.add_argument("--to", dest="target", metavar="M", type=int,
                        help="the image that receives the data (default: IMAGE's parent)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be merged and deleted; change nothing")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("image", metavar="IMAGE")
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class Plan:
    """A merge of images ``source`` .. ``target`` of a chain given by its paths."""

    source: int
    target: int
    paths: tuple[str, ...]

    @property
    def deleted(self) -> range:
        """The images merged away (everything in the range but the target)."""
        if self.source < self.target:
            return range(self.source, self.target)
        return range(self.target + 1, self.source + 1)

    @property
    def survivors(self) -> list[str]:
        return [p for i, p in enumerate(self.paths) if i not in self.deleted]


def plan(disk: Disk, image: str, source: int | None, target: int | None) -> Plan:
    """The merge the options ask for, refused (exit 2) where it is impossible."""
    count = disk.count
    if count == 1:
        raise UsageError(f"{image} is not a differencing image: its chain holds only this "
                         f"one image, so there is nothing to merge")
    source = count - 1 if source is None else source
    target = count - 2 if target is None else target
    for option, value in (("--from", source), ("--to", target)):
        if not 0 <= value < count:
            raise UsageError(f"{option} {value}: the chain of {image} has images 0 (the "
                             f"base) to {count - 1} (IMAGE)")
    if source == target:
        raise UsageError(f"--from and --to both name image {source} of {image}'s chain; "
                         f"an image cannot be merged into itself")
    return Plan(source, target, tuple(disk[i].path for i in range(count)))


def run(args: argparse.Namespace) -> int:
    with open_readonly(args) as disk:
        wanted_merge = plan(disk, args.image, args.source, args.target)
        deleted = wanted_merge.deleted
        moved = held_bytes(disk, deleted[-1], deleted[0])
        merged = ", ".join(wanted_merge.paths[i] for i in deleted)
        into = wanted_merge.paths[wanted_merge.target]
        if args.dry_run:
            print(f"merging {merged} into {into} would move {human_size(moved)} of data")
            _print_outcome(wanted_merge, "would delete", "chain after")
            print("nothing was changed (dry run)")
            return 0
        if disk.count - 1 in deleted:
            # IMAGE will be deleted: refuse now if another program is writing it.
            make_writable(disk)
        with operation(f"merging {merged} into {into}", wanted(args)) as progress:
            merge.merge(disk, wanted_merge.source, wanted_merge.target, progress)
    print(f"merged {merged} into {into}: {human_size(moved)} of data")
    _print_outcome(wanted_merge, "deleted", "chain now")
    return 0


def _print_outcome(merge_plan: Plan, deleted: str, chain: str) -> None:
    print_fields([
        (deleted, ", ".join(merge_plan.paths[i] for i in merge_plan.deleted)),
        (chain, ", ".join(merge_plan.survivors) + " (base first)"),
    ], indent="  ")
