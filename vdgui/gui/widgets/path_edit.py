"""A file (or folder) path field with a "Browse..." button."""

from __future__ import annotations

import enum
import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QToolButton, QWidget

from .. import icons


class PathMode(enum.Enum):
    OPEN = "open"  # an existing file
    SAVE = "save"  # a new file
    FOLDER = "folder"  # an existing folder


class PathEdit(QWidget):
    """Edits a file path; the button opens the platform's file dialog."""

    pathChanged = Signal(str)

    def __init__(self, parent: QWidget | None = None, mode: PathMode = PathMode.SAVE,
                 caption: str = "Choose a file", file_filter: str = "") -> None:
        super().__init__(parent)
        self.mode = mode
        self.caption = caption
        self.file_filter = file_filter
        self.line_edit = QLineEdit(self)
        self.line_edit.setAccessibleName("File path")
        self.line_edit.setClearButtonEnabled(True)
        self.browse_button = QToolButton(self)
        self.browse_button.setText("Browse…")
        self.browse_button.setIcon(icons.icon("browse"))
        self.browse_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.browse_button.setToolTip(caption)
        self.browse_button.setAccessibleName("Browse for a file")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.line_edit, 1)
        layout.addWidget(self.browse_button)
        self.setFocusProxy(self.line_edit)
        self.line_edit.textChanged.connect(self.pathChanged)
        self.browse_button.clicked.connect(self.browse)

    def path(self) -> str:
        """The path as typed, with ``~`` expanded ("" when empty)."""
        text = self.line_edit.text().strip()
        return os.path.expanduser(text) if text else ""

    def setPath(self, path: str) -> None:
        self.line_edit.setText(path)

    def browse(self) -> None:
        start = self.path() or os.path.expanduser("~")
        if self.mode is PathMode.FOLDER:
            chosen = QFileDialog.getExistingDirectory(self, self.caption, start)
        elif self.mode is PathMode.OPEN:
            chosen, _ = QFileDialog.getOpenFileName(self, self.caption, start,
                                                    self.file_filter)
        else:
            # vdgui refuses existing files itself, with a clearer message.
            chosen, _ = QFileDialog.getSaveFileName(
                self, self.caption, start, self.file_filter,
                options=QFileDialog.Option.DontConfirmOverwrite)
        if chosen:
            self.setPath(chosen)
