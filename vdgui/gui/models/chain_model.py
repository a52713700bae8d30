"""The chain tree: a ``QAbstractItemModel`` over a :class:`vdgui.library.LibraryTree`.

Each base image is a top-level row with the differencing images made from it
beneath (a snapshot chain is a deep branch).  Columns: name, format, virtual size,
actual size (the file's length; the tooltip adds the exact bytes and the space it
really occupies on disk) and variant.  Images that cannot be read, whose parent
is missing or does not match, or that share their UUID with another file, carry a
warning icon and say why in their tooltip.

The model holds a snapshot produced by :func:`vdgui.library.scan` on a worker
thread; :meth:`ChainModel.set_tree` swaps it in.  ``SORT_ROLE`` gives numbers for
the size columns so that a sort proxy compares bytes, not strings.
:class:`LibraryFilterProxy` sorts and filters the tree by name, path or UUID.
"""

from __future__ import annotations

import enum
import html
from typing import Any

from PySide6.QtCore import (QAbstractItemModel, QModelIndex, QObject, QPersistentModelIndex,
                            QSortFilterProxyModel, Qt)

from ...engine import DiskType
from ...library import LibraryTree, Node
from .. import icons
from ..formatting import exact_bytes, human_size, size_tooltip, variant_text

Index = QModelIndex | QPersistentModelIndex

NODE_ROLE = Qt.ItemDataRole.UserRole + 1
PATH_ROLE = Qt.ItemDataRole.UserRole + 2
SORT_ROLE = Qt.ItemDataRole.UserRole + 3


class Column(enum.IntEnum):
    NAME = 0
    FORMAT = 1
    VIRTUAL_SIZE = 2
    ACTUAL_SIZE = 3
    VARIANT = 4

    @property
    def title(self) -> str:
        return ("Name", "Format", "Virtual size", "Actual size", "Variant")[self]


_SIZE_COLUMNS = (Column.VIRTUAL_SIZE, Column.ACTUAL_SIZE)


