"""General properties: location, format, storage, type, sizes, version, parent."""

from __future__ import annotations

import os

from PySide6.QtWidgets import QFormLayout, QLabel, QLineEdit, QWidget

from ...library import Node
from ..formatting import (exact_bytes, flags_text, human_size, storage_text, type_text,
                          version_text)
from .base import Panel, path_field, value_label

_ROWS = (
    ("location", "Location"),
    ("format", "Format"),
    ("storage", "Storage"),
    ("type", "Type"),
    ("virtual_size", "Virtual size"),
    ("file_size", "File size"),
    ("on_disk", "On disk"),
    ("version", "Format version"),
    ("parent", "Parent"),
    ("status", "Status"),
    ("access", "Access"),
)
_PATHS = ("location", "parent")


class GeneralPanel(Panel):
    """The image at a glance (read-only)."""

    title = "&General"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = QFormLayout(self.body)
        self.values: dict[str, QLabel] = {}
        self.paths: dict[str, QLineEdit] = {}
        for key, label in _ROWS:
            if key in _PATHS:
                widget: QWidget = self.paths.setdefault(key, path_field(self.body, label))
            else:
                widget = self.values.setdefault(key, value_label(self.body, label))
            form.addRow(f"{label}:", widget)

    def set_node(self, node: Node | None) -> None:
        super().set_node(node)
        # The location and the problem are worth showing even for unreadable files.
        if node is not None and node.info is None:
            self.show_notice(f"<b>{node.path}</b><br>This image cannot be read: "
                             f"{node.error.message if node.error else 'unknown reason'}.")

    def refresh(self) -> None:
        node = self.node
        if node is None or node.info is None:
            return
        info = node.info
        v = self.values
        self._set_path("location", node.path)
        v["format"].setText(f"{info.backend} ({info.description})")
        v["storage"].setText(storage_text(info))
        v["type"].setText(type_text(info))
        v["virtual_size"].setText(f"{human_size(info.size)} ({exact_bytes(info.size)})")
        v["file_size"].setText(f"{human_size(info.file_size)} ({exact_bytes(info.file_size)})")
        v["on_disk"].setText(f"{human_size(info.allocated_size)} "
                             f"({exact_bytes(info.allocated_size)})")
        v["on_disk"].setToolTip("Space the file really occupies; sparse files use less "
                                "than their length")
        v["version"].setText(version_text(info))
        if node.parent is not None:
            self._set_path("parent", node.parent.path)
        elif info.is_diff:
            stored = f" (stored as “{info.parent_filename}”)" if info.parent_filename else ""
            self._set_path("parent", f"not found{stored}")
        else:
            self._set_path("parent", "none (base image)")
        if node.error is not None:
            v["status"].setText(f"Problem: {node.error.message}")
        else:
            v["status"].setText("OK")
        v["access"].setText(f"Read-only ({flags_text(info.open_flags)})")
        v["access"].setToolTip(f"vdgui opened {os.path.basename(node.path)} read-only to "
                               f"show it; it writes to the file only when you apply a change.")

    def _set_path(self, key: str, text: str) -> None:
        field = self.paths[key]
        field.setText(text)
        field.setCursorPosition(0)
        field.setToolTip(text)
