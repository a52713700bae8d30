"""The running jobs, in the status bar: what is running, how far, and Cancel."""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QToolButton, QWidget

from .. import icons
from ..jobs import Job, JobRunner

#: Progress bar resolution (QProgressBar holds 32-bit ints; byte counts do not fit).
_SCALE = 1000


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
        self.label.setText(f"{job.title}{stage}{more}")
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
