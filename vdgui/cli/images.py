"""Opening images for the subcommands.

Read-only subcommands open the whole chain with ``READONLY`` (no byte, no lock
state, no timestamp changes).  Commands that only edit one image's own metadata
(``set``, ``info`` without ``--chain``) open that image alone with ``INFO``, so they
still work on a differencing image whose parent is missing.
"""

from __future__ import annotations

import argparse

from vdgui.engine import Disk, OpenFlags, open_chain, probe


def open_readonly(args: argparse.Namespace, path: str | None = None,
                  backend: str | None = None) -> Disk:
    """The chain ending in ``path`` (default ``args.image``), every image read-only."""
    if path is None:
        path, backend = args.image, args.format
    return open_chain(path, OpenFlags.READONLY, args.search_path, backend)


def open_writable(args: argparse.Namespace) -> Disk:
    """The chain ending in ``args.image``, the top image opened for writing."""
    disk = open_chain(args.image, OpenFlags.NORMAL, args.search_path, args.format)
    try:
        require_writable(disk)
    except BaseException:
        disk.close_all()
        raise
    return disk


def open_single(path: str, backend: str | None, writable: bool) -> Disk:
    """``path`` alone in a container, without its ancestors (metadata access)."""
    detected, disk_type = probe(path)
    disk = Disk(disk_type)
    flags = OpenFlags.INFO | (OpenFlags.NORMAL if writable else OpenFlags.READONLY)
    try:
        disk.open(path, backend or detected, flags)
        if writable:
            require_writable(disk)
    except BaseException:
        disk.close_all()
        raise
    return disk


def require_writable(disk: Disk) -> None:
    """Fail, saying why, when the top image could only be opened read-only.

    ``VDOpen`` quietly falls back to read-only when the file is locked by another
    writer or not writable; a zero-length ``VDWrite`` reports that state with its
    reason and changes nothing.
    """
    disk.write(0, b"")
