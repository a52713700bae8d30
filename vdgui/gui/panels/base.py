"""What every property panel shares: the shown image, read-only labels, Apply/Reset."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QKeySequence, QPalette, QShortcut
from PySide6.QtWidgets import (QDialogButtonBox, QLabel, QLineEdit, QPushButton, QVBoxLayout,
                               QWidget)

from ...engine.errors import InvalidParameter
from ...library import Node
from .. import dialogs
from ..edits import Edit


def value_label(parent: QWidget, name: str) -> QLabel:
    """A read-only value people can select and copy."""
    label = QLabel(parent)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse
                                  | Qt.TextInteractionFlag.TextSelectableByKeyboard)
    label.setWordWrap(True)
    label.setAccessibleName(name)
    return label


def path_field(parent: QWidget, name: str) -> QLineEdit:
    """A read-only path: long paths scroll instead of widening the panel."""
    field = QLineEdit(parent)
    field.setReadOnly(True)
    field.setFrame(False)
    field.setAccessibleName(name)
    # Look like the labels around it, whatever the theme: no field background.
    palette = field.palette()
    palette.setBrush(QPalette.ColorRole.Base, QBrush(Qt.GlobalColor.transparent))
    field.setPalette(palette)
    return field


class Declined(Exception):
    """Raised by ``build_edit`` when the person answered "Cancel" to a warning."""


class Panel(QWidget):
    """Shows one aspect of the selected image (:meth:`set_node`)."""

    #: Tab title (with mnemonic).
    title = ""
    #: An :class:`~vdgui.gui.edits.Edit` to run.
    edit_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._node: Node | None = None
        self.setAccessibleName(self.title.replace("&", ""))
        self.notice = QLabel(self)
        self.notice.setWordWrap(True)
        self.notice.setAccessibleName("Notice")
        self.notice.hide()
        self.body = QWidget(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.notice)
        layout.addWidget(self.body)
        layout.addStretch(1)

    @property
    def node(self) -> Node | None:
        return self._node

    def set_node(self, node: Node | None) -> None:
        self._node = node
        if node is None:
            self.show_notice("Select an image to see its properties.")
        elif node.info is None:
            reason = node.error.message if node.error else "unknown reason"
            self.show_notice(f"This image cannot be read: {reason}.")
        else:
            self.show_notice("")
        self.body.setVisible(node is not None and node.info is not None)
        self.refresh()

    def show_notice(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def refresh(self) -> None:
        """Show the current node's values (the node has info when the body shows)."""


class EditablePanel(Panel):
    """A panel whose values can be changed: Apply (Ctrl+Return) and Reset buttons.

    Subclasses implement :meth:`load` (node -> editors) and :meth:`build_edit`
    (editors -> an Edit, or None when nothing changed; raise InvalidParameter to
    refuse a value, Declined when the person cancelled a warning), and call
    :meth:`mark_dirty` when an editor changes.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._loading = False
        self.buttons = QDialogButtonBox(self)
        self.apply_button: QPushButton = self.buttons.addButton(
            QDialogButtonBox.StandardButton.Apply)
        self.reset_button: QPushButton = self.buttons.addButton(
            QDialogButtonBox.StandardButton.Reset)
        self.apply_button.setToolTip("Write the changes into the image (Ctrl+Return)")
        self.reset_button.setToolTip("Undo the changes not applied yet (Ctrl+Backspace)")
        self.apply_button.setAccessibleName(f"Apply {self.title.replace('&', '').lower()}")
        self.reset_button.setAccessibleName(f"Reset {self.title.replace('&', '').lower()}")
        self.apply_button.clicked.connect(self.apply)
        self.reset_button.clicked.connect(self.refresh)
        for keys, slot in ((QKeySequence("Ctrl+Return"), self.apply),
                           (QKeySequence("Ctrl+Backspace"), self.refresh)):
            shortcut = QShortcut(keys, self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(slot)
        self.layout().insertWidget(2, self.buttons)
        self._set_dirty(False)

    def refresh(self) -> None:
        self._loading = True
        try:
            if self.node is not None and self.node.info is not None:
                self.load(self.node)
        finally:
            self._loading = False
        self._set_dirty(False)
        self.buttons.setVisible(self.node is not None and self.node.info is not None)

    def load(self, node: Node) -> None:
        raise NotImplementedError

    def build_edit(self, node: Node) -> Edit | None:
        raise NotImplementedError

    def mark_dirty(self) -> None:
        if not self._loading:
            self._set_dirty(True)

    def _set_dirty(self, dirty: bool) -> None:
        self.dirty = dirty
        self.apply_button.setEnabled(dirty)
        self.reset_button.setEnabled(dirty)

    def apply(self) -> None:
        """Validate, then ask for the edit; a refused value writes nothing."""
        node = self.node
        if node is None or node.info is None or not self.dirty:
            return
        try:
            edit = self.build_edit(node)
        except InvalidParameter as exc:
            dialogs.refuse(self, "Value refused", f"{exc.message[:1].upper()}"
                           f"{exc.message[1:]}.", "Nothing was written to the image.")
            return
        except Declined:
            return
        if edit is None:
            self.refresh()
            return
        self.submit(edit)

    def submit(self, edit: Edit) -> None:
        # Editors stay disabled until the image is read again after the change.
        self._set_dirty(False)
        self.body.setEnabled(False)
        self.edit_requested.emit(edit)

    def set_node(self, node: Node | None) -> None:
        self.body.setEnabled(True)
        super().set_node(node)
