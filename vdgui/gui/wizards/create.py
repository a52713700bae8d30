"""The "New image" and "New differencing image" wizards.

Pages: format, variant (skipped when the format allows one), size (base images
only), location, then comment with a summary and the equivalent ``vdimg``
command.  Every page validates its input before Next; nothing is created until
Finish, after which the caller reads :meth:`NewImageWizard.params` and runs
:func:`vdgui.gui.edits.create_image` on a worker thread.
"""

from __future__ import annotations

import enum
import os
from typing import Sequence

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QRadioButton, QToolButton,
                               QVBoxLayout, QWidget, QWizard, QWizardPage)

from ...engine import (BackendInfo, Capability, ImageFlags, backends, parse_variant,
                       variant_names)
from ...library import Node
from .. import icons
from ..edits import CreateParams
from ..formatting import human_size, variant_words
from ..widgets.path_edit import PathEdit, PathMode
from ..widgets.size_edit import SizeEdit

DEFAULT_SIZE = 16 << 30
MIN_SIZE = 1 << 20
MAX_SIZE = 64 << 40

#: Variants chosen with a radio button (how space is allocated); the others are
#: independent options (check boxes).
_ALLOCATION = ("standard", "fixed")
_NOT_OFFERED = ("rawdisk",)  # needs a host disk, not a file: CLI only


class PageId(enum.IntEnum):
    FORMAT = 0
    VARIANT = 1
    SIZE = 2
    LOCATION = 3
    SUMMARY = 4


def creatable_backends(differencing: bool) -> list[BackendInfo]:
    """Backends that can create files (base, or differencing images).

    VDI first (VirtualBox's own), then the other preferred formats, then the rest.
    """
    wanted = Capability.CREATE_FIXED | Capability.CREATE_DYNAMIC
    out = [info for info in backends()
           if info.capabilities & wanted and info.has(Capability.FILE)
           and (not differencing or info.has(Capability.DIFF))]
    return sorted(out, key=lambda i: (i.name != "VDI", not i.has(Capability.PREFERRED),
                                      i.name))


def _extensions(info: BackendInfo) -> list[str]:
    return [ext for ext, _ in info.extensions]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _error_label(parent: QWidget) -> QLabel:
    label = QLabel(parent)
    label.setWordWrap(True)
    label.setAccessibleName("Problem")
    return label


