"""A small demo chain to explore the application with (``vdgui --demo``).

A 64 MiB dynamically growing VDI base with two differencing images on top, as a
virtual machine with two snapshots would leave behind.  Each layer writes data at
different offsets (and the second snapshot overwrites part of what the first one
wrote), so that every layer holds something of its own.  Made with the engine
only; Qt-free.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .engine import Disk, Progress, VDError, discover_chain
from .library import app_dir

log = logging.getLogger(__name__)

BASE = "demo-base.vdi"
SNAPSHOT_1 = "demo-snapshot-1.vdi"
SNAPSHOT_2 = "demo-snapshot-2.vdi"
FILES = (BASE, SNAPSHOT_1, SNAPSHOT_2)

SIZE = 64 << 20
MIB = 1 << 20


def default_folder() -> Path:
    return app_dir("data") / "demo"


def _pattern(label: str, length: int) -> bytes:
    """Recognisable content: the label repeated (readable in a hex dump)."""
    unit = f"vdgui demo: {label}. ".encode()
    return (unit * (length // len(unit) + 1))[:length]


def _is_complete(folder: Path) -> bool:
    try:
        return len(discover_chain(folder / SNAPSHOT_2)) == len(FILES)
    except VDError:
        return False


def ensure_demo_chain(folder: str | os.PathLike[str] | None = None,
                      progress: Progress | None = None) -> Path:
    """The top image of the demo chain in ``folder``, created when missing or broken.

    Only the three demo files are ever replaced; nothing else in the folder is
    touched.
    """
    folder = Path(folder) if folder is not None else default_folder()
    top = folder / SNAPSHOT_2
    if _is_complete(folder):
        return top
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (folder / name).unlink(missing_ok=True)
    log.info("creating the demo chain in %s", folder)
    steps = len(FILES)
    with Disk() as disk:
        if progress:
            progress.update(0, steps, "creating the base image")
        disk.create_base(folder / BASE, SIZE, "VDI",
                         comment="vdgui demo: the base image (a fresh installation)")
        disk.write(0, _pattern("boot area of the base", MIB))
        disk.write(8 * MIB, _pattern("files of the base", 4 * MIB))
        if progress:
            progress.update(1, steps, "creating the first snapshot")
        disk.create_diff(folder / SNAPSHOT_1, comment="vdgui demo: first snapshot")
        disk.write(16 * MIB, _pattern("written after the first snapshot", 2 * MIB))
        disk.write(8 * MIB, _pattern("changed in the first snapshot", 64 << 10))
        if progress:
            progress.update(2, steps, "creating the second snapshot")
        disk.create_diff(top, comment="vdgui demo: second snapshot (the current state)")
        disk.write(32 * MIB, _pattern("written after the second snapshot", MIB))
        disk.write(16 * MIB, _pattern("changed in the second snapshot", 4096))
        disk.flush()
    if progress:
        progress.update(steps, steps, "done")
    return top
