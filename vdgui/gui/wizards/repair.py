"""The "Check and repair" wizard: the repair review.

Page 1 runs the check (``VDRepair`` with ``DRY_RUN``: nothing is written) and lists
its findings -- severity, what, where in the file, and the fix a repair applies.
When something can be fixed, Next is "Apply all" (or Cancel leaves the image
untouched).  Page 2 runs the repair as a job (locked, listed in the jobs panel),
then checks again and shows that second check's findings: normally none.
"""

from __future__ import annotations

import enum
import os
from typing import Sequence

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QTableView, QVBoxLayout,
                               QWidget, QWizard, QWizardPage)

from ...engine.ops.repair import RepairReport
from ...library import Node
from ..edits import ChangeSet
from ..errors import describe
from ..formatting import human_size
from ..jobs import ImageBusy, Job, JobRunner
from ..models.findings_model import FindingColumn, FindingsModel
from ..operations import RepairParams, check_image, repair_image
from ..widgets.command_box import CommandBox
from .common import JobLoader, Wizard


class PageId(enum.IntEnum):
    CHECK = 0
    RESULT = 1


def verdict(report: RepairReport) -> str:
    """One sentence on a check's findings."""
    if report.clean:
        return f"No problem found: {report.format} image {report.path} is consistent."
    counts: dict[str, int] = {}
    for finding in report.problems:
        counts[finding.severity] = counts.get(finding.severity, 0) + 1
    listing = ", ".join(f"{n} {severity}{'s' if n > 1 else ''}"
                        for severity, n in sorted(counts.items()))
    words = f"{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''} ({listing})."
    if report.leaked_bytes:
        words += f" {human_size(report.leaked_bytes)} can be reclaimed."
    fixable = sum(1 for p in report.problems if p.fix)
    if fixable == len(report.problems):
        words += " Every one can be repaired."
    elif fixable:
        words += f" {fixable} can be repaired; the others cannot."
    else:
        words += " None can be repaired automatically."
    return words


