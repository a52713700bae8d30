"""Opening images for the subcommands.

Everything is opened read-only first (no byte, no lock state, no timestamp
changes).  Commands that change an image check what they can on that read-only
open and only then reopen the top image for writing (:func:`make_writable`), so a
refusal leaves every file exactly as it was.  Commands that only concern one
image's own metadata (``set``, ``info`` without ``--chain``) open that image alone
with ``INFO``, so they also work on a differencing image whose parent is missing.
"""

from __future__ import annotations

import argparse

from vdgui.engine import LAST_IMAGE, Disk, DiskType, OpenFlags, open_chain, probe


def image_config(args: argparse.Namespace) -> dict[str, str]:
    """The ``--image-option KEY=VALUE`` settings, for every image opened."""
    return dict(getattr(args, "image_option", None) or [])


def open_readonly(args: argparse.Namespace, path: str | None = None,
                  backend: str | None = None) -> Disk:
    """The chain ending in ``path`` (default ``args.image``), every image read-only."""
    if path is None:
        path, backend = args.image, args.format
    return open_chain(path, OpenFlags.READONLY, args.search_path, backend,
                      config=image_config(args))


def open_single(path: str, backend: str | None = None) -> Disk:
    """``path`` alone in a container, read-only, without its ancestors (metadata)."""
    disk_type = DiskType.HDD
    if backend is None:
        backend, disk_type = probe(path)
    disk = Disk(disk_type)
    try:
        disk.open(path, backend, OpenFlags.INFO | OpenFlags.READONLY)
    except BaseException:
        disk.close_all()
        raise
    return disk


def make_writable(disk: Disk) -> None:
    """Reopen the top image for writing (``VDSetOpenFlags``), failing if it is locked.

    Opening for writing only once the checks passed matters: an image may be
    rewritten when it is closed after a writable open, even if nothing changed.
    """
    disk.set_open_flags(LAST_IMAGE, disk.open_flags(LAST_IMAGE) & ~OpenFlags.READONLY)
