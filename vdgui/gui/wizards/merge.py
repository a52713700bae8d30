"""The "Merge" wizard: fold a range of a chain into one of its images (``VDMerge``).

Page 1 draws the chain; the person picks the two ends of the range on the diagram
(or in the two lists) and which end survives: the older image (the changes are
committed into it, as deleting a snapshot does) or the newer one (its ancestors
are folded into it).  The page refuses what would break other images: branches
built on an image the merge deletes or changes.  Page 2 states, before anything
runs, which images are deleted, how much data moves (read from the allocation
maps), the space freed, and the ``vdimg merge`` command.
"""

from __future__ import annotations

import enum
import os
from typing import Sequence

from PySide6.QtWidgets import (QButtonGroup, QComboBox, QFormLayout, QRadioButton,
                               QScrollArea, QVBoxLayout, QWidget, QWizardPage)

from ...library import Node
from ..formatting import exact_bytes, human_size
from ..jobs import JobRunner
from ..operations import MergeParams, merge_moves
from ..widgets.chain_diagram import ChainDiagram, Mark
from .common import JobLoader, SummaryPage, Wizard, error_label


class PageId(enum.IntEnum):
    PICK = 0
    REVIEW = 1


def merge_chain(node: Node) -> list[Node]:
    """The linear chain a merge can work on: the image's ancestors, the image, and
    below it the images made from it as long as each has exactly one child."""
    chain = [*node.ancestors(), node]
    while len(chain[-1].children) == 1:
        chain.append(chain[-1].children[0])
    return chain


def refusal(chain: Sequence[Node], source: int, target: int) -> str:
    """Why merging ``source`` into ``target`` must not run ("" when it may)."""
    if source == target:
        return "Pick two different images: the range to merge and the image to keep."
    broken = [n for n in chain if not n.ok]
    if broken:
        return (f"{broken[0].name} has a problem; repair the chain before merging "
                f"({broken[0].error.message if broken[0].error else 'unreadable'}).")
    keep = chain[target]
    lo, hi = min(source, target), max(source, target)
    largest = max(n.info.size for n in chain[lo:hi + 1] if n.info is not None)
    assert keep.info is not None
    if largest > keep.info.size:
        return (f"An image of the range is larger ({human_size(largest)}) than "
                f"{keep.name} ({human_size(keep.info.size)}); resize {keep.name} first.")
    deleted = range(lo, hi) if source < target else range(lo + 1, hi + 1)
    if source > target:
        # The kept image changes: images built on it outside the chain would too.
        others = [c for c in keep.children if c is not chain[lo + 1]]
        if others:
            return (f"{', '.join(c.name for c in others)} "
                    f"{'is' if len(others) == 1 else 'are'} also built on {keep.name}; "
                    f"merging into it would change what "
                    f"{'it shows' if len(others) == 1 else 'they show'}.")
    for i in deleted:
        follower = chain[i + 1] if i + 1 < len(chain) else None
        orphans = [c for c in chain[i].children if c is not follower]
        if orphans:
            return (f"{', '.join(c.name for c in orphans)} "
                    f"{'is' if len(orphans) == 1 else 'are'} built on {chain[i].name}, "
                    f"which the merge deletes.")
    return ""


