"""The findings of a check or repair (``VDRepair``) as a table: severity, what,
where, and the fix a repair applies."""

from __future__ import annotations

import enum
from typing import Any, Sequence

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtWidgets import QApplication, QStyle

from ...engine.findings import ERROR, LEAK, WARNING, Finding
from ..formatting import exact_bytes, human_size, offset_text

Index = QModelIndex | QPersistentModelIndex

_SEVERITY_WORDS = {ERROR: "Error", LEAK: "Leak", WARNING: "Warning"}
_SEVERITY_TIPS = {
    ERROR: "Data or structure is wrong: the image may read incorrectly",
    LEAK: "Space is allocated but unused: harmless, only wastes space",
    WARNING: "Not wrong, but other programs may stumble over it",
}
_SEVERITY_ICONS = {ERROR: QStyle.StandardPixmap.SP_MessageBoxCritical,
                   LEAK: QStyle.StandardPixmap.SP_MessageBoxInformation,
                   WARNING: QStyle.StandardPixmap.SP_MessageBoxWarning}


class FindingColumn(enum.IntEnum):
    SEVERITY = 0
    WHAT = 1
    LOCATION = 2
    FIX = 3

    @property
    def title(self) -> str:
        return ("Severity", "Problem", "Location", "Repair")[self]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def location_text(finding: Finding) -> str:
    return "whole image" if finding.offset is None else f"offset {finding.offset:#x}"


class FindingsModel(QAbstractTableModel):
    """Read-only table of :class:`~vdgui.engine.findings.Finding`."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._findings: list[Finding] = []

    @property
    def findings(self) -> list[Finding]:
        return list(self._findings)

    def set_findings(self, findings: Sequence[Finding]) -> None:
        self.beginResetModel()
        self._findings = list(findings)
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._findings)

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(FindingColumn)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if (orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole
                and 0 <= section < len(FindingColumn)):
            return FindingColumn(section).title
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._findings):
            return None
        finding = self._findings[index.row()]
        column = FindingColumn(index.column())
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.AccessibleTextRole):
            if column == FindingColumn.SEVERITY:
                return _SEVERITY_WORDS.get(finding.severity, finding.severity)
            if column == FindingColumn.WHAT:
                return _sentence(finding.what)
            if column == FindingColumn.LOCATION:
                return location_text(finding)
            return _sentence(finding.fix) if finding.fix else "cannot be repaired"
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == FindingColumn.SEVERITY:
                return _SEVERITY_TIPS.get(finding.severity, "")
            if column == FindingColumn.LOCATION and finding.offset is not None:
                return f"File offset {offset_text(finding.offset)}"
            if column == FindingColumn.FIX and finding.leaked_bytes:
                return (f"Gives back {human_size(finding.leaked_bytes)} "
                        f"({exact_bytes(finding.leaked_bytes)})")
            return _sentence(finding.what) if column == FindingColumn.WHAT else None
        if role == Qt.ItemDataRole.DecorationRole and column == FindingColumn.SEVERITY:
            style = QApplication.style()
            icon = _SEVERITY_ICONS.get(finding.severity)
            return style.standardIcon(icon) if style is not None and icon is not None else None
        return None
