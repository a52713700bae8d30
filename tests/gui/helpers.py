"""Helpers shared by the GUI tests: a real VDI chain, waiting for the window."""

from __future__ import annotations

from pathlib import Path

from vdgui.engine import Disk
from vdgui.gui.views.main_window import MainWindow

MIB = 1 << 20


def make_chain(folder: Path) -> tuple[Path, Path, Path]:
    """A VDI base (8 MiB) with two differencing images, each holding its own data."""
    base, diff1, diff2 = folder / "base.vdi", folder / "diff1.vdi", folder / "diff2.vdi"
    with Disk() as disk:
        disk.create_base(base, 8 * MIB, "VDI", comment="the base")
        disk.write(0, b"B" * 4096)
        disk.create_diff(diff1, comment="first")
        disk.write(MIB, b"1" * 4096)
        disk.create_diff(diff2)
        disk.write(2 * MIB, b"2" * 4096)
    return base, diff1, diff2


def open_and_wait(qtbot, window: MainWindow, *paths: Path) -> None:  # type: ignore[no-untyped-def]
    """Open images through the window and wait until the tree shows them."""
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        window.open_paths(paths)
