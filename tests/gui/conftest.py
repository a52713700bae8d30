"""GUI test fixtures: a hermetic home, a real VDI chain, a main window, dialog capture.

No test may open a dialog that blocks: ``QMessageBox.exec`` and ``QDialog.exec``
are replaced for every test by :class:`DialogRecorder`, which records the dialog
and answers it (Cancel by default; ``accept = True`` clicks the accepting button).
The file dialogs' static functions fail the test if anything calls them.

The application runs its coroutines (the allocation map) on a qasync event loop;
tests get one that counts as running inside pytest-qt's Qt event loop, so the
coroutines advance whenever a test waits (``qtbot.waitSignal`` and friends).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import qasync
from PySide6.QtWidgets import QApplication, QDialog, QFileDialog, QMessageBox

from vdgui.gui.errors import CrashDialog
from vdgui.gui.settings import Settings
from vdgui.gui.views.main_window import MainWindow
from vdgui.library import ENV_HOME, Library

from .helpers import make_chain

@dataclass
class Recorded:
    kind: str  # "message" or "crash"
    title: str
    text: str = ""
    informative: str = ""
    details: str = ""


@dataclass
class DialogRecorder:
    dialogs: list[Recorded] = field(default_factory=list)
    #: Answer questions with their accepting button (else Cancel / close).
    accept: bool = False

    def titles(self) -> list[str]:
        return [d.title for d in self.dialogs]

    @property
    def crashes(self) -> list[Recorded]:
        return [d for d in self.dialogs if d.kind == "crash"]


@pytest.fixture(scope="session", autouse=True)
def event_loop_qasync(qapp: QApplication) -> Iterator[asyncio.AbstractEventLoop]:
    """A qasync loop over the tests' QApplication, running while Qt's loop runs."""
    loop = qasync.QEventLoop(qapp, already_running=True)
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.events._set_running_loop(None)
    asyncio.set_event_loop(None)


@pytest.fixture(autouse=True)
def hermetic_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Data, config and logs under tmp_path: tests never touch the real home."""
    home = tmp_path / "home"
    monkeypatch.setenv(ENV_HOME, str(home))
    return home


@pytest.fixture(autouse=True)
def dialogs(monkeypatch: pytest.MonkeyPatch) -> DialogRecorder:
    recorder = DialogRecorder()

    def message_exec(box: QMessageBox) -> int:
        recorder.dialogs.append(Recorded("message", box.windowTitle(), box.text(),
                                         box.informativeText(), box.detailedText()))
        if recorder.accept:
            for button in box.buttons():
                if box.buttonRole(button) == QMessageBox.ButtonRole.AcceptRole:
                    button.click()
                    break
        return 0

    def dialog_exec(dialog: QDialog) -> int:
        details = dialog.details.toPlainText() if isinstance(dialog, CrashDialog) else ""
        recorder.dialogs.append(Recorded("crash" if isinstance(dialog, CrashDialog)
                                         else "dialog", dialog.windowTitle(),
                                         details=details))
        return 0

    def no_file_dialog(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test opened a file dialog")

    monkeypatch.setattr(QMessageBox, "exec", message_exec)
    monkeypatch.setattr(QDialog, "exec", dialog_exec)
    for name in ("getOpenFileName", "getOpenFileNames", "getSaveFileName",
                 "getExistingDirectory"):
        monkeypatch.setattr(QFileDialog, name, no_file_dialog)
    return recorder


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    return make_chain(folder)


@pytest.fixture
def library_path(tmp_path: Path) -> Path:
    return tmp_path / "library.json"


@pytest.fixture
def window(qtbot, tmp_path: Path, library_path: Path) -> MainWindow:  # type: ignore[no-untyped-def]
    win = MainWindow(Library(library_path), Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(win)
    win.show()
    return win
