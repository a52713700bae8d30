"""Disk geometry: physical (PCHS, for the ATA BIOS) and logical (LCHS, for the BIOS).

Editable; values are checked against the VD API's limits before anything is
written (PCHS: at most 16 heads and 63 sectors; LCHS: at most 255 heads and 63
sectors; 0/0/0 means "not stored").
"""

from __future__ import annotations

import os

from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from ...engine import Geometry
from ...library import Node
from .. import edits
from .base import EditablePanel

# Wider than what is valid, so that a wrong value is explained rather than silently
# clipped by the spin box.
_LIMITS = {"cylinders": 2**31 - 1, "heads": 999, "sectors": 999}


class GeometryEditor(QGroupBox):
    """Three spin boxes: cylinders / heads / sectors."""

    def __init__(self, title: str, name: str, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.setAccessibleName(name)
        layout = QHBoxLayout(self)
        self.spins: dict[str, QSpinBox] = {}
        for part, maximum in _LIMITS.items():
            spin = QSpinBox(self)
            spin.setRange(0, maximum)
            spin.setAccessibleName(f"{name} {part}")
            spin.setToolTip(f"{name}: number of {part}")
            label = QLabel(f"{part.capitalize()}:", self)
            label.setBuddy(spin)
            layout.addWidget(label)
            layout.addWidget(spin, 1)
            self.spins[part] = spin

    def geometry(self) -> Geometry:
        return Geometry(*(self.spins[p].value() for p in _LIMITS))

    def set_geometry(self, geometry: Geometry | None) -> None:
        geometry = geometry or Geometry()
        for part in _LIMITS:
            self.spins[part].setValue(getattr(geometry, part))


class GeometryPanel(EditablePanel):
    """Edits the geometries through ``VDSetPCHSGeometry`` / ``VDSetLCHSGeometry``."""

    title = "G&eometry"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self.body)
        self.pchs = GeometryEditor("Physical geometry (PCHS)", "Physical geometry", self.body)
        self.lchs = GeometryEditor("Logical geometry (LCHS)", "Logical geometry", self.body)
        hint = QLabel("0 / 0 / 0 means the image stores no geometry of that kind; "
                      "virtual machines then compute one from the size.", self.body)
        hint.setWordWrap(True)
        layout.addWidget(self.pchs)
        layout.addWidget(self.lchs)
        layout.addWidget(hint)
        for editor in (self.pchs, self.lchs):
            for spin in editor.spins.values():
                spin.valueChanged.connect(self.mark_dirty)

    def load(self, node: Node) -> None:
        assert node.info is not None
        self.pchs.set_geometry(node.info.pchs)
        self.lchs.set_geometry(node.info.lchs)

    def build_edit(self, node: Node) -> edits.Edit | None:
        assert node.info is not None
        pchs, lchs = self.pchs.geometry(), self.lchs.geometry()
        pchs_changed = pchs != (node.info.pchs or Geometry())
        lchs_changed = lchs != (node.info.lchs or Geometry())
        if pchs_changed:
            edits.validate_geometry(pchs, physical=True)
        if lchs_changed:
            edits.validate_geometry(lchs, physical=False)
        if not (pchs_changed or lchs_changed):
            return None
        new_pchs = pchs if pchs_changed else None
        new_lchs = lchs if lchs_changed else None
        return edits.Edit(f"Changing the geometry of {os.path.basename(node.path)}",
                          "change the geometry of",
                          lambda progress: edits.set_geometry(node.path, new_pchs, new_lchs),
                          writes=(node.path,), reads=tuple(a.path for a in node.ancestors()))