class ChainModel(QAbstractItemModel):
    """Read-only tree of the library's images."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tree = LibraryTree()

    @property
    def tree(self) -> LibraryTree:
        return self._tree

    def set_tree(self, tree: LibraryTree) -> None:
        self.beginResetModel()
        self._tree = tree
        self.endResetModel()

    def node(self, index: Index) -> Node | None:
        if not index.isValid():
            return None
        return index.internalPointer()  # type: ignore[no-any-return]

    def index_of(self, node: Node, column: int = 0) -> QModelIndex:
        siblings = node.parent.children if node.parent else self._tree.roots
        return self.createIndex(siblings.index(node), column, node)

    def index_for_path(self, path: str) -> QModelIndex:
        node = self._tree.find(path)
        return self.index_of(node) if node is not None else QModelIndex()

    def _children(self, parent: Index) -> list[Node]:
        node = self.node(parent)
        return node.children if node is not None else self._tree.roots

    # -- Qt overrides ------------------------------------------------------------------

    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:
        if parent.isValid() and parent.column() != 0:
            return QModelIndex()
        children = self._children(parent)
        if not (0 <= row < len(children) and 0 <= column < len(Column)):
            return QModelIndex()
        return self.createIndex(row, column, children[row])

    def parent(self, index: Index = QModelIndex()) -> QModelIndex:  # type: ignore[override]
        node = self.node(index)
        if node is None or node.parent is None:
            return QModelIndex()
        return self.index_of(node.parent)

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self._children(parent))

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return len(Column)

    def hasChildren(self, parent: Index = QModelIndex()) -> bool:
        return self.rowCount(parent) > 0

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(Column):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return Column(section).title
        if role == Qt.ItemDataRole.ToolTipRole and section == Column.ACTUAL_SIZE:
            return "Length of the image file(s)"
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        node = self.node(index)
        if node is None:
            return None
        column = Column(index.column())
        if role == Qt.ItemDataRole.DisplayRole:
            return _display(node, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            return _tooltip(node, column)
        if role == Qt.ItemDataRole.DecorationRole and column == Column.NAME:
            return _icon(node)
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return _accessible(node, column)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in _SIZE_COLUMNS:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == SORT_ROLE:
            return _sort_key(node, column)
        if role == NODE_ROLE:
            return node
        if role == PATH_ROLE:
            return node.path
        return None


def _display(node: Node, column: Column) -> str:
    info = node.info
    if column == Column.NAME:
        return node.name
    if info is None:
        return "inaccessible" if column == Column.FORMAT else ""
    if column == Column.FORMAT:
        return info.backend
    if column == Column.VIRTUAL_SIZE:
        return human_size(info.size)
    if column == Column.ACTUAL_SIZE:
        return human_size(info.file_size)
    return variant_text(info)


def _sort_key(node: Node, column: Column) -> Any:
    info = node.info
    if column == Column.VIRTUAL_SIZE:
        return info.size if info else -1
    if column == Column.ACTUAL_SIZE:
        return info.file_size if info else -1
    return _display(node, column).lower()


def _problem(node: Node) -> str:
    return node.error.message if node.error is not None else ""


def _tooltip(node: Node, column: Column) -> str:
    info = node.info
    if info is not None and column == Column.VIRTUAL_SIZE:
        return size_tooltip(info.size, "Virtual size")
    if info is not None and column == Column.ACTUAL_SIZE:
        return (f"{size_tooltip(info.file_size, 'File size')}<br>"
                f"On disk: {human_size(info.allocated_size)} "
                f"({exact_bytes(info.allocated_size)})")
    lines = [f"<b>{html.escape(node.path)}</b>"]
    if info is not None:
        lines.append(f"{html.escape(variant_text(info))} ({html.escape(info.backend)})")
    if node.error is not None:
        what = "Inaccessible" if info is None else "Problem"
        lines.append(f"<hr>{what}: {html.escape(_problem(node))}")
    elif node.same_uuid:
        others = ", ".join(html.escape(n.path) for n in node.same_uuid)
        lines.append(f"<hr>Same UUID as: {others} (give the copy a new UUID)")
    return "<br>".join(lines)


def _icon(node: Node) -> Any:
    if node.error is not None or node.same_uuid:
        return icons.icon("broken")
    assert node.info is not None
    if node.info.disk_type == DiskType.DVD:
        return icons.icon("optical")
    if node.info.disk_type == DiskType.FLOPPY:
        return icons.icon("floppy")
    return icons.icon("disk-diff" if node.info.is_diff else "disk")


def _accessible(node: Node, column: Column) -> str:
    text = _display(node, column)
    if column == Column.NAME:
        if node.error is not None:
            text += ", " + ("inaccessible: " if node.info is None else "problem: ") + _problem(node)
        elif node.info is not None:
            text += ", differencing image" if node.info.is_diff else ", base image"
            if node.same_uuid:
                text += f", same UUID as {node.same_uuid[0].name}"
    return text


def matches(node: Node, text: str) -> bool:
    """Whether ``text`` (part of a name, a path or a UUID) designates ``node``."""
    wanted = text.strip().strip("{}").lower()
    if not wanted:
        return True
    if wanted in node.path.lower():
        return True
    info = node.info
    return info is not None and info.uuid is not None and wanted in str(info.uuid)


class LibraryFilterProxy(QSortFilterProxyModel):
    """Sorts by :data:`SORT_ROLE`; shows the images matching the filter text (with
    their ancestors, so the tree stays a tree)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._text = ""
        self.setSortRole(SORT_ROLE)
        self.setRecursiveFilteringEnabled(True)

    @property
    def text(self) -> str:
        return self._text

    def set_text(self, text: str) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt 6.10 and later
            self.beginFilterChange()
            self._text = text
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self._text = text
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, row: int, parent: Index) -> bool:
        model = self.sourceModel()
        if not isinstance(model, ChainModel):
            return True
        node = model.node(model.index(row, 0, parent))
        return node is not None and matches(node, self._text)
