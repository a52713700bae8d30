"""The jobs, in two places: the status bar shows the latest running one with Cancel;
the Jobs panel (a dock) lists every operation, running or ended, with its progress,
speed, time left and outcome."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, Slot
from PySide6.QtGui import QAction, QKeySequence, QPainter
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QHBoxLayout, QHeaderView,
                               QLabel, QProgressBar, QPushButton, QStyle, QStyledItemDelegate,
                               QStyleOptionProgressBar, QStyleOptionViewItem, QToolButton,
                               QTreeView, QVBoxLayout, QWidget)

from .. import icons
from ..formatting import duration_text, rate_text
from ..jobs import Job, JobRunner
from ..models.jobs_model import FRACTION_ROLE, JobColumn, JobsModel

#: Progress bar resolution (QProgressBar holds 32-bit ints; byte counts do not fit).
_SCALE = 1000


def speed_words(job: Job) -> str:
    """``, 120 MiB/s, 3 seconds left`` (empty when unknown)."""
    if job.unit != "bytes" or not job.speed:
        return ""
    words = f", {rate_text(job.speed)}"
    eta = job.eta
    return words + (f", {duration_text(eta)} left" if eta is not None else "")


class JobsPanel(QWidget):
    """Shows the most recently started job that is still running; hidden when idle."""

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.setAccessibleName("Running operations")
        self.label = QLabel(self)
        self.bar = QProgressBar(self)
        self.bar.setAccessibleName("Progress")
        self.bar.setMaximumWidth(200)
        self.cancel_button = QToolButton(self)
        self.cancel_button.setIcon(icons.icon("cancel"))
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Cancel this operation (images are left as they were)")
        self.cancel_button.setAccessibleName("Cancel the operation")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.cancel_button.clicked.connect(self.cancel_current)
        runner.started.connect(self._on_started)
        runner.ended.connect(self._on_ended)
        self._job: Job | None = None
        self.hide()

    def _on_ended(self, _job: Job) -> None:
        active = self.runner.active
        self._show(active[-1] if active else None)

    def _on_started(self, job: Job) -> None:
        job.progress.connect(self._on_progress)
        self._show(job)

    @Slot()
    def _on_progress(self) -> None:
        self._update()

    def _show(self, job: Job | None) -> None:
        self._job = job
        self.setVisible(job is not None)
        self._update()

    def _update(self) -> None:
        job = self._job
        if job is None:
            return
        others = len(self.runner.active) - 1
        more = f" (+{others} more)" if others > 0 else ""
        stage = f": {job.stage}" if job.stage else ""
        self.label.setText(f"{job.title}{stage}{speed_words(job)}{more}")
        if job.total_units > 0:
            self.bar.setRange(0, _SCALE)
            self.bar.setValue(min(job.done_units * _SCALE // job.total_units, _SCALE))
        else:
            self.bar.setRange(0, 0)  # busy indicator until the first report
        self.cancel_button.setEnabled(not job.cancelled)

    def cancel_current(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.label.setText(f"{self._job.title}: cancelling…")
            self.cancel_button.setEnabled(False)


class ProgressDelegate(QStyledItemDelegate):
    """Draws the progress column as a progress bar in the style of the platform."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        fraction = index.data(FRACTION_ROLE)
        if fraction is None:
            super().paint(painter, option, index)
            return
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(2, 2, -2, -2)
        bar.minimum, bar.maximum = 0, _SCALE
        bar.progress = int(fraction * _SCALE)
        bar.text = index.data() or ""
        bar.textVisible = True
        bar.state = option.state
        bar.palette = option.palette
        style = option.widget.style() if option.widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, option.widget)


class JobsView(QWidget):
    """Every operation of this session: cancel running ones, clear ended ones."""

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.setAccessibleName("Jobs")
        self.model = JobsModel(runner, self)
        self.table = QTreeView(self)
        self.table.setModel(self.model)
        self.table.setRootIsDecorated(False)
        self.table.setUniformRowHeights(True)
        self.table.setAlternatingRowColors(True)
        self.table.setAccessibleName("Operations, newest first")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setItemDelegateForColumn(JobColumn.PROGRESS, ProgressDelegate(self.table))
        header = self.table.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(JobColumn.OPERATION, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(JobColumn.OPERATION, 260)
        header.resizeSection(JobColumn.PROGRESS, 140)
        for column in (JobColumn.SPEED, JobColumn.LEFT):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.cancel_button = QPushButton(icons.icon("cancel"), "&Cancel", self)
        self.cancel_button.setToolTip("Cancel the selected operation; the images are left as "
                                      "they were (Delete)")
        self.cancel_button.setAccessibleName("Cancel the selected operation")
        # Delete in the list cancels (only there: elsewhere it removes an image).
        cancel = QAction("Cancel the selected operation", self.table)
        cancel.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        cancel.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        cancel.triggered.connect(self.cancel_selected)
        self.table.addAction(cancel)
        self.clear_button = QPushButton("C&lear finished", self)
        self.clear_button.setToolTip("Remove the operations that have ended from the list")
        self.clear_button.setAccessibleName("Clear finished operations")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.clear_button.clicked.connect(runner.clear_history)
        self.table.selectionModel().currentChanged.connect(self._update_buttons)
        self.model.dataChanged.connect(self._update_buttons)
        self.model.rowsInserted.connect(self._update_buttons)
        self.model.rowsRemoved.connect(self._update_buttons)
        self._update_buttons()

    def selected_job(self) -> Job | None:
        return self.model.job(self.table.currentIndex())

    def cancel_selected(self) -> None:
        job = self.selected_job()
        if job is not None and not job.is_done:
            job.cancel()
            self._update_buttons()

    def _update_buttons(self) -> None:
        job = self.selected_job()
        self.cancel_button.setEnabled(job is not None and not job.is_done and not job.cancelled)
        self.clear_button.setEnabled(bool(self.runner.history))