class FormatPage(QWizardPage):
    def __init__(self, choices: Sequence[BackendInfo], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Image format")
        self.setSubTitle("Choose the file format of the new image. VDI is VirtualBox's "
                         "own; choose another to use the image with other programs.")
        self.choices = list(choices)
        self.group = QButtonGroup(self)
        layout = QVBoxLayout(self)
        for i, info in enumerate(self.choices):
            button = QRadioButton(f"{info.name} ({info.description})", self)
            button.setAccessibleName(info.name)
            button.setToolTip("Variants: " + variant_words(info.variants))
            self.group.addButton(button, i)
            layout.addWidget(button)
        if self.choices:
            self.group.button(0).setChecked(True)
        else:
            layout.addWidget(QLabel("No available format can create such images.", self))
        self.group.idToggled.connect(lambda *_: self.completeChanged.emit())

    def backend(self) -> BackendInfo | None:
        i = self.group.checkedId()
        return self.choices[i] if i >= 0 else None

    def select(self, name: str) -> None:
        for i, info in enumerate(self.choices):
            if info.name.lower() == name.lower():
                self.group.button(i).setChecked(True)

    def isComplete(self) -> bool:
        return self.backend() is not None


class VariantPage(QWizardPage):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Storage")
        self.setSubTitle("A dynamically allocated image grows as data is written; a "
                         "fixed-size image takes all its space at once and can be faster.")
        self._layout = QVBoxLayout(self)
        self.allocation = QButtonGroup(self)
        self.options: dict[str, QCheckBox] = {}
        self._backend: BackendInfo | None = None

    @staticmethod
    def choices(info: BackendInfo) -> tuple[list[str], list[str]]:
        allocation = [v for v in _ALLOCATION if v in info.variants]
        options = [v for v in info.variants if v not in _ALLOCATION + _NOT_OFFERED]
        return allocation, options

    @classmethod
    def needed(cls, info: BackendInfo) -> bool:
        allocation, options = cls.choices(info)
        return len(allocation) > 1 or bool(options)

    def set_backend(self, info: BackendInfo) -> None:
        if info == self._backend:
            return
        self._backend = info
        while self._layout.count():
            widget = self._layout.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        for button in self.allocation.buttons():
            self.allocation.removeButton(button)
        self.options = {}
        allocation, options = self.choices(info)
        for variant in allocation:
            button = QRadioButton(_sentence(variant_words([variant])), self)
            button.setProperty("variant", variant)
            button.setAccessibleName(variant)
            self.allocation.addButton(button)
            self._layout.addWidget(button)
        if self.allocation.buttons():
            self.allocation.buttons()[0].setChecked(True)
        for variant in options:
            box = QCheckBox(_sentence(variant_words([variant])), self)
            box.setAccessibleName(variant)
            self.options[variant] = box
            self._layout.addWidget(box)
        self._layout.addStretch(1)

    def image_flags(self) -> ImageFlags:
        names = [b.property("variant") for b in self.allocation.buttons() if b.isChecked()]
        names += [name for name, box in self.options.items() if box.isChecked()]
        return parse_variant(",".join(names))


class SizePage(QWizardPage):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Size")
        self.setSubTitle("The size of the virtual disk as the virtual machine sees it. "
                         "A dynamically allocated image starts small whatever you choose.")
        self.size_edit = SizeEdit(self, MIN_SIZE, MAX_SIZE, DEFAULT_SIZE)
        layout = QVBoxLayout(self)
        layout.addWidget(self.size_edit)
        layout.addStretch(1)
        self.size_edit.valueChanged.connect(lambda _: self.completeChanged.emit())

    def isComplete(self) -> bool:
        return self.size_edit.isValid()


class LocationPage(QWizardPage):
    def __init__(self, folder: str, stem: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Location")
        self.setSubTitle("Where to save the new image file.")
        self.folder = folder
        self.stem = stem
        self.path_edit = PathEdit(self, PathMode.SAVE, "Save the new image as")
        self.path_edit.setAccessibleName("Image file")
        self.error = _error_label(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.path_edit)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self.path_edit.pathChanged.connect(self._on_path)
        self._backend: BackendInfo | None = None

    def _on_path(self, _: str) -> None:
        self.error.clear()
        self.completeChanged.emit()

    def set_backend(self, info: BackendInfo) -> None:
        self._backend = info
        ext = _extensions(info)[0]
        exts = ";;".join(f"{info.name} image (*.{e})" for e in _extensions(info))
        self.path_edit.file_filter = exts
        path = self.path_edit.path()
        if not path:
            self.path_edit.setPath(self._unique_default(ext))
            return
        root, current = os.path.splitext(path)
        known = {e for b in backends() for e in _extensions(b)}
        if current.lstrip(".").lower() in known and current.lstrip(".").lower() \
                not in _extensions(info):
            self.path_edit.setPath(f"{root}.{ext}")

    def _unique_default(self, ext: str) -> str:
        n = 1
        while True:
            candidate = os.path.join(self.folder, f"{self.stem}{n}.{ext}")
            if not os.path.exists(candidate):
                return candidate
            n += 1

    def isComplete(self) -> bool:
        return bool(self.path_edit.path())

    def problem(self) -> str:
        """Why the path cannot be used ("" when it can); appends a missing extension."""
        info = self._backend
        path = self.path_edit.path()
        if info is None or not path:
            return "Choose where to save the image."
        path = os.path.abspath(path)
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        if not ext:
            path = f"{path}.{_extensions(info)[0]}"
            self.path_edit.setPath(path)
        elif ext not in _extensions(info):
            wanted = " or ".join(f".{e}" for e in _extensions(info))
            return f"The file name of a {info.name} image should end in {wanted}."
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            return f"The folder {folder} does not exist."
        if not os.access(folder, os.W_OK):
            return f"You cannot write to the folder {folder}."
        if os.path.lexists(path):
            return (f"{os.path.basename(path)} already exists; vdgui never overwrites a "
                    f"file. Choose another name.")
        return ""

    def validatePage(self) -> bool:
        problem = self.problem()
        self.error.setText(problem)
        return not problem

    def path(self) -> str:
        return os.path.abspath(self.path_edit.path())


class SummaryPage(QWizardPage):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Comment and summary")
        self.setSubTitle("Optionally describe the image, check the summary, then create it.")
        self.comment = QPlainTextEdit(self)
        self.comment.setAccessibleName("Comment")
        self.comment.setPlaceholderText("Optional comment stored in the image")
        self.comment.setTabChangesFocus(True)
        self.comment.setMaximumHeight(80)
        self.summary = QLabel(self)
        self.summary.setWordWrap(True)
        self.summary.setAccessibleName("Summary")
        self.command = QLineEdit(self)
        self.command.setReadOnly(True)
        self.command.setAccessibleName("Equivalent vdimg command")
        copy = QToolButton(self)
        copy.setIcon(icons.icon("copy"))
        copy.setToolTip("Copy the command to the clipboard")
        copy.setAccessibleName("Copy the command")
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.command.text()))
        command_row = QHBoxLayout()
        command_row.addWidget(self.command, 1)
        command_row.addWidget(copy)
        form = QFormLayout(self)
        form.addRow("&Comment:", self.comment)
        form.addRow("Summary:", self.summary)
        form.addRow("Command line:", command_row)
        self.comment.textChanged.connect(self._update)

    def initializePage(self) -> None:
        self._update()

    def _update(self) -> None:
        wizard = self.wizard()
        if not isinstance(wizard, NewImageWizard):
            return
        params = wizard.params()
        lines = [f"Format: {params.backend}", f"File: {params.path}"]
        if params.parent is not None:
            lines.insert(0, f"Differencing image of: {params.parent}")
        else:
            lines.append(f"Storage: {variant_words(variant_names(params.image_flags))}")
            if params.size is not None:
                lines.append(f"Size: {human_size(params.size)}")
        self.summary.setText("\n".join(lines))
        self.command.setText(params.command())


