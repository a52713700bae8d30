"""Errors a person can act on, and a crash dialog instead of a crash.

:func:`describe` turns an engine :class:`~vdgui.engine.VDError` into an
:class:`ErrorReport`: a title, one sentence saying what failed and why, a hint
saying what to try, and the technical details (status name, file, exception,
traceback) that :func:`show_error` puts behind the dialog's "Show Details..."
disclosure.

Anything else that escapes (a bug) reaches :func:`handle_exception` through
``sys.excepthook`` (installed by :func:`install_excepthook`): it is logged and shown
in a :class:`CrashDialog` with the recent log, and the application keeps running.
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import sys
import threading
import traceback
from dataclasses import dataclass
from types import TracebackType

from PySide6.QtCore import QCoreApplication, QThread
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QMessageBox,
                               QPlainTextEdit, QPushButton, QVBoxLayout, QWidget)

from .. import __version__
from ..engine import VDError, errors as vd
from ..engine.chain import ParentNotFound
from ..library import ChainBroken
from .jobs import ImageBusy

log = logging.getLogger(__name__)

#: False in unattended runs (``vdgui --smoke-test``): errors are logged, and no
#: dialog waits for a click that will never come.
interactive = True


@dataclass(frozen=True)
class ErrorReport:
    title: str
    sentence: str
    hint: str
    details: str


#: Error class -> (title, what it means in words, what to try).  Looked up along the
#: class's MRO, so the most specific entry wins.
_WORDS: dict[type[VDError], tuple[str, str, str]] = {
    ChainBroken: (
        "Broken chain",
        "an image it is built on has a problem",
        "Select that image in the tree to see what is wrong with it and how to fix it."),
    ParentNotFound: (
        "Parent image not found",
        "it is a differencing image, and the image it was made from could not be found",
        "Put the parent image back in the same folder as this one (or open the parent "
        "first), then refresh."),
    vd.FileNotFound: (
        "File not found",
        "the file does not exist (it may have been moved, renamed or deleted)",
        "Check the location; if the file was moved, open it from its new place."),
    vd.AccessDenied: (
        "Permission denied",
        "you do not have permission to access the file",
        "Check the file's permissions, or whether it lies on a read-only file system."),
    ImageBusy: (
        "Image busy",
        "another operation in vdgui is using the image",
        "Wait until it ends (the Jobs panel lists it), or cancel it there."),
    vd.ImageInUse: (
        "Image in use",
        "another program (perhaps a running virtual machine or qemu) is using the image",
        "Shut down the virtual machine or close the other program, then try again."),
    vd.AlreadyExists: (
        "File already exists",
        "a file with that name already exists",
        "Choose another name; vdgui never overwrites an existing file."),
    vd.DiskFull: (
        "Out of disk space",
        "there is not enough free space on the drive",
        "Free some space or choose another drive, then try again."),
    vd.StorageError: (
        "Read or write error",
        "the file could not be read or written",
        "Check that the drive is connected and healthy."),
    vd.Corrupted: (
        "Damaged image",
        "the image is damaged",
        "Keep a copy of the file before trying anything else; a repair may be possible."),
    vd.InvalidHeader: (
        "Unreadable image",
        "the image's header is not valid",
        "The file may be damaged or only partly copied."),
    vd.NotSupported: (
        "Not supported",
        "this is not possible with this file",
        "If the file is a disk image in a format vdgui does not know, convert it "
        "with another tool first."),
    vd.UuidMismatch: (
        "Images do not belong together",
        "the differencing image was not made from the image below it",
        "Its parent may have been replaced or given a new UUID; restore the right "
        "parent image."),
    vd.ReadOnly: (
        "Image is read-only",
        "the image cannot be changed",
        "Check the file's permissions, and that no other program holds it."),
    vd.InvalidType: (
        "Wrong kind of image",
        "the image cannot be used this way",
        "Differencing images must be opened together with their parents."),
    vd.ShrinkNotSupported: (
        "Cannot shrink",
        "the image cannot be made that small",
        "Nothing was changed. Choose a larger size, or move the data stored near the "
        "end of the disk first."),
    vd.InvalidSize: (
        "Invalid size",
        "the size is not allowed",
        "Sizes must be a multiple of 512 bytes and within what the format supports."),
    vd.InvalidParameter: (
        "Invalid value",
        "a value is not allowed",
        "Check the values you entered."),
    vd.Cancelled: (
        "Cancelled",
        "the operation was cancelled",
        "Nothing was changed."),
    VDError: (
        "Operation failed",
        "the operation failed",
        "See the details below."),
}


def _words(exc: BaseException) -> tuple[str, str, str]:
    for cls in type(exc).__mro__:
        if cls in _WORDS:
            return _WORDS[cls]  # type: ignore[index]
    return ("Unexpected error", "an unexpected error occurred",
            "Please report this problem, with the details below.")


def technical_details(exc: BaseException) -> str:
    lines = []
    if isinstance(exc, VDError):
        lines.append(f"Status: {exc.status}")
        if exc.path:
            lines.append(f"File: {exc.path}")
        lines.append(f"Message: {exc.message}")
    lines.append(f"Exception: {type(exc).__module__}.{type(exc).__qualname__}")
    lines.append(f"vdgui {__version__}, Python {platform.python_version()}")
    if exc.__traceback__ is not None:
        lines.append("")
        lines.extend(line.rstrip("\n") for line in
                     traceback.format_exception(type(exc), exc, exc.__traceback__))
    return "\n".join(lines)


def describe(exc: BaseException, doing: str = "") -> ErrorReport:
    """Words for ``exc``; ``doing`` names the action ("open", "change the comment of")."""
    title, meaning, hint = _words(exc)
    path = getattr(exc, "path", None)
    target = f"“{os.path.basename(path)}”" if path else ""
    if doing:
        head = f"vdgui could not {doing}{' ' + target if target else ''}"
    elif target:
        head = f"There is a problem with {target}"
    else:
        head = "The operation failed"
    sentence = f"{head}: {meaning}."
    reason = getattr(exc, "message", None) or str(exc)
    if reason and reason.rstrip(".") != meaning:
        hint = f"Reason: {reason[:1].upper()}{reason[1:]}{'' if reason.endswith('.') else '.'}" \
               f"\n\n{hint}"
    return ErrorReport(title, sentence, hint, technical_details(exc))


def error_box(parent: QWidget | None, exc: BaseException, doing: str = "") -> QMessageBox:
    report = describe(exc, doing)
    box = QMessageBox(QMessageBox.Icon.Critical, report.title, report.sentence,
                      QMessageBox.StandardButton.Ok, parent)
    box.setInformativeText(report.hint)
    box.setDetailedText(report.details)  # the "Show Details..." disclosure
    box.setAccessibleName(report.title)
    box.setAccessibleDescription(report.sentence)
    return box


def show_error(parent: QWidget | None, exc: BaseException, doing: str = "") -> None:
    """Show ``exc`` in a dialog, in words (a bug goes to the crash dialog instead)."""
    if isinstance(exc, OSError):
        exc = vd.from_os_error(exc)
    if not isinstance(exc, VDError):
        show_crash(parent, exc)
        return
    if not interactive:
        log.error("could not %s: %s (%s)", doing or "complete the operation", exc, exc.status)
        return
    log.info("error shown to the user: %s", exc)
    error_box(parent, exc, doing).exec()


# -- crashes --------------------------------------------------------------------------


class RingBuffer(logging.Handler):
    """The last log records, kept in memory for bug reports."""

    def __init__(self, capacity: int = 500) -> None:
        super().__init__(logging.DEBUG)
        self.records: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(self.format(record))
        except Exception:  # a logging handler must never raise
            self.handleError(record)

    def text(self) -> str:
        return "\n".join(self.records)


#: Installed on the root logger by the application (see app.py).
ring_buffer = RingBuffer()


class CrashDialog(QDialog):
    """An unexpected error: what happened, the details to report, and a way out."""

    def __init__(self, exc: BaseException, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("vdgui: unexpected error")
        self.setAccessibleName("Unexpected error")
        layout = QVBoxLayout(self)
        intro = QLabel(
            "<b>Something went wrong inside vdgui.</b><br>"
            "This is a bug. The application keeps running, and no image was changed "
            "by this error, but the last action may not have completed. Please report "
            "the details below.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.details = QPlainTextEdit(self)
        self.details.setReadOnly(True)
        self.details.setAccessibleName("Error details")
        text = technical_details(exc)
        recent = ring_buffer.text()
        if recent:
            text += "\n\nRecent log:\n" + recent
        self.details.setPlainText(text)
        layout.addWidget(self.details)
        buttons = QDialogButtonBox(self)
        copy = QPushButton("&Copy details", self)
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(text))
        buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)
        quit_button = buttons.addButton("&Quit vdgui", QDialogButtonBox.ButtonRole.DestructiveRole)
        quit_button.clicked.connect(QCoreApplication.quit)
        quit_button.clicked.connect(self.reject)
        buttons.addButton(QDialogButtonBox.StandardButton.Close).setDefault(True)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(640, 420)


_showing_crash = False


def show_crash(parent: QWidget | None, exc: BaseException) -> None:
    """Log ``exc`` and show the crash dialog (once at a time, GUI thread only)."""
    global _showing_crash
    log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    app = QCoreApplication.instance()
    if (not interactive or _showing_crash or app is None
            or QThread.currentThread() is not app.thread()):
        return
    _showing_crash = True
    try:
        CrashDialog(exc, parent).exec()
    finally:
        _showing_crash = False


def handle_exception(exc_type: type[BaseException], exc: BaseException,
                     tb: TracebackType | None) -> None:
    """``sys.excepthook``: a bug shows the crash dialog instead of killing vdgui."""
    if issubclass(exc_type, KeyboardInterrupt):
        QCoreApplication.quit()
        return
    if exc.__traceback__ is None:
        exc = exc.with_traceback(tb)
    try:
        show_crash(None, exc)
    except Exception:  # the dialog itself failed: at least say what happened
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    log.error("unexpected error in thread %s", args.thread and args.thread.name,
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def install_excepthook() -> None:
    sys.excepthook = handle_exception
    threading.excepthook = _thread_hook
