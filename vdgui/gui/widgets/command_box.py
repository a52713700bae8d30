"""The equivalent ``vdimg`` command of a wizard, shown read-only with a copy button."""

from __future__ import annotations

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QPlainTextEdit, QToolButton, QWidget

from .. import icons


class CommandBox(QWidget):
    """A read-only, selectable command line (monospace) and "copy to clipboard"."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.editor = QPlainTextEdit(self)
        self.editor.setReadOnly(True)
        self.editor.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.editor.setAccessibleName("Equivalent vdimg command")
        self.editor.setToolTip("The same operation on the command line, for scripts")
        self.editor.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        lines = self.editor.fontMetrics().lineSpacing()
        self.editor.setFixedHeight(lines * 2 + 14)
        self.copy_button = QToolButton(self)
        self.copy_button.setIcon(icons.icon("copy"))
        self.copy_button.setToolTip("Copy the command to the clipboard")
        self.copy_button.setAccessibleName("Copy the command")
        self.copy_button.clicked.connect(self.copy_to_clipboard)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.editor, 1)
        layout.addWidget(self.copy_button)

    def text(self) -> str:
        return self.editor.toPlainText()

    def setText(self, text: str) -> None:
        self.editor.setPlainText(text)

    def copy_to_clipboard(self) -> None:
        QGuiApplication.clipboard().setText(self.text())
