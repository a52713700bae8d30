"""The "Re-link to a parent" wizard (``vdimg rebase``).

The guided fix for a differencing image whose parent was moved or copied (parent
not found), or whose parent's UUID changed (UUID mismatch), and the way to put an
image on top of another parent.  Two ways, explained on the page:

* only rewrite the link (``--unsafe``): right when the new parent has the same
  content as the old one -- a copy, a moved file, one given a new UUID;
* keep the image's content (safe): the data that differs between the old and the
  new parent is first copied into the image.  This needs the old parent, so it is
  offered only while the image's chain opens.
"""

from __future__ import annotations

import enum
import os
from typing import Sequence

from PySide6.QtWidgets import (QButtonGroup, QLabel, QRadioButton, QVBoxLayout, QWidget,
                               QWizardPage)

from ...library import Node, path_key
from ..operations import RelinkParams
from ..widgets.path_edit import PathEdit, PathMode
from .common import SummaryPage, Wizard, error_label


class PageId(enum.IntEnum):
    PARENT = 0
    SUMMARY = 1


class ParentPage(QWizardPage):
    def __init__(self, node: Node, proposal: str | None, file_filter: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.node = node
        self.setTitle("The new parent")
        problem = node.error.message if node.error is not None else ""
        self.setSubTitle(f"Choose the image {node.name} should sit on."
                         + (f" Now: {problem[:1].upper()}{problem[1:]}." if problem else ""))
        self.path_edit = PathEdit(self, PathMode.OPEN, "Choose the parent image", file_filter)
        self.path_edit.setAccessibleName("New parent image")
        if proposal:
            self.path_edit.setPath(proposal)
        self.group = QButtonGroup(self)
        self.unsafe = QRadioButton("Only &rewrite the link: the new parent has the same "
                                   "content as the old one (a copy or a moved file)", self)
        self.safe = QRadioButton("&Keep this image's content: copy into it what differs "
                                 "between the old and the new parent", self)
        self.group.addButton(self.unsafe, 0)
        self.group.addButton(self.safe, 1)
        if node.ok:
            self.safe.setChecked(True)
        else:
            self.safe.setEnabled(False)
            self.safe.setToolTip("The old parent cannot be read, so there is nothing to "
                                 "compare with")
            self.unsafe.setChecked(True)
        self.error = error_label(self)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Parent image:", self))
        layout.addWidget(self.path_edit)
        layout.addWidget(self.unsafe)
        layout.addWidget(self.safe)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self.path_edit.pathChanged.connect(lambda _: self.completeChanged.emit())

    def isComplete(self) -> bool:
        return bool(self.path_edit.path())

    def validatePage(self) -> bool:
        path = os.path.abspath(self.path_edit.path())
        problem = ""
        if not os.path.isfile(path):
            problem = f"{path} does not exist."
        elif path_key(path) == self.node.key:
            problem = "An image cannot be its own parent."
        self.error.setText(problem)
        return not problem


class RelinkWizard(Wizard):
    """Collects :class:`~vdgui.gui.operations.RelinkParams` for ``node``."""

    def __init__(self, node: Node, parent: QWidget | None = None, proposal: str | None = None,
                 file_filter: str = "", search_paths: Sequence[str] = ()) -> None:
        super().__init__("Re-link to a parent", "relink", parent)
        self.node = node
        self.search_paths = tuple(search_paths)
        self.parent_page = ParentPage(node, proposal, file_filter, self)
        self.summary_page = SummaryPage("Summary", "Check the new link, then re-link.", self)
        self.setPage(PageId.PARENT, self.parent_page)
        self.setPage(PageId.SUMMARY, self.summary_page)

    def params(self) -> RelinkParams:
        return RelinkParams(self.node.path, os.path.abspath(self.parent_page.path_edit.path()),
                            self.parent_page.unsafe.isChecked(), self.search_paths)

    def summary(self) -> str:
        params = self.params()
        how = ("only the link is rewritten (UUIDs and path of the new parent)" if params.unsafe
               else "the data that differs is copied first, so the content stays the same")
        return f"{params.path}\nwill sit on {params.new_parent}:\n{how}."

    def command(self) -> str:
        return self.params().command()
