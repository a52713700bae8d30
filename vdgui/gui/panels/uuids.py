"""UUIDs: the image's own, its parent's, and the modification UUIDs.

Editable, with copy to clipboard and "New" (a fresh random UUID).  Changing an
image's UUID can break what refers to it -- the differencing images made from it,
and VirtualBox's media registry -- so every change is confirmed first, and the
children in the library can be updated in the same step so the chain stays linked.
"""

from __future__ import annotations

import os
import uuid as uuidlib

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QToolButton, QWidget

from ...library import Node
from .. import dialogs, edits, icons
from ..widgets.uuid_edit import UuidEdit
from .base import Declined, EditablePanel

#: Fields that get a "New" button (the parent ones must match another image).
_RENEWABLE = ("uuid", "modification_uuid")


class UuidPanel(EditablePanel):
    """Edits the four UUIDs through the ``VDSet*Uuid`` calls."""

    title = "&UUIDs"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QGridLayout(self.body)
        self.editors: dict[str, UuidEdit] = {}
        self.renew_buttons: dict[str, QToolButton] = {}
        for i, (name, label) in enumerate(edits.UUID_FIELDS.items()):
            row = 2 * i  # caption above its field: the panel stays narrow
            editor = UuidEdit(self.body, label)
            caption = QLabel(f"{label[:1].upper()}{label[1:]}:", self.body)
            caption.setBuddy(editor)
            grid.addWidget(caption, row, 0, 1, 2)
            grid.addWidget(editor, row + 1, 0)
            editor.textChanged.connect(self.mark_dirty)
            self.editors[name] = editor
            if name in _RENEWABLE:
                button = QToolButton(self.body)
                button.setText("New")
                button.setIcon(icons.icon("regenerate"))
                button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
                button.setToolTip(f"Give the image a new random {label}")
                button.setAccessibleName(f"New {label}")
                button.clicked.connect(lambda _=False, n=name: self.regenerate(n))
                grid.addWidget(button, row + 1, 1)
                self.renew_buttons[name] = button
        grid.setColumnStretch(0, 1)

    def load(self, node: Node) -> None:
        info = node.info
        assert info is not None
        for name, editor in self.editors.items():
            editor.setUuid(getattr(info, name))
            editor.setReadOnly(not info.stores_uuids)
        for button in self.renew_buttons.values():
            button.setEnabled(info.stores_uuids)
        self.show_notice("" if info.stores_uuids else
                         f"The {info.backend} format does not store UUIDs.")

    def _changes(self, node: Node) -> dict[str, uuidlib.UUID]:
        """The edited UUIDs that differ from the image's (InvalidParameter if one is bad)."""
        assert node.info is not None
        changes = {}
        for name, editor in self.editors.items():
            value = edits.parse_uuid_text(editor.text(), edits.UUID_FIELDS[name])
            if value != getattr(node.info, name):
                changes[name] = value
        return changes

    def _linked_children(self, node: Node, changes: dict[str, uuidlib.UUID]) -> list[Node]:
        """Differencing images in the library that refer to a UUID being changed."""
        assert node.info is not None
        out = []
        for child in node.children:
            if child.info is None:
                continue
            if any(getattr(child.info, edits.CHILD_FIELD[name]) == getattr(node.info, name)
                   for name in changes if name in edits.CHILD_FIELD):
                out.append(child)
        return out

    def _confirm(self, node: Node, changes: dict[str, uuidlib.UUID]) -> list[str]:
        """Warn about the consequences; returns the children to relink (Declined if not)."""
        name = os.path.basename(node.path)
        labels = ", ".join(edits.UUID_FIELDS[n] for n in changes)
        children = self._linked_children(node, changes)
        hint = ("Programs that know the image by its UUID (such as VirtualBox's media "
                "registry or a virtual machine's settings) will no longer recognise it.")
        if any(n in ("parent_uuid", "parent_modification_uuid") for n in changes):
            hint += (" A wrong parent UUID separates a differencing image from its parent:"
                     " its content then reads differently.")
        checkbox = ""
        if children:
            names = ", ".join(os.path.basename(c.path) for c in children)
            checkbox = (f"Also update the {len(children)} differencing image"
                        f"{'s' if len(children) > 1 else ''} made from it ({names})")
            hint += " Differencing images refer to their parent by UUID."
        accepted, relink = dialogs.confirm(
            self, "Change UUIDs?", f"Change the {labels} of “{name}”?", hint,
            action="Change", checkbox=checkbox)
        if not accepted:
            raise Declined
        return [c.path for c in children] if relink else []

    def build_edit(self, node: Node) -> edits.Edit | None:
        changes = self._changes(node)
        if not changes:
            return None
        children = self._confirm(node, changes)
        return self._edit(node, changes, children)

    def _edit(self, node: Node, changes: dict[str, uuidlib.UUID],
              children: list[str]) -> edits.Edit:
        return edits.Edit(f"Changing the UUIDs of {os.path.basename(node.path)}",
                          "change the UUIDs of",
                          lambda progress: edits.set_uuids(node.path, changes, children),
                          writes=(node.path, *children),
                          reads=tuple(a.path for a in node.ancestors()))

    def regenerate(self, name: str) -> None:
        """"New": give the image a fresh random UUID, after a warning."""
        node = self.node
        if node is None or node.info is None or not node.info.stores_uuids:
            return
        changes = {name: uuidlib.uuid4()}
        try:
            children = self._confirm(node, changes)
        except Declined:
            return
        self.submit(self._edit(node, changes, children))
