"""``vdimg resize IMAGE SIZE``: ``VDResize`` of IMAGE (the top of its chain).

Growing keeps the content.  Shrinking needs ``--shrink``, and the engine refuses a
shrink that would cut off stored data (naming the offset).  ``--force`` cuts it
off anyway: the range beyond the new end is first discarded (where the format can
discard; the file is packed as part of that) and then the image is shrunk.
SIZE may be relative: ``+5G`` grows by 5 GiB, ``-1G`` shrinks by 1 GiB.
"""

from __future__ import annotations

import argparse
import re

from vdgui.engine import Capability, Disk, ImageFlags, OpenFlags, Progress
from vdgui.engine.errors import NotSupported, ShrinkNotSupported
from vdgui.engine.ops import discard, resize
from vdgui.engine.sizes import align_up
from vdgui.engine.types import LAST_IMAGE, SECTOR

from .. import args as types
from ..args import Parents, UsageError
from ..images import make_writable, open_readonly
from ..output import human_size
from ..progress import operation, wanted


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "resize", parents=[parents.image], help="change the virtual size of an image",
        description="Change the virtual size of IMAGE to SIZE.  SIZE may be relative: "
                    "+5G grows by 5 GiB, -1G shrinks by 1 GiB.  Growing keeps the content; "
                    "shrinking needs --shrink and is refused where data is stored beyond "
                    "the new end, unless --force is given.")
    parser.add_argument("--shrink", action="store_true",
                        help="allow a smaller size (the part cut off must hold no data)")
    parser.add_argument("--force", action="store_true",
                        help="allow a smaller size even where the part cut off holds data, "
                             "which is lost (implies --shrink)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("size", metavar="SIZE", type=types.new_size,
                        help="the new size, or +SIZE / -SIZE relative to the current one")
    # "-1G" is a size here, not an option: argparse only lets plain negative numbers
    # through as positional arguments, so widen its test to sizes with a suffix.
    parser._negative_number_matcher = re.compile(r"^-\d")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with open_readonly(args) as disk:
        old = disk.size
        wanted_size = args.size.resolve(old)
        if wanted_size <= 0:
            raise UsageError(f"{args.image}: the new size must be larger than 0 (the current "
                             f"size is {old} bytes)")
        new = align_up(wanted_size, SECTOR)
        if new == old:
            print(f"{args.image} is already {human_size(old)}; nothing was changed")
            return 0
        if new < old and not (args.shrink or args.force):
            raise UsageError(f"{args.image}: {new} bytes is smaller than its current size "
                             f"({old} bytes); give --shrink to shrink it")
        make_writable(disk)
        with operation(f"resizing {args.image}", wanted(args)) as progress:
            cut = _resize(disk, new, args.force, progress)
    print(f"resized {args.image} from {human_size(old)} to {human_size(new)}")
    if cut:
        print(f"  the data stored beyond offset {new} was discarded first (--force)")
    return 0


def _resize(disk: Disk, size: int, force: bool, progress: Progress) -> bool:
    """Resize; with ``force`` discard what a shrink would cut off when the engine
    refuses because of it.  Whether anything was discarded."""
    try:
        resize.resize(disk, size, progress=progress)
        return False
    except ShrinkNotSupported as exc:
        if not force:
            raise
        _discard_tail(disk, size, exc, progress)
    resize.resize(disk, size, progress=progress)
    return True


def _discard_tail(disk: Disk, size: int, refusal: ShrinkNotSupported,
                  progress: Progress) -> None:
    view = disk[LAST_IMAGE]
    why = ""
    if not view.backend_info.has(Capability.DISCARD):
        why = f"the {view.backend.lower()} format cannot discard data"
    elif view.image_flags & ImageFlags.FIXED:
        why = "the blocks of a fixed image cannot be discarded"
    if why:
        raise NotSupported(f"{refusal.message}; --force cannot cut the data off because "
                           f"{why}; nothing was changed", view.path)
    disk.set_open_flags(LAST_IMAGE, disk.open_flags(LAST_IMAGE) | OpenFlags.DISCARD)
    discard.discard(disk, [(size, disk.size - size)], progress)
