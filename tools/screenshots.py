"""Screenshots of the real application for the README, under a virtual X server.

    xvfb-run -a .venv/bin/python tools/screenshots.py [OUTPUT_FOLDER]

Builds a small snapshot chain and a damaged VDI in a temporary folder (touching
nothing of the user's: the library and settings live there too), opens them in
the main window, and saves PNG files (default folder ``docs/screenshots``):

* ``main-window.png`` -- the library tree, the chain panel and the allocation map;
* ``allocation-map.png`` -- the allocation map of a three-layer chain;
* ``repair-review.png`` -- the repair wizard's findings on the damaged VDI.

Every file is kept under 1 MiB (scaled down if ever needed).
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import qasync
from PySide6.QtCore import QSize, Qt, SignalInstance
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QApplication, QWidget

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vdgui.engine import Disk  # noqa: E402
from vdgui.gui import errors  # noqa: E402
from vdgui.gui.app import create_application  # noqa: E402
from vdgui.gui.settings import Settings  # noqa: E402
from vdgui.gui.views.main_window import MainWindow  # noqa: E402
from vdgui.library import ENV_HOME, Library  # noqa: E402

MIB = 1 << 20
MAX_BYTES = 1 << 20
VDI_MAP_OFFSET = 0x100000  # where a VDI we create keeps its block map


def pattern(label: str, length: int) -> bytes:
    unit = f"vdgui screenshot: {label}. ".encode()
    return (unit * (length // len(unit) + 1))[:length]


def make_chain(folder: Path) -> Path:
    """A 512 MiB VDI "installed system" with two snapshots that change parts of it."""
    base, snap1, snap2 = (folder / name for name in
                          ("system.vdi", "snapshot-1.vdi", "snapshot-2.vdi"))
    with Disk() as disk:
        disk.create_base(base, 512 * MIB, "VDI", comment="Installed system")
        disk.write(0, pattern("boot and system files", 96 * MIB))
        disk.write(160 * MIB, pattern("user data", 40 * MIB))
        disk.write(300 * MIB, pattern("swap", 24 * MIB))
        disk.create_diff(snap1, comment="Before the upgrade")
        for offset in range(8, 96, 12):
            disk.write(offset * MIB, pattern("upgraded files", 4 * MIB))
        disk.write(220 * MIB, pattern("new documents", 30 * MIB))
        disk.create_diff(snap2, comment="After the upgrade")
        disk.write(300 * MIB, bytes(24 * MIB))  # the swap was cleared: zeros hide it
        for offset in range(40, 96, 16):
            disk.write(offset * MIB, pattern("patched files", 3 * MIB))
        disk.write(400 * MIB, pattern("downloads", 20 * MIB))
    return snap2


def make_damaged(folder: Path) -> Path:
    """A VDI whose block map points two blocks at one place and one past the end."""
    path = folder / "damaged.vdi"
    with Disk() as disk:
        disk.create_base(path, 64 * MIB, "VDI")
        for block in range(6):
            disk.write(block * MIB, pattern(f"block {block}", MIB))
    with open(path, "r+b") as f:
        f.seek(VDI_MAP_OFFSET + 4 * 4)
        f.write(struct.pack("<I", 1))  # block 4 -> physical block 1, shared with block 1
        f.seek(VDI_MAP_OFFSET + 5 * 4)
        f.write(struct.pack("<I", 4000))  # block 5 -> far past the allocated blocks
        f.seek(0, os.SEEK_END)
        f.write(bytes(MIB))  # and a leaked megabyte at the end
    return path


def next_emission(signal: SignalInstance) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def fire(*args: Any) -> None:
        if not future.done():
            future.set_result(args)

    signal.connect(fire)
    return future


def save(widget: QWidget, path: Path) -> None:
    pixmap: QPixmap = widget.grab()
    pixmap.save(str(path), "PNG")
    while path.stat().st_size > MAX_BYTES:
        pixmap = pixmap.scaled(pixmap.size() * 0.85, Qt.AspectRatioMode.KeepAspectRatio,
                               Qt.TransformationMode.SmoothTransformation)
        pixmap.save(str(path), "PNG")
    print(f"{path} ({pixmap.width()}x{pixmap.height()}, {path.stat().st_size // 1024} KiB)")


async def settle(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


async def shoot(window: MainWindow, folder: Path, out: Path) -> None:
    top = make_chain(folder)
    damaged = make_damaged(folder)
    refreshed = next_emission(window.refreshed)
    window.open_paths([top])
    await refreshed
    window.select_path(str(top))
    window.tabs.setCurrentWidget(window.chain_panel)
    window.map_dock.raise_()
    if window.map_view.grid.map is None or not window.map_view.grid.map.complete:
        await next_emission(window.map_view.map_ready)
    await settle()
    save(window, out / "main-window.png")
    save(window.map_view, out / "allocation-map.png")

    refreshed = next_emission(window.refreshed)
    window.open_paths([damaged])
    await refreshed
    window.select_path(str(damaged))
    wizard = window.repair_image()
    assert wizard is not None
    wizard.resize(QSize(940, 560))
    while wizard.check_page.report is None:
        await settle(0.1)
    await settle()
    save(wizard, out / "repair-review.png")
    wizard.reject()


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vdgui-screenshots-") as temp:
        os.environ[ENV_HOME] = temp  # hermetic: nothing of the user's is read or written
        folder = Path(temp) / "images"
        folder.mkdir()
        app: QApplication = create_application()
        app.setStyle("Fusion")
        errors.interactive = False
        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        window = MainWindow(Library(Path(temp) / "library.json"),
                            Settings(Path(temp) / "settings.ini"))
        window.resize(1280, 800)
        window.show()
        with loop:
            loop.run_until_complete(shoot(window, folder, out))
            window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
