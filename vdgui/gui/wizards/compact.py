"""The "Compact" wizard (``VDCompact``): what compaction frees, before it runs.

The first page reads the allocation map of the image's chain and runs the
engine's dry run (``compact(dry_run=True)``): the blocks that only repeat what the
images below show, the all-zero blocks, and the zero blocks that must stay
because the format cannot mark them; from that, the estimated file size after.
A format that cannot be compacted is refused there, with the engine's reason.
"""

from __future__ import annotations

import enum
from typing import Sequence

from PySide6.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget, QWizardPage

from ...engine.ops.compact import CompactPlan
from ...library import Node
from ..formatting import human_size, size_tooltip
from ..jobs import JobRunner
from ..operations import ChainFacts, CompactParams, chain_facts, compact_plan
from ..widgets.allocation_map import AllocationMapView
from .common import JobLoader, SummaryPage, Wizard


class PageId(enum.IntEnum):
    PLAN = 0
    SUMMARY = 1


def _look(params: CompactParams, progress) -> tuple[ChainFacts, CompactPlan | None]:  # type: ignore[no-untyped-def]
    facts = chain_facts(params.path, progress, params.search_paths)
    if facts.compact_refusal:
        return facts, None
    return facts, compact_plan(params, progress)


class PlanPage(QWizardPage):
    _ROWS = (("same", "Blocks repeating what lies below"),
             ("zero", "All-zero blocks"),
             ("kept", "All-zero blocks that must stay"),
             ("file", "File size now"),
             ("after", "Estimated file size after"))

    def __init__(self, params: CompactParams, node: Node, runner: JobRunner,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("What compacting frees")
        self.setSubTitle(f"Compacting releases the blocks of {node.name} that hold nothing "
                         f"it needs, then shortens its file. What the disk shows does not "
                         f"change. Nothing is changed until you finish the wizard.")
        self.values: dict[str, QLabel] = {}
        form = QFormLayout()
        for key, label in self._ROWS:
            value = QLabel("…", self)
            value.setAccessibleName(label)
            form.addRow(f"{label}:", value)
            self.values[key] = value
        self.values["kept"].setToolTip("The format has no way to mark a block as zero "
                                       "without storing it")
        self.values["same"].setToolTip("Blocks holding exactly what the images below show "
                                       "(zeros, below a base image)")
        self.verdict = QLabel(self)
        self.verdict.setWordWrap(True)
        self.verdict.setAccessibleName("Verdict")
        self.loader = JobLoader(runner, self)
        self.map_view = AllocationMapView(self)
        self.map_view.setMinimumHeight(140)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.verdict)
        layout.addWidget(self.loader)
        layout.addWidget(self.map_view, 1)
        self.facts: ChainFacts | None = None
        self.plan: CompactPlan | None = None
        self.loader.loaded.connect(self._on_loaded)
        self.loader.start(f"Examining {node.name}", lambda progress: _look(params, progress),
                          [n.path for n in (*node.ancestors(), node)])

    def _set(self, key: str, value: int) -> None:
        self.values[key].setText(human_size(value))
        self.values[key].setToolTip(size_tooltip(value, dict(self._ROWS)[key]))

    def _on_loaded(self, result: tuple[ChainFacts, CompactPlan | None]) -> None:
        self.facts, self.plan = result
        self.map_view.set_map(self.facts.map)
        self._set("file", self.facts.file_size)
        if self.plan is None:
            self.verdict.setText(f"This image cannot be compacted: "
                                 f"{self.facts.compact_refusal}.")
            for key in ("same", "zero", "kept", "after"):
                self.values[key].setText("—")
        else:
            plan = self.plan
            self._set("same", plan.same_as_below)
            self._set("zero", plan.zero)
            self._set("kept", plan.kept_zero)
            self._set("after", max(self.facts.file_size - plan.reclaimable, 0))
            self.verdict.setText(
                f"Compacting frees about {human_size(plan.reclaimable)}." if plan.reclaimable
                else "No block can be released; compacting would only move blocks to "
                     "shorten the file where it has gaps.")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self.plan is not None


class CompactWizard(Wizard):
    """Collects :class:`~vdgui.gui.operations.CompactParams` for ``node``."""

    def __init__(self, node: Node, runner: JobRunner, parent: QWidget | None = None,
                 search_paths: Sequence[str] = ()) -> None:
        super().__init__("Compact", "compact", parent)
        self.node = node
        self._params = CompactParams(node.path, tuple(search_paths))
        self.plan_page = PlanPage(self._params, node, runner, self)
        self.summary_page = SummaryPage("Summary", "Compact the image?", self)
        self.setPage(PageId.PLAN, self.plan_page)
        self.setPage(PageId.SUMMARY, self.summary_page)
        self.rejected.connect(self.plan_page.loader.cancel)

    def params(self) -> CompactParams:
        return self._params

    def summary(self) -> str:
        plan = self.plan_page.plan
        lines = [f"Image: {self.node.path}"]
        if plan is not None:
            lines.append(f"Releases about {human_size(plan.reclaimable)}: "
                         f"{human_size(plan.same_as_below)} repeating the images below, "
                         f"{human_size(plan.zero)} of zeros")
        lines.append("What the disk shows does not change; the job can be cancelled "
                     "safely at any time.")
        return "\n".join(lines)

    def command(self) -> str:
        return self._params.command()
