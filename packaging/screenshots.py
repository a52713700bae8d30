"""Take the screenshots that the AppStream metainfo shows, from the real application.

    .venv/bin/python packaging/screenshots.py [OUTDIR]

Starts vdgui's main window on the offscreen Qt platform with a hermetic home (a
temporary folder: nothing of the user's is read or touched), opens the demo chain
and saves ``QWidget.grab()`` of the window as ``resources/screenshots/*.png`` at
the size the metainfo declares.  Run it again after visible changes to the window
and commit the PNGs (each must stay under 1 MiB; tests/packaging checks that).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTDIR = ROOT / "resources" / "screenshots"
#: file name -> window size; keep in step with <screenshot> in the metainfo.
SHOTS = {"main-window.png": (1200, 800)}
TIMEOUT_MS = 30_000
SETTLE_MS = 500  # after the chain shows: let the panels fill in and repaint


def main(argv: list[str]) -> int:
    outdir = Path(argv[0]) if argv else OUTDIR
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    with tempfile.TemporaryDirectory(prefix="vdgui-screenshots-") as home:
        from vdgui.library import ENV_HOME
        os.environ[ENV_HOME] = home
        return _take(outdir, Path(home))


def _take(outdir: Path, home: Path) -> int:
    # Imported here: the hermetic home must be set before the GUI reads settings.
    from PySide6.QtCore import QEventLoop, QTimer, SignalInstance

    from vdgui.gui import errors
    from vdgui.gui.app import create_application
    from vdgui.gui.settings import Settings
    from vdgui.gui.views.main_window import MainWindow
    from vdgui.library import Library

    def wait(signal: SignalInstance | None, ms: int) -> None:
        loop = QEventLoop()
        if signal is not None:
            signal.connect(loop.quit)
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    create_application()
    errors.interactive = False
    window = MainWindow(Library(), Settings())
    outdir.mkdir(parents=True, exist_ok=True)
    for name, (width, height) in SHOTS.items():
        window.resize(width, height)
        window.show()
        # Listen before starting: the refresh that follows the demo job may be quick.
        refreshed = window.refreshed
        window.open_demo(home / "demo")
        wait(refreshed, TIMEOUT_MS)
        if window.current_node() is None:
            print("the demo chain did not show up", file=sys.stderr)
            return 1
        wait(None, SETTLE_MS)
        pixmap = window.grab()
        if not pixmap.save(str(outdir / name), "PNG", 9):
            print(f"cannot write {outdir / name}", file=sys.stderr)
            return 1
        print(f"{outdir / name}: {pixmap.width()}x{pixmap.height()}, "
              f"{(outdir / name).stat().st_size // 1024} KiB")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
