"""``vdimg check`` and ``vdimg repair``: ``VDRepair``, as a dry run or for real.

``check`` changes nothing and exits 1 when it finds problems; ``repair`` applies
the fixes the check reports (crash-safely) and exits 0 when the image is clean
afterwards, 3 when something could not be repaired.
"""

from __future__ import annotations

import argparse

from vdgui.engine import RepairFlags
from vdgui.engine.ops.repair import RepairReport, repair

from ..args import Parents
from ..output import human_size, print_json
from ..progress import operation, wanted


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    for name, text, summary in (
            ("check", "report what is wrong with IMAGE and what a repair would do; "
                      "change nothing", "check an image for damage"),
            ("repair", "fix what can be fixed in IMAGE and report what was done",
                       "repair a damaged image")):
        parser = subparsers.add_parser(name, parents=[parents.image], help=summary,
                                       description=text[0].upper() + text[1:] + ".")
        parser.add_argument("--json", action="store_true", help="print a JSON document")
        parser.add_argument("--progress", action="store_true", help="show a progress bar")
        parser.add_argument("image", metavar="IMAGE")
        parser.set_defaults(run=run, dry_run=name == "check")


def run(args: argparse.Namespace) -> int:
    flags = RepairFlags.DRY_RUN if args.dry_run else RepairFlags.NONE
    verb = "checking" if args.dry_run else "repairing"
    with operation(f"{verb} {args.image}", wanted(args, args.json)) as progress:
        result = repair(args.image, args.format, flags, progress=progress,
                        search_paths=tuple(args.search_path))
    if args.json:
        print_json(result.to_json())
    else:
        _print_human(result, args.dry_run)
    if args.dry_run:
        return 0 if result.clean else 1
    return 0 if result.clean else 3


def _print_human(result: RepairReport, dry_run: bool) -> None:
    if result.repaired:
        print(f"{result.path}: repaired {_count(len(result.fixed))}:")
        for problem in result.fixed:
            print(f"  fixed {problem.severity}: {problem.what} -> {problem.fix}")
    if result.clean:
        print(f"{result.path}: no problems found ({result.format})")
        return
    heading = "found" if dry_run or not result.repaired else "remaining"
    print(f"{result.path}: {_count(len(result.problems))} {heading} ({result.format}):")
    for problem in result.problems:
        where = f" at offset {problem.offset}" if problem.offset is not None else ""
        fix = problem.fix or "cannot be repaired automatically"
        print(f"  {problem.severity}{where}: {problem.what}")
        print(f"    {'repair would' if dry_run else 'repair'}: {fix}")
    if result.leaked_bytes:
        print(f"  leaked space: {human_size(result.leaked_bytes)} "
              f"({result.leaked_bytes} bytes)")


def _count(n: int) -> str:
    return f"{n} problem" if n == 1 else f"{n} problems"
