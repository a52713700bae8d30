"""Start-up: command line, logging, the QApplication, the qasync event loop.

``vdgui [FILE...]`` opens the files (with their chains) into the library;
``vdgui --demo`` also creates a demo chain on first run and selects it;
``vdgui --smoke-test`` opens the main window on a demo chain in a temporary folder
(touching nothing of the user's), checks that the tree shows it, and exits 0 --
packaging tests use it to prove an installed vdgui starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import sys
import tempfile
from typing import Any, Sequence

import qasync
from PySide6.QtCore import QTimer, SignalInstance
from PySide6.QtWidgets import QApplication

from .. import __version__
from ..demo import FILES as DEMO_FILES
from ..library import ENV_HOME, Library
from . import errors, icons
from .errors import handle_exception, install_excepthook, ring_buffer
from .jobs import result_of
from .settings import Settings, log_dir
from .views.main_window import MainWindow

log = logging.getLogger(__name__)

#: The smoke test fails when the window has not shown the demo chain by then.
SMOKE_TIMEOUT_MS = 60_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdgui", description="Manage virtual disk images (VDI, VMDK, VHD, QCOW2, ...).")
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="disk images to open (their parent images are found too)")
    parser.add_argument("--demo", action="store_true",
                        help="open a demo chain (created on first use in the data folder)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="start, show a demo chain from a temporary folder, exit 0")
    parser.add_argument("--debug", action="store_true", help="log everything")
    parser.add_argument("--version", action="version", version=f"vdgui {__version__}")
    return parser


def configure_logging(debug: bool = False, to_file: bool = True) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.addHandler(ring_buffer)
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if debug else logging.WARNING)
    console.setFormatter(logging.Formatter("vdgui: %(levelname)s: %(message)s"))
    root.addHandler(console)
    if to_file:
        try:
            folder = log_dir()
            folder.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                folder / "vdgui.log", maxBytes=1 << 20, backupCount=3, encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the log file: %s", exc)
        else:
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)


def create_application(qt_args: Sequence[str] = ()) -> QApplication:
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        app = QApplication(["vdgui", *qt_args])
    app.setApplicationName("vdgui")
    app.setApplicationDisplayName("vdgui")
    app.setApplicationVersion(__version__)
    app.setOrganizationName("vdgui")
    app.setDesktopFileName(icons.APP_ID)
    app.setWindowIcon(icons.app_icon())
    return app


def _next_emission(signal: SignalInstance) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def fire(*args: Any) -> None:
        if not future.done():
            future.set_result(args)

    signal.connect(fire)
    return future


async def _start(window: MainWindow, args: argparse.Namespace) -> None:
    """Show the library, then what the command line asks for."""
    refreshed = _next_emission(window.refreshed)
    window.refresh()
    await refreshed
    if args.files:
        window.open_paths(args.files)
    if args.demo:
        window.open_demo()


async def _smoke(window: MainWindow, folder: str) -> bool:
    """The demo chain opens and the tree shows all of it, without problems."""
    # Listen first: the refresh that follows the demo job may end before we resume.
    refreshed = _next_emission(window.refreshed)
    await result_of(window.open_demo(os.path.join(folder, "demo")))
    await refreshed
    tree = window.model.tree
    ok = (len(tree) == len(DEMO_FILES) and all(n.ok for n in tree.nodes.values())
          and window.current_node() is not None)
    print(f"vdgui smoke test: {'ok' if ok else 'FAILED'} "
          f"({len(tree)} images, Qt platform {QApplication.platformName()})")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application; returns the exit status."""
    args, qt_args = build_parser().parse_known_args(argv)
    temp: tempfile.TemporaryDirectory[str] | None = None
    if args.smoke_test:
        # Hermetic: library, settings, logs and the demo chain live in a temp folder.
        temp = tempfile.TemporaryDirectory(prefix="vdgui-smoke-")
        os.environ[ENV_HOME] = temp.name
        if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
                and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))):
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
    configure_logging(args.debug, to_file=not args.smoke_test)
    try:
        return _run(args, qt_args, temp.name if temp else None)
    finally:
        if temp is not None:
            temp.cleanup()


def _exception_handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Exceptions escaping asyncio tasks are bugs, like those escaping Qt slots."""
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        handle_exception(type(exc), exc, exc.__traceback__)
    else:
        log.error("%s", context.get("message"))


def _run(args: argparse.Namespace, qt_args: Sequence[str], smoke_folder: str | None) -> int:
    app = create_application(qt_args)
    install_excepthook()
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(_exception_handler)
    window = MainWindow(Library(), Settings())
    window.show()
    with loop:
        if smoke_folder is not None:
            return _run_smoke(loop, window, smoke_folder)
        loop.create_task(_start(window, args))
        loop.run_forever()
    return 0


def _run_smoke(loop: asyncio.AbstractEventLoop, window: MainWindow, folder: str) -> int:
    errors.interactive = False  # nobody is there to click a dialog away
    status = 1

    def finish(task: asyncio.Task[bool]) -> None:
        nonlocal status
        if task.cancelled():
            print("vdgui smoke test: FAILED (cancelled)")
        elif task.exception() is not None:
            print(f"vdgui smoke test: FAILED ({task.exception()!r})")
        else:
            status = 0 if task.result() else 1
        window.close()

    def timeout() -> None:
        print("vdgui smoke test: FAILED (timed out)")
        window.close()

    QTimer.singleShot(SMOKE_TIMEOUT_MS, timeout)
    loop.create_task(_smoke(window, folder)).add_done_callback(finish)
    loop.run_forever()
    return status
