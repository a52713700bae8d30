"""The allocation map view: a grid of the virtual disk coloured by the layer serving
each cell, and a table of what each layer owns.

Each cell is a slice of the virtual disk; it is filled, in proportion, with the
colours of the layers that serve it (hatched where a layer defines zeros, empty
where no image holds anything).  The table beside it gives, per layer, the bytes
it serves, the zeros it defines, all it stores, and the part of that an image
above hides ("shadowed": what a merge makes obsolete).  Hovering a cell names the
range and what serves it, in exact bytes.

:class:`AllocationMapView` reads the map itself, as a coroutine on the qasync event
loop whose steps run on a worker thread (:meth:`AllocationMapView.show_chain`), so
it fills in while the block tables are read; wizards that already have a map call
:meth:`AllocationMapView.set_map`.

Colours: a palette that stays distinct for colour-blind people and legible on light
and dark themes; everything else (background, empty cells, text) comes from the
widget's palette.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import enum
import os
from typing import Any, Sequence

from PySide6.QtCore import (QAbstractTableModel, QEvent, QModelIndex, QObject,
                            QPersistentModelIndex, QPoint, QRect, QSize, Qt, Signal)
from PySide6.QtGui import (QBrush, QColor, QHelpEvent, QPainter, QPaintEvent, QPalette, QPen,
                           QPixmap)
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QSplitter, QToolTip,
                               QTreeView, QVBoxLayout, QWidget)

from ...engine import OpenFlags, VDError, open_chain
from ..allocation import (STEP, UNALLOCATED, UNKNOWN, AllocationMap, LayerStats, MapBuilder,
                          category_of)
from ..formatting import exact_bytes, human_size, size_tooltip

#: Okabe & Ito's colour-blind-safe palette, base layer first.
LAYER_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
                "#F0E442", "#999999")

CELL = 11  # pixels per cell, gap included
MAX_CELLS = 8192

Index = QModelIndex | QPersistentModelIndex


def layer_color(depth: int) -> QColor:
    return QColor(LAYER_COLORS[depth % len(LAYER_COLORS)])


def paint_zeros(painter: QPainter, rect: QRect, color: QColor) -> None:
    """Zeros a layer defines: a pale tint of its colour, hatched with it."""
    tint = QColor(color)
    tint.setAlpha(70)
    painter.fillRect(rect, tint)
    painter.fillRect(rect, QBrush(color, Qt.BrushStyle.BDiagPattern))


def swatch(depth: int, zero: bool = False, size: int = 12) -> QPixmap:
    """A small square in a layer's colour (hatched for zeros), for legends."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    color = layer_color(depth)
    if zero:
        paint_zeros(painter, QRect(0, 0, size, size), color)
    else:
        painter.fillRect(0, 0, size, size, color)
    painter.setPen(QPen(color.darker(140)))
    painter.drawRect(0, 0, size - 1, size - 1)
    painter.end()
    return pixmap


def _category_words(depth: int, zero: bool, paths: Sequence[str]) -> str:
    if depth == UNKNOWN:
        return "not read yet"
    if depth == UNALLOCATED:
        return "not allocated (reads as zeros)"
    name = os.path.basename(paths[depth]) if depth < len(paths) else f"layer {depth}"
    return f"zeros defined by {name}" if zero else f"data in {name}"


