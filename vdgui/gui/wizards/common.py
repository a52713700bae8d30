"""What the wizards share: the base class, a page that runs a read-only look at the
images on a worker thread, and the final page with the summary and the equivalent
``vdimg`` command.

Wizards collect parameters page by page, validating each page before Next; an
operation that changes images runs only after Finish (the main window starts its
job).  Looks that only read -- what a merge would move, what a compaction would
free -- run while the pages are shown, through the window's
:class:`~vdgui.gui.jobs.JobRunner`, so they hold read locks and never block the GUI.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (QFormLayout, QLabel, QProgressBar, QVBoxLayout, QWidget, QWizard,
                               QWizardPage)

from ...engine import BackendInfo, Cancelled, Progress, VDError
from ..errors import describe
from ..jobs import ImageBusy, Job, JobRunner
from ..widgets.command_box import CommandBox
from .. import icons


def declares(info: BackendInfo, field: str) -> bool | None:
    """Whether the format stores metadata ``field`` (``BackendInfo.stores``); None
    when the backend does not say."""
    if info.stores is None:
        return None
    return field in info.stores


def error_label(parent: QWidget) -> QLabel:
    label = QLabel(parent)
    label.setWordWrap(True)
    label.setAccessibleName("Problem")
    return label


class Wizard(QWizard):
    """A vdgui wizard: no Back on the first page, sized, titled for screen readers."""

    def __init__(self, title: str, icon: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setAccessibleName(title)
        self.setWindowIcon(icons.icon(icon))
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage)
        self.setOption(QWizard.WizardOption.HaveHelpButton, False)
        self.resize(680, 520)

    def summary(self) -> str:
        """What will happen, in lines of text (the final page shows it)."""
        raise NotImplementedError

    def command(self) -> str:
        """The equivalent ``vdimg`` command."""
        raise NotImplementedError


class JobLoader(QWidget):
    """Runs one read-only look at the images for a page, showing its progress.

    Only the latest look counts: starting another, or cancelling, makes the
    previous one's result be ignored.
    """

    loaded = Signal(object)
    failed = Signal(object)  # the exception

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._job: Job | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.label = QLabel(self)
        self.label.setWordWrap(True)
        self.label.setAccessibleName("Status")
        self.bar = QProgressBar(self)
        self.bar.setAccessibleName("Progress")
        self.bar.setRange(0, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        self.bar.hide()

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def ready(self) -> bool:
        return not self.busy and self.error is None and self.result is not None

    def start(self, title: str, fn: Callable[[Progress], Any], reads: Iterable[str]) -> None:
        self.cancel()
        self.result, self.error = None, None
        try:
            job = self.runner.run(title, fn, reads=reads, background=True)
        except ImageBusy as exc:
            self._show_error(exc)
            return
        self._job = job
        self.label.setText(f"{title}…")
        self.bar.setRange(0, 0)
        self.bar.show()
        job.progress.connect(self._on_progress)
        job.finished.connect(self._on_finished)
        job.failed.connect(self._on_failed)

    def cancel(self) -> None:
        job, self._job = self._job, None
        if job is not None and not job.is_done:
            job.cancel()
        self.bar.hide()

    def _current(self) -> Job | None:
        job = self.sender()
        return job if isinstance(job, Job) and job is self._job else None

    @Slot(object, object, str)
    def _on_progress(self, done: int, total: int, stage: str) -> None:
        if self._current() is None:
            return
        if total > 0:
            self.bar.setRange(0, 1000)
            self.bar.setValue(min(done * 1000 // total, 1000))
        if stage:
            self.label.setText(f"{self._job.title if self._job else ''}: {stage}…")

    @Slot(object)
    def _on_finished(self, result: Any) -> None:
        if self._current() is None:
            return
        self._job = None
        self.bar.hide()
        self.label.clear()
        self.result = result
        self.loaded.emit(result)

    @Slot(object)
    def _on_failed(self, error: BaseException) -> None:
        if self._current() is None:
            return
        self._job = None
        self._show_error(error)

    def _show_error(self, error: BaseException) -> None:
        self.bar.hide()
        self.error = error
        if isinstance(error, Cancelled):
            self.label.setText("Cancelled.")
        elif isinstance(error, VDError):
            report = describe(error)
            self.label.setText(f"{report.sentence}\n{report.hint}")
        else:
            raise error  # a bug: the crash dialog, not a silent page
        self.failed.emit(error)


class SummaryPage(QWizardPage):
    """The last page: what will happen, and the same thing as a ``vdimg`` command."""

    def __init__(self, title: str, subtitle: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle(title)
        self.setSubTitle(subtitle)
        self.summary = QLabel(self)
        self.summary.setWordWrap(True)
        self.summary.setAccessibleName("Summary")
        self.summary.setTextFormat(Qt.TextFormat.PlainText)
        self.command = CommandBox(self)
        self.form = QFormLayout()
        self.form.addRow("Summary:", self.summary)
        self.form.addRow("Command line:", self.command)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addStretch(1)

    def initializePage(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        wizard = self.wizard()
        if isinstance(wizard, Wizard):
            self.summary.setText(wizard.summary())
            self.command.setText(wizard.command())
