"""The chain diagram: base and differencing images drawn as a tree of boxes.

The base sits at the top, each differencing image below the image it was made
from; branches (two snapshots of one image) spread sideways.  Each box gives the
image's name, format, virtual size and file size, a swatch in the colour the
allocation map uses for its layer, and -- in the warning colour -- what is wrong
with it or with its link (parent missing, UUID mismatch, same UUID as another
file).  A broken link is drawn dashed.

Boxes can be marked (:meth:`ChainDiagram.set_marks`): the merge wizard shows which
image receives the data and which ones a merge deletes.  Clicking a box, or moving
with the arrow keys and pressing Space, emits :attr:`ChainDiagram.node_clicked`.
"""

from __future__ import annotations

import enum
import html

from PySide6.QtCore import QEvent, QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import (QBrush, QColor, QFocusEvent, QFont, QFontMetrics, QHelpEvent, QKeyEvent,
                           QMouseEvent, QPainter, QPaintEvent, QPalette, QPen, QPolygon)
from PySide6.QtWidgets import QToolTip, QWidget

from ...engine.chain import ParentNotFound
from ...engine.errors import UuidMismatch
from ...library import ChainBroken, Node
from ..formatting import exact_bytes, human_size
from .allocation_map import layer_color

BOX_WIDTH = 210
BOX_HEIGHT = 62
H_GAP = 24
V_GAP = 26
MARGIN = 10
#: The warning colour (Okabe & Ito vermillion): readable on light and dark themes.
WARNING = QColor("#D55E00")
KEEP = QColor("#009E73")


class Mark(enum.Enum):
    TARGET = "receives the data"
    DELETED = "deleted by the merge"
    SOURCE = "merged"


def problem_text(node: Node) -> str:
    """A few words on what is wrong with the image or its link ("" when nothing)."""
    if node.info is None:
        return "inaccessible"
    if isinstance(node.error, ParentNotFound):
        return "parent not found"
    if isinstance(node.error, UuidMismatch):
        return "parent UUID mismatch"
    if isinstance(node.error, ChainBroken):
        return "an image below has a problem"
    if node.error is not None:
        return "damaged or unreadable chain"
    if node.same_uuid:
        return f"same UUID as {node.same_uuid[0].name}"
    return ""