class AllocationGrid(QWidget):
    """Paints an :class:`~vdgui.gui.allocation.AllocationMap` as a grid of cells."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._map: AllocationMap | None = None
        self._marker: int | None = None
        self.setAccessibleName("Allocation map")
        self.setMouseTracking(True)
        self.setMinimumSize(120, 2 * CELL + 2)
        self.setToolTip("Hover a cell to see which layer holds that part of the disk")

    @property
    def map(self) -> AllocationMap | None:
        return self._map

    def set_map(self, allocation: AllocationMap | None) -> None:
        self._map = allocation
        self._describe()
        self.update()

    def set_marker(self, offset: int | None) -> None:
        """Mark the part of the disk from ``offset`` on (what a shrink cuts off)."""
        self._marker = offset
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(480, 8 * CELL + 2)

    # -- geometry of the grid

    def _grid(self) -> tuple[int, int]:
        columns = max(1, (self.width() - 1) // CELL)
        rows = max(1, (self.height() - 1) // CELL)
        while columns * rows > MAX_CELLS and rows > 1:
            rows -= 1
        return columns, min(rows, max(1, MAX_CELLS // columns))

    def cell_count(self) -> int:
        columns, rows = self._grid()
        return columns * rows

    def cell_rect(self, index: int) -> QRect:
        columns, _ = self._grid()
        row, column = divmod(index, columns)
        return QRect(column * CELL + 1, row * CELL + 1, CELL - 1, CELL - 1)

    def cell_at(self, pos: QPoint) -> int | None:
        columns, rows = self._grid()
        column, row = (pos.x() - 1) // CELL, (pos.y() - 1) // CELL
        if 0 <= column < columns and 0 <= row < rows:
            return row * columns + column
        return None

    def cell_range(self, index: int) -> tuple[int, int]:
        size = self._map.size if self._map is not None else 0
        count = self.cell_count()
        return index * size // count, (index + 1) * size // count

    # -- painting

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Window))
        allocation = self._map
        if allocation is None or allocation.size == 0:
            painter.end()
            return
        count = self.cell_count()
        shares = allocation.shares(count)
        empty = palette.color(QPalette.ColorRole.Base)
        frame = palette.color(QPalette.ColorRole.Mid)
        unknown = QBrush(palette.color(QPalette.ColorRole.Mid), Qt.BrushStyle.Dense6Pattern)
        cut = self._marker
        for index in range(count):
            rect = self.cell_rect(index)
            painter.fillRect(rect, empty)
            y = rect.bottom() + 1
            for column in shares[index].nonzero()[0]:
                depth, zero = category_of(int(column))
                if depth == UNALLOCATED:
                    continue  # the empty cell is the picture of "nothing here"
                height = max(1, round(rect.height() * float(shares[index, column])))
                part = QRect(rect.left(), y - height, rect.width(), height)
                y -= height
                if depth == UNKNOWN:
                    painter.fillRect(part, unknown)
                elif zero:
                    paint_zeros(painter, part, layer_color(depth))
                else:
                    painter.fillRect(part, layer_color(depth))
            painter.setPen(QPen(frame))
            painter.drawRect(rect.adjusted(0, 0, -1, -1))
            if cut is not None and self.cell_range(index)[1] > cut:
                painter.fillRect(rect, QBrush(palette.color(QPalette.ColorRole.Text),
                                              Qt.BrushStyle.Dense5Pattern))
        painter.end()

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip and self._map is not None:
            assert isinstance(event, QHelpEvent)
            index = self.cell_at(event.pos())
            if index is not None:
                QToolTip.showText(event.globalPos(), self.cell_tooltip(index), self)
                return True
        return super().event(event)

    def cell_tooltip(self, index: int) -> str:
        allocation = self._map
        assert allocation is not None
        start, end = self.cell_range(index)
        lines = [f"<b>{human_size(start)} – {human_size(end)}</b> "
                 f"({exact_bytes(start)} to {exact_bytes(end)})"]
        if start >= allocation.scanned:
            lines.append("not read yet")
        for depth, zero, length in allocation.breakdown(start, end):
            lines.append(f"{_category_words(depth, zero, allocation.paths)}: "
                         f"{human_size(length)} ({exact_bytes(length)})")
        if self._marker is not None and end > self._marker:
            lines.append("<i>beyond the new end</i>")
        return "<br>".join(lines)

    def _describe(self) -> None:
        allocation = self._map
        if allocation is None:
            self.setAccessibleDescription("")
            return
        parts = [f"data in {layer.name}: {human_size(layer.visible)}"
                 for layer in allocation.layers]
        parts.append(f"not allocated: {human_size(allocation.unallocated)}")
        self.setAccessibleDescription(f"Virtual disk of {human_size(allocation.size)}; "
                                      + "; ".join(parts))


class LayerColumn(enum.IntEnum):
    LAYER = 0
    SERVES = 1
    ZEROS = 2
    STORED = 3
    SHADOWED = 4

    @property
    def title(self) -> str:
        return ("Layer", "Serves", "Zeros", "Stores", "Shadowed")[self]

    @property
    def tip(self) -> str:
        return ("The image of the chain, base first",
                "Data this layer provides to the disk as seen from the top image",
                "Ranges this layer defines as zeros (hiding the layers below)",
                "All the data this layer stores, visible or not",
                "Stored data an image above has replaced: obsolete, only takes space "
                "(a merge or a compaction frees it)")[self]


class LayersModel(QAbstractTableModel):
    """One row per layer of an allocation map, plus "not allocated"."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._map: AllocationMap | None = None

    def set_map(self, allocation: AllocationMap | None) -> None:
        self.beginResetModel()
        self._map = allocation
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        if parent.isValid() or self._map is None:
            return 0
        return len(self._map.paths) + 1

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(LayerColumn)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(LayerColumn):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return LayerColumn(section).title
        if role == Qt.ItemDataRole.ToolTipRole:
            return LayerColumn(section).tip
        return None

    def _layer(self, row: int) -> LayerStats | None:
        assert self._map is not None
        return self._map.layers[row] if row < len(self._map.layers) else None

    def _value(self, row: int, column: LayerColumn) -> int | None:
        m = self._map
        assert m is not None
        if row == len(m.paths):
            return m.unallocated if column == LayerColumn.SERVES else None
        layer = self._layer(row)
        if column == LayerColumn.SERVES:
            return layer.visible if layer else m.visible(row)
        if column == LayerColumn.ZEROS:
            return layer.zero if layer else m.visible(row, zero=True)
        if layer is None:
            return None  # known once the scan is complete
        return layer.stored if column == LayerColumn.STORED else layer.shadowed

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        m = self._map
        if m is None or not index.isValid():
            return None
        row, column = index.row(), LayerColumn(index.column())
        unallocated = row == len(m.paths)
        if column == LayerColumn.LAYER:
            if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.AccessibleTextRole):
                return "Not allocated" if unallocated else os.path.basename(m.paths[row])
            if role == Qt.ItemDataRole.ToolTipRole:
                return ("No image holds these ranges: they read as zeros" if unallocated
                        else f"{m.paths[row]} (layer {row}{', base' if row == 0 else ''})")
            if role == Qt.ItemDataRole.DecorationRole and not unallocated:
                return swatch(row)
            return None
        value = self._value(row, column)
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.AccessibleTextRole):
            if value is None:
                return "" if unallocated else "…"
            return human_size(value)
        if role == Qt.ItemDataRole.ToolTipRole and value is not None:
            return size_tooltip(value, column.title)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


