"""Space estimates before long operations, so they fail before they start.

The estimates come from the allocation maps (no data is read): a copy needs room
for every range the source chain holds (all of it for a fixed destination), a
merge for the data of the merged images, a fixed image's growth for the added
size.  Metadata overhead is covered by a margin.
"""

from __future__ import annotations

import os

from ..container import Disk
from ..errors import DiskFull
from ..io import StorageProvider
from ..types import Status

#: Extra room for headers, tables and allocation rounding.
MARGIN = 1.02
SLACK = 4 << 20


def held_bytes(disk: Disk, top: int, bottom: int = 0, length: int | None = None) -> int:
    """Bytes of the virtual disk that images ``top`` .. ``bottom`` store as data."""
    top = disk._index(top)
    end = min(disk.image(top).size if length is None else length, disk.image(top).size)
    total = 0
    pos = 0
    while pos < end:
        depth, status, run = disk.resolve(pos, end - pos, top, bottom)
        if depth >= 0 and status is Status.DATA:
            total += run
        pos += run
    return total


def with_margin(needed: int) -> int:
    return int(needed * MARGIN) + SLACK


def ensure_space(io: StorageProvider, path: str, needed: int, what: str) -> None:
    """Refuse with a clear message when the file system holding ``path`` lacks room."""
    free = io.free_space(os.path.dirname(os.path.abspath(path)) or ".")
    if free is None or needed <= 0:
        return
    needed = with_margin(needed)
    if needed > free:
        raise DiskFull(f"{what} needs about {needed // 2**20} MiB but only "
                       f"{free // 2**20} MiB are free on that file system; nothing was "
                       f"changed", path)
