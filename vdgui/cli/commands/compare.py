"""``vdimg compare IMAGE_A IMAGE_B``: are the virtual contents of two chains equal?

Exit 0 when identical, 1 when not (printing the first differing offset).  Images
of different sizes are equal when the longer one's extra part reads as zeros.
Ranges that both chains know to read as zeros (unallocated or zero blocks) are
skipped without reading; the rest is read and compared in large chunks.
"""

from __future__ import annotations

import argparse

import numpy as np

from vdgui.engine import Disk, Progress
from vdgui.engine.blockmap import zeros

from .. import args as types
from ..args import Parents
from ..images import open_readonly
from ..progress import operation, wanted

#: Bytes compared per step.
CHUNK = 8 << 20


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


def first_difference(a: Disk, b: Disk, progress: Progress | None = None) -> int | None:
    """The first offset where the contents of ``a`` and ``b`` differ, or None.

    Past the end of the smaller disk, its content counts as zeros.
    """
    end = max(a.size, b.size)
    buffers = [bytearray(), bytearray()]
    pos = 0
    while pos < end:
        n = min(CHUNK, end - pos)
        zero_a, zero_b = _zero_run(a, pos, n), _zero_run(b, pos, n)
        if zero_a and zero_b:
            pos += min(zero_a, zero_b)
        else:
            data_a = _content(a, pos, n, zero_a, _buffer(buffers, 0, n))
            data_b = _content(b, pos, n, zero_b, _buffer(buffers, 1, n))
            if data_a != data_b:  # bytes-like equality is a memcmp
                return pos + _first_mismatch(data_a, data_b)
            pos += n
        if progress is not None:
            progress.update(pos, end, "comparing")
    return None


def _zero_run(disk: Disk, pos: int, length: int) -> int:
    """How many bytes from ``pos`` are known to read as zeros (0: not known)."""
    if pos >= disk.size:
        return length
    depth, status, run = disk.block_status(pos, min(length, disk.size - pos))
    return run if depth is None or status.reads_zero else 0


def _buffer(buffers: list[bytearray], side: int, n: int) -> bytearray:
    """Side ``side``'s buffer, of exactly ``n`` bytes: compared whole, because
    comparing memoryview slices goes element by element.  ``n`` only changes near
    the end of the disk, so buffers are rarely reallocated."""
    if len(buffers[side]) != n:
        buffers[side] = bytearray(n)
    return buffers[side]


def _content(disk: Disk, pos: int, n: int, zero_run: int, buf: bytearray) -> bytes | bytearray:
    if zero_run >= n:
        return zeros(n)
    inside = min(n, disk.size - pos)
    disk.read_into(pos, memoryview(buf)[:inside])
    if inside < n:  # the part past this disk's end reads as zeros
        buf[inside:] = zeros(n - inside)
    return buf


def _first_mismatch(x: bytes | bytearray, y: bytes | bytearray) -> int:
    diff = np.frombuffer(x, dtype=np.uint8) != np.frombuffer(y, dtype=np.uint8)
    return int(np.flatnonzero(diff)[0])