def read_map(path: str, search_paths: Sequence[str] = ()) -> AllocationMap:
    """The whole allocation map of the chain ending in ``path`` (on a worker thread)."""
    with open_chain(path, OpenFlags.READONLY, search_paths) as disk:
        return MapBuilder(disk).run()


class AllocationMapView(QWidget):
    """The grid, the layers table and a status line; reads maps itself (qasync)."""

    #: A map finished reading (complete, with the layers' totals).
    map_ready = Signal(object)
    #: Reading the map failed (a VDError).
    map_failed = Signal(object)
    # Internal: a whole map read without an event loop (generation, future); queued.
    _read_done = Signal(object, object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Allocation map of the selected image's chain")
        self.status = QLabel(self)
        self.status.setWordWrap(True)
        self.status.setAccessibleName("Allocation map status")
        self.grid = AllocationGrid(self)
        self.layers = LayersModel(self)
        self.table = QTreeView(self)
        self.table.setModel(self.layers)
        self.table.setRootIsDecorated(False)
        self.table.setAccessibleName("Bytes each layer owns")
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setUniformRowHeights(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setMinimumWidth(380)
        header = self.table.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(LayerColumn.LAYER, QHeaderView.ResizeMode.Stretch)
        for column in list(LayerColumn)[1:]:
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.key = QLabel("Each cell is a slice of the virtual disk, coloured by the layer "
                          "serving it: solid for data, hatched for zeros a layer defines, "
                          "empty where nothing is allocated.", self)
        self.key.setWordWrap(True)
        self.key.setAccessibleName("How to read the map")
        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.grid, 1)
        left_layout.addWidget(self.key)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.table)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.status)
        layout.addWidget(self.splitter, 1)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="vdgui-map")
        self._task: asyncio.Task[None] | None = None
        self._path: str | None = None
        self._generation = 0
        self._read_done.connect(self._on_read_done)
        self.set_map(None, "Select an image to see which layer of its chain holds what.")

    @property
    def path(self) -> str | None:
        """The top image whose chain is shown (or being read)."""
        return self._path

    def set_map(self, allocation: AllocationMap | None, status: str = "") -> None:
        self.grid.set_map(allocation)
        self.layers.set_map(allocation)
        if not status and allocation is not None:
            status = (f"Virtual disk of {human_size(allocation.size)}: "
                      f"{len(allocation.paths)} layer{'s' if len(allocation.paths) > 1 else ''}"
                      f", {human_size(allocation.unallocated)} not allocated")
        self.status.setText(status)
        self.status.setToolTip(size_tooltip(allocation.size, "Virtual size")
                               if allocation is not None else "")

    def show_chain(self, path: str | None, search_paths: Sequence[str] = ()) -> None:
        """Read and show the map of the chain ending in ``path`` (None clears it)."""
        self.stop()
        self._path = path
        if path is None:
            self.set_map(None, "Select an image to see which layer of its chain holds what.")
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # No event loop runs coroutines (a script driving the window by hand): read
            # the whole map on the worker and hear of it through a queued signal.
            generation = self._generation
            self.set_map(None, "Reading the block tables…")
            future = self._executor.submit(read_map, path, tuple(search_paths))
            future.add_done_callback(lambda done: self._read_done.emit(generation, done))
            return
        self._task = asyncio.ensure_future(self._read(path, tuple(search_paths)))

    def stop(self) -> None:
        """Stop reading (the current step finishes on its worker thread)."""
        self._generation += 1
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def _on_read_done(self, generation: int, future: concurrent.futures.Future) -> None:
        if generation != self._generation:
            return  # another image was selected meanwhile
        try:
            allocation = future.result()
        except VDError as exc:
            self.set_map(None, f"The allocation map could not be read: {exc.message}.")
            self.map_failed.emit(exc)
            return
        self.set_map(allocation)
        self.map_ready.emit(allocation)

    def shutdown(self) -> None:
        """Stop reading and release the worker thread (the window is closing)."""
        self.stop()
        self._executor.shutdown(wait=True)

    async def _read(self, path: str, search_paths: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        run = self._executor
        self.set_map(None, "Reading the block tables…")
        try:
            disk = await loop.run_in_executor(run, open_chain, path, OpenFlags.READONLY,
                                              search_paths)
        except VDError as exc:
            self.set_map(None, f"The allocation map needs the whole chain, which cannot be "
                               f"opened: {exc.message}.")
            self.map_failed.emit(exc)
            return
        try:
            builder = MapBuilder(disk)
            while not builder.done:
                # A snapshot taken on the worker: the view never sees a half-updated map.
                snapshot = await loop.run_in_executor(
                    run, lambda: copy.copy(builder.advance(STEP)))
                done = snapshot.scanned * 100 // max(snapshot.size, 1)
                self.set_map(snapshot, "" if snapshot.complete else
                             f"Reading the block tables… {done}%")
        except VDError as exc:
            self.set_map(None, f"The allocation map could not be read: {exc.message}.")
            self.map_failed.emit(exc)
            return
        finally:
            try:
                run.submit(disk.close_all)  # after the step still running, if cancelled
            except RuntimeError:  # the worker is gone: the window is closing
                disk.close_all()
        self.map_ready.emit(snapshot)