class PickPage(QWizardPage):
    """The chain diagram and the choice of the range and the image to keep."""

    def __init__(self, chain: list[Node], current: Node, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.chain = chain
        self.setTitle("What to merge")
        self.setSubTitle("Click the two ends of the range on the diagram (or choose them "
                         "below), and which image keeps the data. The others are deleted.")
        self.diagram = ChainDiagram(self)
        self.diagram.set_nodes(chain, current)
        scroll = QScrollArea(self)
        scroll.setWidget(self.diagram)
        scroll.setWidgetResizable(False)
        scroll.setMinimumHeight(160)
        scroll.setAccessibleName("Chain")
        self.first = QComboBox(self)
        self.second = QComboBox(self)
        for combo, name in ((self.first, "From"), (self.second, "To")):
            combo.setAccessibleName(f"{name} image")
            for index, node in enumerate(chain):
                combo.addItem(f"{index}: {node.name}", index)
        self.keep_group = QButtonGroup(self)
        self.keep_older = QRadioButton("Keep the &older image: commit the newer ones into it "
                                       "(like deleting a snapshot)", self)
        self.keep_newer = QRadioButton("Keep the &newer image: fold the older ones into it",
                                       self)
        self.keep_group.addButton(self.keep_older, 0)
        self.keep_group.addButton(self.keep_newer, 1)
        self.keep_older.setChecked(True)
        self.error = error_label(self)
        form = QFormLayout()
        form.addRow("Merge from:", self.first)
        form.addRow("to:", self.second)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll, 1)
        layout.addLayout(form)
        layout.addWidget(self.keep_older)
        layout.addWidget(self.keep_newer)
        layout.addWidget(self.error)
        here = chain.index(current)
        self.set_range(max(here - 1, 0), here if here > 0 else min(1, len(chain) - 1))
        self._clicks = 0
        self.diagram.node_clicked.connect(self._on_click)
        self.first.currentIndexChanged.connect(self._update)
        self.second.currentIndexChanged.connect(self._update)
        self.keep_group.idToggled.connect(lambda *_: self._update())
        self._update()

    def set_range(self, a: int, b: int) -> None:
        self.first.setCurrentIndex(a)
        self.second.setCurrentIndex(b)

    def _on_click(self, node: Node) -> None:
        """Clicks alternate between the two ends of the range."""
        index = self.chain.index(node)
        (self.first if self._clicks % 2 == 0 else self.second).setCurrentIndex(index)
        self._clicks += 1

    def source_target(self) -> tuple[int, int]:
        a, b = self.first.currentIndex(), self.second.currentIndex()
        lo, hi = min(a, b), max(a, b)
        return (hi, lo) if self.keep_older.isChecked() else (lo, hi)

    def _update(self) -> None:
        source, target = self.source_target()
        marks: dict[str, Mark] = {}
        if source != target:
            params = MergeParams(tuple(n.path for n in self.chain), source, target)
            marks = {self.chain[i].key: Mark.DELETED for i in params.deleted}
            marks[self.chain[target].key] = Mark.TARGET
        self.diagram.set_marks(marks)
        self.error.setText(refusal(self.chain, source, target))
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        source, target = self.source_target()
        return not refusal(self.chain, source, target)


class ReviewPage(SummaryPage):
    """What the merge does, with the amount of data it moves, before it runs."""

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__("Review", "Nothing has changed yet. Check what the merge does, then "
                         "merge.", parent)
        self.loader = JobLoader(runner, self)
        self.form.addRow("", self.loader)
        self.moved: int | None = None
        self.loader.loaded.connect(self._on_moved)
        self.loader.failed.connect(lambda _: self.completeChanged.emit())

    def initializePage(self) -> None:
        wizard = self.wizard()
        assert isinstance(wizard, MergeWizard)
        self.moved = None
        params = wizard.params()
        self.loader.start("Measuring the data to move",
                          lambda progress: merge_moves(params, progress), params.chain)
        super().initializePage()

    def cleanupPage(self) -> None:
        self.loader.cancel()
        super().cleanupPage()

    def _on_moved(self, moved: int) -> None:
        self.moved = moved
        self.refresh()
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self.moved is not None


class MergeWizard(Wizard):
    """Collects :class:`~vdgui.gui.operations.MergeParams` for ``node``'s chain."""

    def __init__(self, node: Node, runner: JobRunner, parent: QWidget | None = None,
                 search_paths: Sequence[str] = ()) -> None:
        super().__init__("Merge images", "merge", parent)
        self.chain = merge_chain(node)
        self.search_paths = tuple(search_paths)
        self.pick_page = PickPage(self.chain, node, self)
        self.review_page = ReviewPage(runner, self)
        self.setPage(PageId.PICK, self.pick_page)
        self.setPage(PageId.REVIEW, self.review_page)
        self.rejected.connect(self.review_page.loader.cancel)

    def params(self) -> MergeParams:
        source, target = self.pick_page.source_target()
        return MergeParams(tuple(n.path for n in self.chain), source, target,
                           self.search_paths)

    def freed(self) -> int | None:
        """Host bytes the merge gives back (the deleted files, less what moves)."""
        moved = self.review_page.moved
        if moved is None:
            return None
        params = self.params()
        deleted = sum(self.chain[i].info.allocated_size for i in params.deleted
                      if self.chain[i].info is not None)
        return deleted - moved

    def summary(self) -> str:
        params = self.params()
        target = self.chain[params.target]
        lines = [f"{self.chain[i].name} is deleted" for i in params.deleted]
        lines.append(f"{target.name} receives their data and stays")
        if params.source > params.target and params.source + 1 < len(self.chain):
            lines.append(f"{self.chain[params.source + 1].name} is re-linked to "
                         f"{target.name}")
        moved, freed = self.review_page.moved, self.freed()
        if moved is None:
            lines.append("Data to move: measuring…")
        else:
            lines.append(f"Data to move: {human_size(moved)} ({exact_bytes(moved)})")
        if freed is not None:
            lines.append(f"Space freed: about {human_size(freed)}" if freed >= 0 else
                         f"Extra space used: about {human_size(-freed)}")
        lines.append("Chain afterwards: " + " → ".join(os.path.basename(p)
                                                       for p in params.survivors))
        return "\n".join(lines)

    def command(self) -> str:
        return self.params().command()
