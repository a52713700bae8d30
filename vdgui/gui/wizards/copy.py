"""The "Copy or convert" wizard.

Pages: source (flatten the chain into one standalone image, or clone the whole
chain image by image; the chain is read first: how much data it holds, where the
last data lies), target format, storage and options, size (flatten only: no
smaller than the last data), location (a file, or a folder for a clone), and the
summary with the equivalent ``vdimg`` command.  Nothing is written until Finish;
then the caller runs :func:`vdgui.gui.operations.copy_image` with
:meth:`CopyWizard.params`.
"""

from __future__ import annotations

import enum
import os
from typing import Sequence

from PySide6.QtWidgets import (QButtonGroup, QLabel, QRadioButton, QVBoxLayout, QWidget,
                               QWizardPage)

from ...engine import Capability, ImageFlags, backend_info, parse_variant, variant_names
from ...library import Node
from ..formatting import exact_bytes, human_size, variant_words
from ..jobs import JobRunner
from ..operations import CopyParams, SourceFacts, source_facts
from ..widgets.path_edit import PathEdit, PathMode
from .common import JobLoader, SummaryPage, Wizard, error_label
from .create import (MIN_SIZE, FormatPage, LocationPage, SizePage, VariantPage,
                     creatable_backends, extensions)

SECTOR = 512


class PageId(enum.IntEnum):
    SOURCE = 0
    FORMAT = 1
    VARIANT = 2
    SIZE = 3
    LOCATION = 4
    FOLDER = 5
    SUMMARY = 6


def chain_of(node: Node) -> list[Node]:
    """The image and its ancestors, base first."""
    return [*node.ancestors(), node]


