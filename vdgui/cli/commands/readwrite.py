"""``vdimg read IMAGE OFFSET LENGTH`` (``VDRead``) and ``vdimg write IMAGE OFFSET
[FILE]`` (``VDWrite`` + ``VDFlush``).

Both stream in large chunks through one preallocated buffer, so any length works
in bounded memory.  ``write`` fills a whole chunk before writing it, so data
arriving in small pieces through a pipe still reaches the engine in large,
aligned writes.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import BinaryIO

from vdgui.engine import Disk, Progress
from vdgui.engine.errors import InvalidParameter, from_os_error

from .. import args as types
from ..args import Parents, UsageError
from ..images import make_writable, open_readonly
from ..progress import operation

#: Bytes moved per engine call.
CHUNK = 4 << 20


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    read = subparsers.add_parser(
        "read", parents=[parents.image], help="copy bytes of the virtual disk to stdout",
        description="Write LENGTH bytes of IMAGE's virtual disk, from OFFSET, to stdout.")
    read.add_argument("image", metavar="IMAGE")
    read.add_argument("offset", metavar="OFFSET", type=types.size)
    read.add_argument("length", metavar="LENGTH", type=types.size)
    read.add_argument("--cache", metavar="CACHE",
                      help="read through this cache image (VCI), filling it as it goes; "
                           "created when missing (see --cache-size)")
    read.add_argument("--cache-size", metavar="SIZE", type=types.size, default=64 << 20,
                      help="size of a cache image created by --cache (default 64M)")
    read.set_defaults(run=run_read)

    write = subparsers.add_parser(
        "write", parents=[parents.image], help="write bytes into the virtual disk",
        description="Write the bytes of FILE (or stdin) into IMAGE's virtual disk at OFFSET.")
    write.add_argument("image", metavar="IMAGE")
    write.add_argument("offset", metavar="OFFSET", type=types.size)
    write.add_argument("file", metavar="FILE", nargs="?",
                       help="the data to write (default: stdin)")
    write.set_defaults(run=run_write)


def _check_range(disk: Disk, image: str, offset: int, length: int, verb: str) -> None:
    if offset + length > disk.size:
        raise UsageError(f"{image}: {verb} {length} bytes at offset {offset} would go past "
                         f"the end of the virtual disk ({disk.size} bytes)")


def _attach_cache(disk: Disk, path: str, size: int) -> None:
    """Open (or create) a cache image for ``disk``: ``VDCacheOpen``/``VDCreateCache``."""
    if os.path.exists(path):
        disk.open_cache(path)
    else:
        disk.create_cache(path, size)


def run_read(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_readonly(args) as disk:
        _check_range(disk, args.image, args.offset, args.length, "reading")
        if args.cache:
            _attach_cache(disk, args.cache, args.cache_size)
        buf = memoryview(bytearray(min(CHUNK, args.length)))
        with operation(f"reading {args.image}", False) as progress:
            done = 0
            while done < args.length:
                n = min(len(buf), args.length - done)
                disk.read_into(args.offset + done, buf[:n])
                out.write(buf[:n])
                done += n
                progress.update(done, args.length)
    out.flush()
    return 0


def run_write(args: argparse.Namespace) -> int:
    source = _open_source(args.file)
    try:
        with open_readonly(args) as disk:
            known = _regular_file_size(source)
            # Refuse before opening for writing where the amount is known.
            _check_range(disk, args.image, args.offset, known or 0, "writing")
            make_writable(disk)
            with operation(f"writing {args.image}", False) as progress:
                done = _copy_in(source, disk, args.image, args.offset, known, progress)
            disk.flush()
    finally:
        if args.file is not None:
            source.close()
    print(f"wrote {done} bytes to {args.image} at offset {args.offset}")
    return 0


def _open_source(path: str | None) -> BinaryIO:
    if path is None:
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise from_os_error(exc, path, "cannot read the data to write") from exc


def _regular_file_size(source: BinaryIO) -> int | None:
    try:
        st = os.fstat(source.fileno())
    except (OSError, ValueError, AttributeError):
        return None  # not a real file (a test's in-memory stdin)
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _copy_in(source: BinaryIO, disk: Disk, image: str, offset: int, total: int | None,
             progress: Progress) -> int:
    """Copy ``source`` into the disk at ``offset``; the number of bytes written."""
    buf = memoryview(bytearray(CHUNK if total is None else min(CHUNK, max(total, 1))))
    done = 0
    while True:
        n = _fill(source, buf)
        if n == 0:
            return done
        if offset + done + n > disk.size:
            raise InvalidParameter(f"the data goes past the end of the virtual disk "
                                   f"({disk.size} bytes) after {disk.size - offset} bytes; "
                                   f"the first {done} bytes were written", image)
        disk.write(offset + done, buf[:n])
        done += n
        progress.cancel_token.check()  # the total is unknown on a pipe: ask directly
        progress.update(done, total or done)


def _fill(source: BinaryIO, buf: memoryview) -> int:
    """Read until ``buf`` is full or the input ends; the bytes read."""
    filled = 0
    while filled < len(buf):
        try:
            n = source.readinto(buf[filled:])
        except OSError as exc:
            raise from_os_error(exc, getattr(source, "name", "<stdin>"),
                                "reading the data to write failed") from exc
        if not n:
            break
        filled += n
    return filled
