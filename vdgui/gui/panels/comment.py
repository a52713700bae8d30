"""The image's comment (VirtualBox's "Description"): shown and editable."""

from __future__ import annotations

import os

from PySide6.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget

from ...library import Node
from .. import edits
from .base import EditablePanel


class CommentPanel(EditablePanel):
    """Edits the comment through ``VDSetComment``."""

    title = "&Comment"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self.body)
        self.editor = QPlainTextEdit(self.body)
        self.editor.setAccessibleName("Comment")
        self.editor.setTabChangesFocus(True)
        self.editor.setPlaceholderText("No comment")
        self.count = QLabel(self.body)
        self.count.setAccessibleName("Comment length")
        layout.addWidget(self.editor)
        layout.addWidget(self.count)
        self.editor.textChanged.connect(self._on_text)

    def _on_text(self) -> None:
        self.count.setText(f"{len(self.editor.toPlainText().encode('utf-8'))} bytes")
        self.mark_dirty()

    def load(self, node: Node) -> None:
        assert node.info is not None
        supported = node.info.comment is not None
        self.editor.setPlainText(node.info.comment or "")
        self.editor.setReadOnly(not supported)
        self.show_notice("" if supported else
                         f"The {node.info.backend} format does not store a comment.")

    def build_edit(self, node: Node) -> edits.Edit | None:
        text = self.editor.toPlainText()
        if text == (node.info.comment if node.info else None):
            return None
        name = os.path.basename(node.path)
        return edits.Edit(f"Changing the comment of {name}", "change the comment of",
                          lambda progress: edits.set_comment(node.path, text),
                          writes=(node.path,), reads=tuple(a.path for a in node.ancestors()))