class ChainDiagram(QWidget):
    """Draws a set of library nodes (with the links among them) as a tree."""

    node_clicked = Signal(object)  # Node

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Chain diagram")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self._nodes: list[Node] = []
        self._boxes: dict[int, QRect] = {}  # id(node) -> box
        self._depth: dict[int, int] = {}
        self._current: Node | None = None
        self._focus: Node | None = None
        self._marks: dict[str, Mark] = {}
        self._size = QSize(BOX_WIDTH + 2 * MARGIN, BOX_HEIGHT + 2 * MARGIN)

    # -- content

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def set_nodes(self, nodes: list[Node], current: Node | None = None) -> None:
        """Show ``nodes``; a node whose parent is not among them is drawn as a root."""
        self._nodes = list(nodes)
        self._current = current
        self._focus = current if current in self._nodes else (nodes[0] if nodes else None)
        self._layout()
        self._describe()
        self.updateGeometry()
        self.update()

    def set_marks(self, marks: dict[str, Mark]) -> None:
        """Marks by node key (:attr:`vdgui.library.Node.key`)."""
        self._marks = dict(marks)
        self._describe()
        self.update()

    def set_current(self, node: Node | None) -> None:
        self._current = node
        if node in self._nodes:
            self._focus = node
        self.update()

    def box(self, node: Node) -> QRect:
        return QRect(self._boxes[id(node)])

    def node_at(self, pos: QPoint) -> Node | None:
        for node in self._nodes:
            if self._boxes[id(node)].contains(pos):
                return node
        return None

    def _layout(self) -> None:
        shown = {id(n) for n in self._nodes}
        roots = [n for n in self._nodes if n.parent is None or id(n.parent) not in shown]
        self._boxes, self._depth = {}, {}
        slot = 0

        def place(node: Node, level: int) -> float:
            nonlocal slot
            children = [c for c in node.children if id(c) in shown]
            if children:
                xs = [place(child, level + 1) for child in children]
                x = (xs[0] + xs[-1]) / 2
            else:
                x, slot = float(slot), slot + 1
            left = MARGIN + round(x * (BOX_WIDTH + H_GAP))
            self._boxes[id(node)] = QRect(left, MARGIN + level * (BOX_HEIGHT + V_GAP),
                                          BOX_WIDTH, BOX_HEIGHT)
            self._depth[id(node)] = len(node.ancestors())
            return x

        for root in roots:
            place(root, 0)
        right = max((r.right() for r in self._boxes.values()), default=BOX_WIDTH)
        bottom = max((r.bottom() for r in self._boxes.values()), default=BOX_HEIGHT)
        self._size = QSize(right + MARGIN + 1, bottom + MARGIN + 1)

    def sizeHint(self) -> QSize:
        return QSize(self._size)

    def minimumSizeHint(self) -> QSize:
        return QSize(self._size)

    # -- painting

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        text = palette.color(QPalette.ColorRole.Text)
        for node in self._nodes:
            parent = node.parent
            if parent is None or id(parent) not in self._boxes:
                continue
            start, end = self._boxes[id(parent)], self._boxes[id(node)]
            broken = isinstance(node.error, UuidMismatch)
            pen = QPen(WARNING if broken else palette.color(QPalette.ColorRole.Mid), 2)
            if broken:
                pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            mid = (start.bottom() + end.top()) // 2
            a = QPoint(start.center().x(), start.bottom())
            b = QPoint(end.center().x(), end.top())
            painter.drawPolyline(QPolygon([a, QPoint(a.x(), mid), QPoint(b.x(), mid), b]))
        for node in self._nodes:
            self._paint_box(painter, node, palette, text)
        painter.end()

    def _paint_box(self, painter: QPainter, node: Node, palette: QPalette,
                   text: QColor) -> None:
        rect = self._boxes[id(node)]
        mark = self._marks.get(node.key)
        problem = problem_text(node)
        border = palette.color(QPalette.ColorRole.Mid)
        width = 1
        if node is self._current:
            border, width = palette.color(QPalette.ColorRole.Highlight), 3
        if problem:
            border = WARNING
        if mark is Mark.TARGET:
            border, width = KEEP, 3
        pen = QPen(border, width)
        if mark is Mark.DELETED:
            pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.setBrush(palette.color(QPalette.ColorRole.Base))
        painter.drawRoundedRect(rect, 6, 6)
        if mark is Mark.DELETED:
            painter.fillRect(rect.adjusted(2, 2, -2, -2),
                             QBrush(WARNING, Qt.BrushStyle.BDiagPattern))
        depth = self._depth.get(id(node), 0)
        painter.fillRect(QRect(rect.left() + 6, rect.top() + 8, 10, 10), layer_color(depth))
        if node is self._focus and self.hasFocus():
            focus_pen = QPen(palette.color(QPalette.ColorRole.Highlight), 1,
                             Qt.PenStyle.DotLine)
            painter.setPen(focus_pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRoundedRect(rect.adjusted(-4, -4, 4, 4), 8, 8)
        inner = rect.adjusted(22, 4, -6, -4)
        plain = QFont(self.font())
        bold = QFont(plain)
        bold.setBold(True)
        painter.setFont(bold)
        painter.setPen(text)
        metrics = QFontMetrics(bold)
        painter.drawText(inner.left(), inner.top() + metrics.ascent(),
                         metrics.elidedText(node.name, Qt.TextElideMode.ElideMiddle,
                                            inner.width()))
        painter.setFont(plain)
        metrics = QFontMetrics(plain)
        line = inner.top() + metrics.lineSpacing() + metrics.ascent() + 2
        painter.drawText(inner.left(), line,
                         metrics.elidedText(self._facts(node), Qt.TextElideMode.ElideRight,
                                            inner.width()))
        note = problem or (mark.value if mark else "")
        if note:
            painter.setPen(WARNING if problem or mark is Mark.DELETED else KEEP)
            painter.drawText(inner.left(), line + metrics.lineSpacing(),
                             metrics.elidedText(note, Qt.TextElideMode.ElideRight,
                                                inner.width()))

    @staticmethod
    def _facts(node: Node) -> str:
        info = node.info
        if info is None:
            return "cannot be read"
        return f"{info.backend} · {human_size(info.size)} · file {human_size(info.file_size)}"

    # -- interaction

    def mousePressEvent(self, event: QMouseEvent) -> None:
        node = self.node_at(event.position().toPoint())
        if node is not None and event.button() == Qt.MouseButton.LeftButton:
            self._focus = node
            self.update()
            self.node_clicked.emit(node)
        super().mousePressEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Space, Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._focus:
            self.node_clicked.emit(self._focus)
            return
        moves = {Qt.Key.Key_Up: (0, -1), Qt.Key.Key_Down: (0, 1),
                 Qt.Key.Key_Left: (-1, 0), Qt.Key.Key_Right: (1, 0)}
        if key in moves and self._focus is not None:
            self._move_focus(*moves[key])
            return
        super().keyPressEvent(event)

    def _move_focus(self, dx: int, dy: int) -> None:
        """Focus the nearest box in the direction of the arrow key."""
        assert self._focus is not None
        here = self._boxes[id(self._focus)].center()
        best: tuple[int, Node] | None = None
        for node in self._nodes:
            there = self._boxes[id(node)].center()
            ddx, ddy = there.x() - here.x(), there.y() - here.y()
            if (dx and ddx * dx > 0) or (dy and ddy * dy > 0):
                distance = abs(ddx) + 3 * abs(ddy) if dx else 3 * abs(ddx) + abs(ddy)
                if best is None or distance < best[0]:
                    best = (distance, node)
        if best is not None:
            self._focus = best[1]
            self.update()

    def focusInEvent(self, event: QFocusEvent) -> None:
        self.update()
        super().focusInEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        self.update()
        super().focusOutEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip:
            assert isinstance(event, QHelpEvent)
            node = self.node_at(event.pos())
            if node is not None:
                QToolTip.showText(event.globalPos(), self.node_tooltip(node), self)
            else:
                QToolTip.hideText()
            return True
        return super().event(event)

    def node_tooltip(self, node: Node) -> str:
        lines = [f"<b>{html.escape(node.path)}</b>"]
        info = node.info
        if info is not None:
            lines.append(f"Virtual size: {human_size(info.size)} ({exact_bytes(info.size)})")
            lines.append(f"File size: {human_size(info.file_size)} "
                         f"({exact_bytes(info.file_size)})")
            if info.uuid is not None:
                lines.append(f"UUID: {info.uuid}")
        if node.error is not None:
            lines.append(f"<hr>Problem: {html.escape(node.error.message)}")
        elif node.same_uuid:
            others = ", ".join(html.escape(n.path) for n in node.same_uuid)
            lines.append(f"<hr>Another image has the same UUID: {others}")
        mark = self._marks.get(node.key)
        if mark is not None:
            lines.append(f"<i>{mark.value}</i>")
        return "<br>".join(lines)

    def _describe(self) -> None:
        parts = []
        for node in self._nodes:
            words = [node.name]
            parent = node.parent
            if parent is not None and id(parent) in self._boxes:
                words.append(f"on {parent.name}")
            problem = problem_text(node)
            if problem:
                words.append(problem)
            mark = self._marks.get(node.key)
            if mark is not None:
                words.append(mark.value)
            parts.append(" ".join(words[:1]) + (" (" + ", ".join(words[1:]) + ")"
                                                  if len(words) > 1 else ""))
        self.setAccessibleDescription("; ".join(parts))
