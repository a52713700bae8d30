"""A UUID field: monospace, typing limited to what a UUID can contain, copy button."""

from __future__ import annotations

import uuid as uuidlib

from PySide6.QtCore import QRegularExpression
from PySide6.QtGui import QAction, QFontDatabase, QGuiApplication, QRegularExpressionValidator
from PySide6.QtWidgets import QLineEdit, QWidget

from ...engine.errors import InvalidParameter
from .. import icons
from ..edits import parse_uuid_text

#: Hex digits, dashes and optional braces: a partial UUID stays editable, letters
#: that can never belong to a UUID are refused as they are typed.
_CHARACTERS = QRegularExpression(r"^\s*\{?[0-9A-Fa-f-]{0,36}\}?\s*$")


class UuidEdit(QLineEdit):
    """Edits one UUID; :meth:`uuid` parses it (None while the text is not a UUID)."""

    def __init__(self, parent: QWidget | None = None, label: str = "UUID") -> None:
        super().__init__(parent)
        self.label = label
        self.setAccessibleName(label)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setValidator(QRegularExpressionValidator(_CHARACTERS, self))
        self.setPlaceholderText("01234567-89ab-cdef-0123-456789abcdef")
        self.copy_action = QAction(icons.icon("copy"), f"Copy the {label}", self)
        self.copy_action.setToolTip(f"Copy the {label} to the clipboard")
        self.copy_action.triggered.connect(self.copy_to_clipboard)
        self.addAction(self.copy_action, QLineEdit.ActionPosition.TrailingPosition)
        # Room for a whole UUID plus the copy button.
        self.setMinimumWidth(self.fontMetrics().horizontalAdvance("0" * 38) + 32)

    def uuid(self) -> uuidlib.UUID | None:
        try:
            return parse_uuid_text(self.text(), self.label)
        except InvalidParameter:
            return None

    def setUuid(self, value: uuidlib.UUID | None) -> None:
        self.setText(str(value) if value is not None else "")
        self.setCursorPosition(0)

    def copy_to_clipboard(self) -> None:
        QGuiApplication.clipboard().setText(self.text().strip())