class SourcePage(QWizardPage):
    """What to copy: the chain is read, and the person chooses flatten or clone."""

    def __init__(self, node: Node, runner: JobRunner, search_paths: Sequence[str],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.node = node
        self.chain = chain_of(node)
        self.setTitle("What to copy")
        self.setSubTitle(f"Copy {node.name} into a new image, in any format.")
        chain_words = " on ".join(n.name for n in reversed(self.chain))
        self.chain_label = QLabel(f"Chain: {chain_words}", self)
        self.chain_label.setWordWrap(True)
        self.chain_label.setAccessibleName("Source chain")
        self.group = QButtonGroup(self)
        self.flatten = QRadioButton("&Flatten: one standalone image with the content the "
                                    "chain shows", self)
        self.flatten.setToolTip("vdimg convert: the copy needs no parent")
        self.clone = QRadioButton("C&lone the whole chain: copy every image, keeping the "
                                  "base and the differencing images", self)
        self.clone.setToolTip("Each image is copied on top of the copy of its parent, so "
                              "the new chain has the same structure (with new UUIDs)")
        for i, button in enumerate((self.flatten, self.clone)):
            self.group.addButton(button, i)
        self.flatten.setChecked(True)
        self.loader = JobLoader(runner, self)
        self.facts_label = QLabel(self)
        self.facts_label.setWordWrap(True)
        self.facts_label.setAccessibleName("Source facts")
        layout = QVBoxLayout(self)
        layout.addWidget(self.chain_label)
        layout.addWidget(self.flatten)
        layout.addWidget(self.clone)
        layout.addWidget(self.facts_label)
        layout.addWidget(self.loader)
        layout.addStretch(1)
        self.facts: SourceFacts | None = None
        self.clone.setEnabled(False)
        self.loader.loaded.connect(self._on_facts)
        self.loader.failed.connect(lambda _: self.completeChanged.emit())
        self.group.idToggled.connect(lambda *_: self.completeChanged.emit())
        path = node.path
        paths = tuple(search_paths)
        self.loader.start(f"Reading {node.name}",
                          lambda progress: source_facts(path, progress, paths),
                          [n.path for n in self.chain])

    def _on_facts(self, facts: SourceFacts) -> None:
        self.facts = facts
        self.facts_label.setText(
            f"The chain holds {human_size(facts.held)} of data in a virtual disk of "
            f"{human_size(facts.size)}.")
        self.facts_label.setToolTip(f"{exact_bytes(facts.held)} of {exact_bytes(facts.size)}")
        if len(self.chain) < 2:
            self.clone.setToolTip("This image has no parent: there is no chain to clone")
        elif len(set(facts.sizes)) > 1:
            self.clone.setToolTip("The images of this chain have different sizes (one was "
                                  "resized): only a flattened copy is possible")
        else:
            self.clone.setEnabled(True)
        self.completeChanged.emit()

    @property
    def cloning(self) -> bool:
        return self.clone.isChecked()

    def isComplete(self) -> bool:
        return self.facts is not None


class FolderPage(QWizardPage):
    """Where a cloned chain goes: a folder, with the images' names kept."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Location")
        self.setSubTitle("The folder for the copies; each image keeps its name (with the "
                         "new format's extension).")
        self.path_edit = PathEdit(self, PathMode.FOLDER, "Choose the folder for the copies")
        self.path_edit.setAccessibleName("Folder")
        self.files = QLabel(self)
        self.files.setWordWrap(True)
        self.files.setAccessibleName("Files to create")
        self.error = error_label(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.path_edit)
        layout.addWidget(self.files)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self.path_edit.pathChanged.connect(lambda _: self._update())

    def initializePage(self) -> None:
        self._update()

    def _update(self) -> None:
        wizard = self.wizard()
        self.error.clear()
        if isinstance(wizard, CopyWizard) and self.path_edit.path():
            names = [os.path.basename(p) for p in wizard.params().targets()]
            self.files.setText("Creates: " + ", ".join(names))
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return bool(self.path_edit.path())

    def problem(self) -> str:
        folder = os.path.abspath(self.path_edit.path())
        if not os.path.isdir(folder):
            return f"The folder {folder} does not exist."
        if not os.access(folder, os.W_OK):
            return f"You cannot write to the folder {folder}."
        wizard = self.wizard()
        assert isinstance(wizard, CopyWizard)
        taken = [os.path.basename(p) for p in wizard.params().targets() if os.path.lexists(p)]
        if taken:
            return (f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''} there; "
                    f"vdgui never overwrites a file. Choose another folder.")
        return ""

    def validatePage(self) -> bool:
        problem = self.problem()
        self.error.setText(problem)
        return not problem

    def folder(self) -> str:
        return os.path.abspath(self.path_edit.path())


class CopyWizard(Wizard):
    """Collects :class:`~vdgui.gui.operations.CopyParams` for ``node``'s chain."""

    def __init__(self, node: Node, runner: JobRunner, parent: QWidget | None = None,
                 search_paths: Sequence[str] = ()) -> None:
        super().__init__("Copy or convert", "copy", parent)
        self.node = node
        self.search_paths = tuple(search_paths)
        self.source_page = SourcePage(node, runner, search_paths, self)
        self.format_page = FormatPage(
            creatable_backends(False), self,
            "The format of the copy. Choose another format than the source's to convert it.")
        self.variant_page = VariantPage(self)
        self.size_page = SizePage(self, geometry=False)
        self.size_page.setSubTitle("The virtual size of the copy. It can grow; it can only "
                                   "shrink where the end of the source reads as zeros.")
        stem = os.path.splitext(node.name)[0] + "_copy"
        self.location_page = LocationPage(os.path.dirname(node.path), stem, self)
        self.folder_page = FolderPage(self)
        self.summary_page = SummaryPage("Summary", "Check what will be copied, then copy.",
                                        self)
        for page_id, page in ((PageId.SOURCE, self.source_page),
                              (PageId.FORMAT, self.format_page),
                              (PageId.VARIANT, self.variant_page),
                              (PageId.SIZE, self.size_page),
                              (PageId.LOCATION, self.location_page),
                              (PageId.FOLDER, self.folder_page),
                              (PageId.SUMMARY, self.summary_page)):
            self.setPage(page_id, page)
        if node.info is not None:
            self.format_page.select(node.info.backend)
        self.folder_page.path_edit.setPath(os.path.dirname(node.path))
        self._size_chosen = False
        self.currentIdChanged.connect(self._entering)
        self.rejected.connect(self.source_page.loader.cancel)

    def _entering(self, page_id: int) -> None:
        info = self.format_page.backend()
        if page_id == PageId.FORMAT:
            cloning = self.source_page.cloning
            self.format_page.set_refusals({
                b.name: "It cannot make differencing images, which a clone needs."
                for b in creatable_backends(False)
                if cloning and not b.has(Capability.DIFF)})
        elif info is None:
            return
        elif page_id == PageId.VARIANT:
            self.variant_page.set_backend(info)
        elif page_id == PageId.SIZE:
            facts = self.source_page.facts
            assert facts is not None
            edit = self.size_page.size_edit
            self.size_page.set_backend(info)
            limit = edit.maximum()
            smallest = max(-(-facts.data_end // SECTOR) * SECTOR, MIN_SIZE)
            edit.setRange(min(smallest, limit), limit)
            if not self._size_chosen:
                edit.setValue(min(facts.size, limit))
                self._size_chosen = True
        elif page_id == PageId.LOCATION:
            self.location_page.set_backend(info)

    def nextId(self) -> int:
        current = self.currentId()
        info = self.format_page.backend()
        cloning = self.source_page.cloning
        order = [PageId.SOURCE, PageId.FORMAT]
        if info is not None and VariantPage.needed(info):
            order.append(PageId.VARIANT)
        order += [PageId.FOLDER] if cloning else [PageId.SIZE, PageId.LOCATION]
        order.append(PageId.SUMMARY)
        if current in order and order.index(current) + 1 < len(order):
            return order[order.index(current) + 1]
        return -1

    # -- result

    def image_flags(self) -> ImageFlags:
        info = self.format_page.backend()
        if info is None:
            return ImageFlags.NONE
        if VariantPage.needed(info):
            self.variant_page.set_backend(info)
            return self.variant_page.image_flags()
        allocation, _ = VariantPage.choices(info)
        return parse_variant(",".join(allocation[:1]))

    def params(self) -> CopyParams:
        info = self.format_page.backend()
        cloning = self.source_page.cloning
        facts = self.source_page.facts
        size = None if cloning else self.size_page.size_edit.value()
        if facts is not None and size == facts.size:
            size = None
        config = self.variant_page.config() if info and VariantPage.needed(info) else ()
        return CopyParams(
            source=self.node.path,
            target=self.folder_page.folder() if cloning else self.location_page.path(),
            backend=info.name if info else "", image_flags=self.image_flags(), size=size,
            config=config, clone=cloning,
            chain=tuple(n.path for n in chain_of(self.node)),
            extension=extensions(info)[0] if info else "",
            search_paths=self.search_paths)

    def summary(self) -> str:
        params = self.params()
        facts = self.source_page.facts
        info = backend_info(params.backend)
        lines = [f"From: {params.source}"]
        if params.clone:
            lines.append(f"Clone of the chain of {len(params.chain)} images into "
                         f"{params.target}:")
            lines += [f"  {os.path.basename(p)}" for p in params.targets()]
        else:
            lines.append(f"To: {params.target} (standalone)")
        lines.append(f"Format: {info.name}, "
                     f"{variant_words(variant_names(params.image_flags))}")
        if params.config:
            lines.append("Options: " + ", ".join(f"{k}={v}" for k, v in params.config))
        if facts is not None:
            size = params.size or facts.size
            if params.size is not None:
                lines.append(f"New size: {human_size(size)} (the source is "
                             f"{human_size(facts.size)})")
            needed = size if params.image_flags & ImageFlags.FIXED else facts.held
            lines.append(f"Space needed: about {human_size(needed)}")
        lines.append("The source is only read; the copies get new UUIDs.")
        return "\n".join(lines)

    def command(self) -> str:
        return self.params().command()
