"""``vdimg convert SRC DST``: a new standalone image with the content of SRC's chain
(``VDCopyEx`` into an empty container).

The format comes from ``-O``, else DST's extension, else SRC's own format; the
variant is checked as for ``create`` before any file is made.  Unallocated and
all-zero ranges of SRC stay unallocated in DST.  A failed or cancelled conversion
leaves no DST behind (the engine removes what it created).
"""

from __future__ import annotations

import argparse

from vdgui.engine import BackendInfo, Disk, backend_info, variant_names
from vdgui.engine import registry
from vdgui.engine.errors import ShrinkNotSupported
from vdgui.engine.ops import copy
from vdgui.engine.sizes import align_up
from vdgui.engine.types import SECTOR

from .. import args as types
from ..args import Parents, UsageError
from ..images import open_readonly
from ..output import human_size
from ..progress import operation, wanted
from .create import as_usage, image_flags


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "convert", parents=[parents.image], help="copy an image into a new image",
        description="Copy the virtual content of SRC's chain into a new standalone image "
                    "DST, in any format that can create images.  -f names SRC's format.")
    parser.add_argument("-O", "--output-format", metavar="FMT", type=types.format_name,
                        help="DST's format (default: from DST's extension, else SRC's "
                             "format)")
    parser.add_argument("-v", "--variant", metavar="VARIANT[,VARIANT...]",
                        help="standard (dynamically growing, the default), fixed, ...; "
                             "see 'vdimg formats'")
    parser.add_argument("-o", "--option", metavar="KEY=VALUE", type=types.key_value,
                        action="append", default=[], help="a creation option of DST's format")
    parser.add_argument("--size", metavar="SIZE", type=types.size,
                        help="DST's virtual size (default: SRC's); smaller only where the "
                             "part cut off reads as zeros")
    parser.add_argument("-c", "--compress", action="store_true",
                        help="store the data compressed (formats with compressed "
                             "clusters: qcow2)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("src", metavar="SRC")
    parser.add_argument("dst", metavar="DST")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.size is not None and args.size <= 0:
        raise UsageError(f"the size of {args.dst} must be larger than 0")
    with open_readonly(args, args.src, args.format) as src:
        info = _output_format(args, src)
        flags = image_flags(info, args.variant, args.dst)
        size = align_up(args.size, SECTOR) if args.size is not None else src.size
        if size < src.size:
            _check_cut(src, size, args.dst)
        with operation(f"converting {args.src}", wanted(args)) as progress:
            as_usage(lambda: copy.convert(src, args.dst, info.name, image_flags=flags,
                                          size=size, config=dict(args.option),
                                          progress=progress, compress=args.compress))
        source = f"{src[-1].backend.lower()} image" if src.count == 1 else \
            f"chain of {src.count} images"
    variant = ", ".join(variant_names(flags))
    print(f"converted {args.src} ({source}) to {args.dst}: {info.name.lower()} {variant}, "
          f"{human_size(size)}")
    return 0


def _output_format(args: argparse.Namespace, src: Disk) -> BackendInfo:
    if args.output_format:
        return backend_info(args.output_format)
    cls = registry.backend_for_extension(args.dst)
    return cls.info if cls is not None else src[-1].backend_info


def _check_cut(src: Disk, size: int, dst: str) -> None:
    """A smaller DST may only drop a part of SRC that reads as zeros."""
    for extent in src.map(size, src.size - size):
        if not extent.zero:
            raise ShrinkNotSupported(
                f"--size {size} is smaller than the source ({src.size} bytes), which holds "
                f"data from offset {max(extent.offset, size)}: the copy would lose it; "
                f"nothing was created", dst)