class NewImageWizard(QWizard):
    """Collects :class:`~vdgui.gui.edits.CreateParams` for a base or differencing image.

    ``parent_image`` given: a differencing image on top of it (no size or variant
    pages; the format list holds the formats that can make differencing images).
    """

    def __init__(self, parent: QWidget | None = None, parent_image: Node | None = None,
                 folder: str = "") -> None:
        super().__init__(parent)
        self.parent_image = parent_image
        differencing = parent_image is not None
        self.setWindowTitle("New differencing image" if differencing else "New image")
        self.setAccessibleName(self.windowTitle())
        self.setWindowIcon(icons.icon("new-diff" if differencing else "new-image"))
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage)
        self.setOption(QWizard.WizardOption.HaveHelpButton, False)
        if parent_image is not None:
            folder = os.path.dirname(parent_image.path)
            stem = os.path.splitext(parent_image.name)[0] + "-diff"
        else:
            stem = "NewVirtualDisk"
        self.format_page = FormatPage(creatable_backends(differencing), self)
        self.variant_page = VariantPage(self)
        self.size_page = SizePage(self)
        self.location_page = LocationPage(folder or os.path.expanduser("~"), stem, self)
        self.summary_page = SummaryPage(self)
        self.setPage(PageId.FORMAT, self.format_page)
        self.setPage(PageId.VARIANT, self.variant_page)
        self.setPage(PageId.SIZE, self.size_page)
        self.setPage(PageId.LOCATION, self.location_page)
        self.setPage(PageId.SUMMARY, self.summary_page)
        if parent_image is not None and parent_image.info is not None:
            self.format_page.select(parent_image.info.backend)
        self.currentIdChanged.connect(self._entering)
        self.resize(640, 480)

    def _entering(self, page_id: int) -> None:
        info = self.format_page.backend()
        if info is None:
            return
        if page_id == PageId.VARIANT:
            self.variant_page.set_backend(info)
        elif page_id == PageId.LOCATION:
            self.location_page.set_backend(info)

    # -- Qt overrides ------------------------------------------------------------------

    def nextId(self) -> int:
        current = self.currentId()
        info = self.format_page.backend()
        differencing = self.parent_image is not None
        if current == PageId.FORMAT:
            if not differencing and info is not None and VariantPage.needed(info):
                return PageId.VARIANT
            return PageId.LOCATION if differencing else PageId.SIZE
        if current == PageId.VARIANT:
            return PageId.SIZE
        if current == PageId.SIZE:
            return PageId.LOCATION
        if current == PageId.LOCATION:
            return PageId.SUMMARY
        return -1

    # -- result

    def image_flags(self) -> ImageFlags:
        info = self.format_page.backend()
        if self.parent_image is not None or info is None:
            return ImageFlags.NONE
        if VariantPage.needed(info):
            self.variant_page.set_backend(info)
            return self.variant_page.image_flags()
        allocation, _ = VariantPage.choices(info)
        return parse_variant(",".join(allocation[:1]))

    def params(self) -> CreateParams:
        """What the pages say (meaningful once the wizard is accepted)."""
        info = self.format_page.backend()
        return CreateParams(
            path=self.location_page.path(),
            backend=info.name if info else "",
            image_flags=self.image_flags(),
            size=None if self.parent_image is not None else self.size_page.size_edit.value(),
            comment=self.summary_page.comment.toPlainText(),
            parent=self.parent_image.path if self.parent_image is not None else None)
