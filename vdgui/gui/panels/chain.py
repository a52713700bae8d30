"""The chain of the selected image, drawn, with what is wrong and how to fix it.

The diagram shows the selected image's whole family (its base and every image made
from it).  Below it, the health of the selected image: a missing parent, a parent
UUID that does not match, another file with the same UUID -- each with the
guided fixes the main window offers (its actions, shown here as buttons).
"""

from __future__ import annotations

from typing import Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QScrollArea, QToolButton, QVBoxLayout,
                               QWidget)

from ...engine.chain import ParentNotFound
from ...engine.errors import UuidMismatch
from ...library import ChainBroken, Node
from ..widgets.chain_diagram import ChainDiagram
from .base import Panel


def family(node: Node) -> list[Node]:
    """The node's base and every image made from it."""
    ancestors = node.ancestors()
    root = ancestors[0] if ancestors else node
    return [root, *root.descendants()]


def fixes_for(node: Node) -> set[str]:
    """The guided fixes (action object names) that apply to ``node``'s problem."""
    if node.info is None:
        return {"remove"}
    if isinstance(node.error, ParentNotFound):
        return {"locate", "relink"}
    if isinstance(node.error, UuidMismatch):
        return {"relink"}
    if node.error is None and node.same_uuid:
        return {"new-uuid"}
    return set()


def health_text(node: Node) -> str:
    """What is wrong with the image's chain, and what can be done, in sentences."""
    error = node.error
    if node.info is None:
        return (f"<b>The file cannot be read.</b> {error.message if error else ''}. "
                f"If it was moved, open it from its new place; if it is gone, remove it "
                f"from the library.")
    if isinstance(error, ParentNotFound):
        return ("<b>Its parent image is missing.</b> It may have been moved or renamed. "
                "Search a folder for it (by its UUID), or choose the parent file yourself "
                "to re-link this image to it.")
    if isinstance(error, UuidMismatch):
        return (f"<b>Its parent does not match.</b> {error.message[:1].upper()}"
                f"{error.message[1:]}.")
    if isinstance(error, ChainBroken):
        return (f"<b>The chain cannot be opened:</b> {error.message}. Select that image to "
                f"fix it.")
    if error is not None:
        return f"<b>The chain cannot be opened.</b> {error.message}."
    if node.same_uuid:
        others = ", ".join(n.path for n in node.same_uuid)
        return (f"<b>Another image has the same UUID</b> ({others}). VirtualBox refuses the "
                f"second one (“a hard disk with this UUID already exists”). If this file "
                f"is a copy, give it a new UUID.")
    return "The chain is complete and consistent."


class ChainPanel(Panel):
    """The diagram of the selected image's chain, and guided fixes."""

    title = "C&hain"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self.body)
        layout.setContentsMargins(0, 0, 0, 0)
        self.diagram = ChainDiagram(self.body)
        self.scroll = QScrollArea(self.body)
        self.scroll.setWidget(self.diagram)
        self.scroll.setWidgetResizable(False)
        self.scroll.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        self.scroll.setAccessibleName("Chain diagram")
        self.health = QLabel(self.body)
        self.health.setWordWrap(True)
        self.health.setAccessibleName("Chain health")
        self.health.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fixes = QHBoxLayout()
        self.fix_buttons: list[QToolButton] = []
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.health)
        layout.addLayout(self.fixes)
        # The body takes the room, not the stretch the panels end with.
        self.layout().setStretch(1, 1)
        self.layout().setStretch(2, 0)

    def set_fix_actions(self, actions: Sequence[QAction]) -> None:
        """The window's actions that fix chains (known by :func:`fixes_for` through
        their object names); each is shown when it applies and is enabled."""
        for action in actions:
            button = QToolButton(self.body)
            button.setDefaultAction(action)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self.fixes.addWidget(button)
            self.fix_buttons.append(button)
            action.changed.connect(self._update_fixes)
        self.fixes.addStretch(1)
        self._update_fixes()

    def _update_fixes(self) -> None:
        wanted = fixes_for(self.node) if self.node is not None else set()
        for button in self.fix_buttons:
            action = button.defaultAction()
            button.setVisible(action.objectName() in wanted and action.isEnabled())

    def set_node(self, node: Node | None) -> None:
        super().set_node(node)
        # Unlike the property panels, the diagram is worth showing for broken images.
        self.body.setVisible(node is not None)
        if node is not None:
            self.show_notice("")

    def refresh(self) -> None:
        node = self.node
        if node is None:
            self.diagram.set_nodes([])
            return
        self.diagram.set_nodes(family(node), node)
        self.diagram.adjustSize()
        self.health.setText(health_text(node))
        self._update_fixes()
