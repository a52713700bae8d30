"""The jobs panel's table: running and ended operations with progress, speed, time
left and outcome (a :class:`~vdgui.gui.jobs.JobRunner`'s non-background jobs)."""

from __future__ import annotations

import enum
from typing import Any

from PySide6.QtCore import (QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex,
                            Qt, Slot)

from ...engine import Cancelled
from ..errors import describe
from ..formatting import duration_text, rate_text
from ..jobs import Job, JobRunner, JobState

Index = QModelIndex | QPersistentModelIndex

#: The progress column's value for a bar delegate: a fraction 0..1, or None.
FRACTION_ROLE = Qt.ItemDataRole.UserRole + 1
JOB_ROLE = Qt.ItemDataRole.UserRole + 2


class JobColumn(enum.IntEnum):
    OPERATION = 0
    PROGRESS = 1
    SPEED = 2
    LEFT = 3
    OUTCOME = 4

    @property
    def title(self) -> str:
        return ("Operation", "Progress", "Speed", "Time left", "Outcome")[self]


def outcome_text(job: Job) -> str:
    """``Running``, ``Done in 3 seconds``, ``Cancelled: nothing changed``, ``Failed: ...``."""
    if not job.is_done:
        return "Cancelling…" if job.cancelled else (
            "Running" if job.state is JobState.RUNNING else "Waiting")
    took = duration_text(job.elapsed)
    if job.state is JobState.FINISHED:
        summary = getattr(job.result, "summary", "") or "Done"
        return f"{summary} ({took})"
    if isinstance(job.error, Cancelled):
        return "Cancelled: the images are as they were"
    assert job.error is not None
    return f"Failed: {describe(job.error).sentence}"


class JobsModel(QAbstractTableModel):
    """Newest job first."""

    def __init__(self, runner: JobRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._jobs: list[Job] = []
        runner.started.connect(self._on_started)
        runner.ended.connect(self._on_changed_job)
        runner.forgotten.connect(self._on_forgotten)

    @property
    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def job(self, index: Index) -> Job | None:
        return self._jobs[index.row()] if index.isValid() else None

    def _on_started(self, job: Job) -> None:
        if job.background:
            return
        self.beginInsertRows(QModelIndex(), 0, 0)
        self._jobs.insert(0, job)
        self.endInsertRows()
        job.progress.connect(self._on_progress)

    @Slot()
    def _on_progress(self) -> None:
        job = self.sender()
        if isinstance(job, Job):
            self._on_changed_job(job)

    def _on_changed_job(self, job: Job) -> None:
        if job in self._jobs:
            row = self._jobs.index(job)
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(JobColumn) - 1))

    def _on_forgotten(self, job: Job) -> None:
        if job in self._jobs:
            row = self._jobs.index(job)
            self.beginRemoveRows(QModelIndex(), row, row)
            del self._jobs[row]
            self.endRemoveRows()

    # -- Qt overrides

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(JobColumn)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if (orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole
                and 0 <= section < len(JobColumn)):
            return JobColumn(section).title
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._jobs):
            return None
        job = self._jobs[index.row()]
        column = JobColumn(index.column())
        if role == JOB_ROLE:
            return job
        if role == FRACTION_ROLE and column == JobColumn.PROGRESS:
            return job.fraction
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.AccessibleTextRole):
            return self._text(job, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == JobColumn.OPERATION:
                return f"{job.title}: {job.stage}" if job.stage else job.title
            return self._text(job, column) or None
        return None

    @staticmethod
    def _text(job: Job, column: JobColumn) -> str:
        if column == JobColumn.OPERATION:
            return job.title
        if column == JobColumn.PROGRESS:
            fraction = job.fraction
            return "" if fraction is None else f"{fraction:.0%}"
        if column == JobColumn.SPEED:
            return rate_text(job.speed) if job.speed and job.unit == "bytes" else ""
        if column == JobColumn.LEFT:
            eta = job.eta if job.unit == "bytes" else None
            return duration_text(eta) if eta is not None else ""
        return outcome_text(job)