def findings_table(model: FindingsModel, parent: QWidget) -> QTableView:
    """A table whose rows grow to show long findings whole."""
    table = QTableView(parent)
    table.setModel(model)
    table.setAlternatingRowColors(True)
    table.setWordWrap(True)
    table.setAccessibleName("Findings")
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.verticalHeader().hide()
    header = table.horizontalHeader()
    header.setSectionResizeMode(FindingColumn.SEVERITY, QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(FindingColumn.WHAT, QHeaderView.ResizeMode.Stretch)
    header.setSectionResizeMode(FindingColumn.LOCATION, QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(FindingColumn.FIX, QHeaderView.ResizeMode.Stretch)
    model.modelReset.connect(table.resizeRowsToContents)
    header.sectionResized.connect(lambda *_: table.resizeRowsToContents())
    return table


class CheckPage(QWizardPage):
    def __init__(self, params: RepairParams, node: Node, runner: JobRunner,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.params = params
        self.setTitle(f"Check of {node.name}")
        self.setSubTitle("The check reads the image and changes nothing. Review what it "
                         "found; “Apply all” repairs it, Cancel leaves it as it is.")
        self.model = FindingsModel(self)
        self.table = findings_table(self.model, self)
        self.verdict = QLabel(self)
        self.verdict.setWordWrap(True)
        self.verdict.setAccessibleName("Verdict")
        self.loader = JobLoader(runner, self)
        self.command = CommandBox(self)
        self.command.setText(params.command(dry_run=True))
        layout = QVBoxLayout(self)
        layout.addWidget(self.loader)
        layout.addWidget(self.verdict)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.command)
        self.report: RepairReport | None = None
        self.setButtonText(QWizard.WizardButton.CommitButton, "&Apply all")
        self.loader.loaded.connect(self._on_report)
        self.loader.start(f"Checking {node.name}",
                          lambda progress: check_image(params, progress), [params.path])

    def _on_report(self, report: RepairReport) -> None:
        self.report = report
        self.model.set_findings(report.problems)
        self.verdict.setText(verdict(report))
        # QWizard lays its buttons out only when a page is shown, or when these change:
        # clean, or nothing to fix, and Finish (closing) replaces "Apply all".
        self.setFinalPage(not self.repairable)
        self.setCommitPage(self.repairable)
        self.completeChanged.emit()

    @property
    def repairable(self) -> bool:
        return self.report is not None and any(p.fix for p in self.report.problems)

    def isComplete(self) -> bool:
        return self.report is not None

    def nextId(self) -> int:
        return PageId.RESULT if self.repairable else -1


class ResultPage(QWizardPage):
    """Runs the repair, then shows the second check."""

    def __init__(self, params: RepairParams, runner: JobRunner,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.params = params
        self.runner = runner
        self.setTitle("Repair")
        self.setSubTitle("The fixes are applied, then the image is checked again.")
        self.status = QLabel(self)
        self.status.setWordWrap(True)
        self.status.setAccessibleName("Repair status")
        self.model = FindingsModel(self)
        self.table = findings_table(self.model, self)
        self.command = CommandBox(self)
        self.command.setText(params.command())
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.command)
        self.job: Job | None = None
        self.after: RepairReport | None = None

    def initializePage(self) -> None:
        params = self.params
        try:
            self.job = self.runner.run(f"Repairing {os.path.basename(params.path)}",
                                       lambda progress: repair_image(params, progress),
                                       writes=[params.path], unit="")
        except ImageBusy as exc:
            self.status.setText(f"The repair cannot start: {exc.message}.")
            return
        self.status.setText("Repairing…")
        wizard = self.wizard()
        if wizard is not None:
            wizard.button(QWizard.WizardButton.CancelButton).setEnabled(False)
        self.job.finished.connect(self._on_done)
        self.job.failed.connect(self._on_failed)

    def _ended(self) -> None:
        wizard = self.wizard()
        if wizard is not None:
            wizard.button(QWizard.WizardButton.CancelButton).setEnabled(True)
        self.completeChanged.emit()

    @Slot(object)
    def _on_done(self, result: tuple[RepairReport, RepairReport]) -> None:
        done, self.after = result
        fixed = len(done.fixed)
        self.model.set_findings(self.after.problems)
        self.status.setText(f"Applied {fixed} fix{'es' if fixed != 1 else ''}. "
                            f"Second check: {verdict(self.after)}")
        wizard = self.wizard()
        if isinstance(wizard, RepairWizard):
            wizard.repaired.emit(ChangeSet(changed=(self.params.path,),
                                           select=self.params.path,
                                           summary=f"Repaired {fixed} problem"
                                                   f"{'s' if fixed != 1 else ''}"))
        self._ended()

    @Slot(object)
    def _on_failed(self, error: BaseException) -> None:
        self.after = None
        report = describe(error, "repair")
        self.status.setText(f"{report.sentence} {report.hint}")
        wizard = self.wizard()
        if isinstance(wizard, RepairWizard):
            wizard.repair_failed.emit(error)
        self._ended()

    def isComplete(self) -> bool:
        return self.job is not None and self.job.is_done


class RepairWizard(Wizard):
    """Check, review, apply all, check again."""

    #: The repair ran (a ChangeSet), or failed (the exception).
    repaired = Signal(object)
    repair_failed = Signal(object)

    def __init__(self, node: Node, runner: JobRunner, parent: QWidget | None = None,
                 search_paths: Sequence[str] = ()) -> None:
        super().__init__("Check and repair", "repair", parent)
        self.node = node
        self._params = RepairParams.for_file(node.path, node.info.backend if node.info else None,
                                             search_paths)
        self.check_page = CheckPage(self._params, node, runner, self)
        self.result_page = ResultPage(self._params, runner, self)
        self.setPage(PageId.CHECK, self.check_page)
        self.setPage(PageId.RESULT, self.result_page)
        self.resize(820, 540)
        self.rejected.connect(self.check_page.loader.cancel)

    def params(self) -> RepairParams:
        return self._params

    @property
    def repairing(self) -> bool:
        job = self.result_page.job
        return job is not None and not job.is_done

    def reject(self) -> None:
        """Closing is refused while the repair runs: it ends at once, and the window
        must hear of it to show the repaired image."""
        if not self.repairing:
            super().reject()

    def summary(self) -> str:
        report = self.check_page.report
        return verdict(report) if report is not None else "Checking…"

    def command(self) -> str:
        return self._params.command(dry_run=not self.check_page.repairable)
