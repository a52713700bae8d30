"""The "Resize" wizard (``VDResize``): a size slider and an exact size, with the
allocation map showing where the data lies.

Growing is always offered (a fixed image takes the added space at once).
Shrinking is offered only as far as the engine allows: never below the last data
the image itself stores (the engine refuses to cut it off), not for fixed-size
images, and not at all where the format cannot resize.  A shrink the format still
refuses when it runs (some formats can only grow) fails with the engine's reason
and changes nothing.
"""

from __future__ import annotations

import enum
from typing import Sequence

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget, QWizardPage

from ...engine import backend_info
from ...library import Node
from ..formatting import exact_bytes, human_size
from ..jobs import JobRunner
from ..operations import ChainFacts, ResizeParams, chain_facts
from ..widgets.allocation_map import AllocationMapView
from ..widgets.size_edit import SizeEdit
from .common import JobLoader, SummaryPage, Wizard
from .create import max_size

SECTOR = 512
MIN_SIZE = 1 << 20


class PageId(enum.IntEnum):
    SIZE = 0
    SUMMARY = 1


def explain(facts: ChainFacts, node: Node, size: int | None) -> tuple[str, bool]:
    """Words on what resizing to ``size`` does, and whether it may run."""
    old = facts.map.size
    if facts.resize_refusal:
        return f"This image cannot be resized: {facts.resize_refusal}.", False
    if size is None:
        return "", False
    if size == old:
        return "That is the current size.", False
    if size > old:
        words = (f"The disk grows by {human_size(size - old)}; the new part reads as zeros. "
                 f"Partitions and file systems inside keep their size: enlarge them in the "
                 f"guest afterwards.")
        if facts.fixed:
            words += f" A fixed-size image takes the {human_size(size - old)} at once."
        return words, True
    if facts.fixed:
        return ("A fixed-size image stores the whole disk, so a smaller size would cut off "
                "its storage: the engine refuses. Copy it into a dynamically allocated image "
                "(Copy or convert), which can shrink."), False
    own_end = facts.data_end(facts.top)
    if own_end > size:
        return (f"{node.name} stores data up to {human_size(own_end)} "
                f"({exact_bytes(own_end)}), beyond the new end: the engine refuses to cut "
                f"it off. Choose at least {human_size(own_end)}, or move that data first "
                f"(inside the guest, with a partitioning tool)."), False
    words = (f"The disk shrinks by {human_size(old - size)}. Make sure no partition extends "
             f"beyond {human_size(size)}, or the guest's file systems will be damaged.")
    if facts.data_end() > size:
        words += (" Images below this one hold data beyond the new end; this disk will no "
                  "longer show it (their files are not changed).")
    return words, True


class SizePage(QWizardPage):
    def __init__(self, node: Node, runner: JobRunner, search_paths: Sequence[str],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.node = node
        assert node.info is not None
        self.setTitle("New size")
        self.setSubTitle(f"{node.name} is {human_size(node.info.size)} "
                         f"({exact_bytes(node.info.size)}). The map shows where its chain "
                         f"holds data; the shaded part is what a smaller size cuts off.")
        limit = max_size(backend_info(node.info.backend))
        self.size_edit = SizeEdit(self, MIN_SIZE, max(limit, node.info.size), node.info.size)
        self.map_view = AllocationMapView(self)
        self.map_view.setMinimumHeight(140)
        self.explanation = QLabel(self)
        self.explanation.setWordWrap(True)
        self.explanation.setAccessibleName("What the new size does")
        self.loader = JobLoader(runner, self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.size_edit)
        layout.addWidget(self.explanation)
        layout.addWidget(self.loader)
        layout.addWidget(self.map_view, 1)
        self.facts: ChainFacts | None = None
        self.size_edit.valueChanged.connect(self._update)
        self.loader.loaded.connect(self._on_facts)
        path, paths = node.path, tuple(search_paths)
        self.loader.start(f"Reading {node.name}",
                          lambda progress: chain_facts(path, progress, paths),
                          [n.path for n in (*node.ancestors(), node)])

    def _on_facts(self, facts: ChainFacts) -> None:
        self.facts = facts
        self.map_view.set_map(facts.map)
        self._update()

    def _update(self) -> None:
        size = self.size_edit.value()
        if self.facts is not None:
            self.explanation.setText(explain(self.facts, self.node, size)[0])
            self.map_view.grid.set_marker(size if size is not None and
                                          size < self.facts.map.size else None)
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self.facts is not None and explain(self.facts, self.node,
                                                  self.size_edit.value())[1]


class ResizeWizard(Wizard):
    """Collects :class:`~vdgui.gui.operations.ResizeParams` for ``node``."""

    def __init__(self, node: Node, runner: JobRunner, parent: QWidget | None = None,
                 search_paths: Sequence[str] = ()) -> None:
        super().__init__("Resize", "resize", parent)
        self.node = node
        self.search_paths = tuple(search_paths)
        self.size_page = SizePage(node, runner, search_paths, self)
        self.summary_page = SummaryPage("Summary", "Check the new size, then resize.", self)
        self.setPage(PageId.SIZE, self.size_page)
        self.setPage(PageId.SUMMARY, self.summary_page)
        self.rejected.connect(self.size_page.loader.cancel)

    def params(self) -> ResizeParams:
        assert self.node.info is not None
        size = self.size_page.size_edit.value() or self.node.info.size
        return ResizeParams(self.node.path, size, self.node.info.size, self.search_paths)

    def summary(self) -> str:
        params = self.params()
        lines = [f"Image: {params.path}",
                 f"From {human_size(params.old_size)} to {human_size(params.size)} "
                 f"({exact_bytes(params.size)})"]
        if self.size_page.facts is not None:
            lines.append(explain(self.size_page.facts, self.node, params.size)[0])
        if self.node.children:
            names = ", ".join(c.name for c in self.node.children)
            lines.append(f"The images built on it ({names}) keep their own size.")
        return "\n".join(lines)

    def command(self) -> str:
        return self.params().command()

