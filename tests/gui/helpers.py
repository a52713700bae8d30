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


#: Where the block map of a VDI created by the engine starts.
VDI_MAP_OFFSET = 0x100000


def make_damaged_vdi(path: Path) -> Path:
    """A 16 MiB VDI holding 4 blocks, whose block map is then damaged by hand:
    block 3 points past the allocated blocks, block 2 shares block 0's storage."""
    with Disk() as disk:
        disk.create_base(path, 16 * MIB, "VDI")
        for block in range(4):
            disk.write(block * MIB, bytes([65 + block]) * MIB)
    with open(path, "r+b") as f:
        f.seek(VDI_MAP_OFFSET + 4 * 3)
        f.write((999).to_bytes(4, "little"))
        f.seek(VDI_MAP_OFFSET + 4 * 2)
        f.write((0).to_bytes(4, "little"))
    return path


def read_all(path: Path, search_paths: tuple[str, ...] = ()) -> bytes:
    """The whole virtual disk of the chain ending in ``path``."""
    from vdgui.engine import OpenFlags, open_chain
    with open_chain(path, OpenFlags.READONLY, search_paths) as disk:
        return disk.read(0, disk.size)


def click(qtbot, widget) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtCore import Qt
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def next_page(qtbot, wizard) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QWizard
    click(qtbot, wizard.button(QWizard.WizardButton.NextButton))


def type_into(qtbot, widget, text: str) -> None:  # type: ignore[no-untyped-def]
    widget.setFocus()
    widget.selectAll()
    qtbot.keyClicks(widget, text)


def select(qtbot, window: MainWindow, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Click the image's row in the tree, as a person would."""
    from PySide6.QtCore import Qt
    index = window.proxy.mapFromSource(window.model.index_for_path(str(path)))
    assert index.isValid(), path
    window.tree.scrollTo(index)
    rect = window.tree.visualRect(index)
    qtbot.mouseClick(window.tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    node = window.current_node()
    assert node is not None and node.path == str(path)
