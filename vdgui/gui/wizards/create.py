"""The "New image" and "New differencing image" wizards.

Pages: format; storage and options (the variant, and the format's creation
options from its ``BackendInfo.config_keys``; skipped when the format offers no
choice); size and geometry (base images only: the geometry the format stores,
defaulted and editable); location; then comment with a summary and the
equivalent ``vdimg`` command.  Every page validates its input before Next;
nothing is created until Finish, after which the caller reads
:meth:`NewImageWizard.params` and runs :func:`vdgui.gui.edits.create_image` on a
worker thread.

The format, variant and location pages are shared with the copy wizard.
"""

from __future__ import annotations

import enum
import os
from typing import Sequence

from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QGroupBox, QLabel,
                               QPlainTextEdit, QRadioButton, QVBoxLayout, QWidget, QWizardPage)

from ...engine import (BackendInfo, Capability, Geometry, ImageFlags, backends, parse_variant,
                       variant_names)
from ...engine.errors import InvalidParameter
from ...engine.types import default_pchs
from ...library import Node
from ..edits import CreateParams, validate_geometry
from ..formatting import exact_size, human_size, variant_words
from ..panels.geometry import GeometryEditor
from ..widgets.options_edit import OptionsEdit, offered_keys
from ..widgets.path_edit import PathEdit, PathMode
from ..widgets.size_edit import SizeEdit
from .common import SummaryPage, Wizard, declares, error_label

DEFAULT_SIZE = 16 << 30
MIN_SIZE = 1 << 20
MAX_SIZE = 64 << 40

#: The largest virtual size of a format with its default options, where it is below
#: :data:`MAX_SIZE` or worth saying (the engine checks the exact limit, which some
#: creation options change, when the image is created).

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


def max_size(info: BackendInfo) -> int:
    return min(MAX_SIZE, info.max_size or MAX_SIZE)


def extensions(info: BackendInfo) -> list[str]:
    return [ext for ext, _ in info.extensions]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


class FormatPage(QWizardPage):
    def __init__(self, choices: Sequence[BackendInfo], parent: QWidget | None = None,
                 subtitle: str = "") -> None:
        super().__init__(parent)
        self.setTitle("Image format")
        self.setSubTitle(subtitle or "Choose the file format of the new image. VDI is "
                         "VirtualBox's own; choose another to use the image with other "
                         "programs.")
        self.choices = list(choices)
        self.group = QButtonGroup(self)
        layout = QVBoxLayout(self)
        for i, info in enumerate(self.choices):
            button = QRadioButton(f"{info.name} ({info.description})", self)
            button.setAccessibleName(info.name)
            tip = "Variants: " + variant_words(info.variants)
            if info.max_size:
                tip += f"; at most {exact_size(info.max_size)}"
            button.setToolTip(tip)
            self.group.addButton(button, i)
            layout.addWidget(button)
        if self.choices:
            self.group.button(0).setChecked(True)
        else:
            layout.addWidget(QLabel("No available format can create such images.", self))
        layout.addStretch(1)
        self.group.idToggled.connect(lambda *_: self.completeChanged.emit())

    def backend(self) -> BackendInfo | None:
        i = self.group.checkedId()
        return self.choices[i] if i >= 0 else None

    def select(self, name: str) -> None:
        for i, info in enumerate(self.choices):
            if info.name.lower() == name.lower() and self.group.button(i).isEnabled():
                self.group.button(i).setChecked(True)

    def set_refusals(self, refusals: dict[str, str]) -> None:
        """Disable the formats named in ``refusals`` (the value says why)."""
        for i, info in enumerate(self.choices):
            button = self.group.button(i)
            why = refusals.get(info.name, "")
            button.setEnabled(not why)
            tip = "Variants: " + variant_words(info.variants)
            button.setToolTip(f"{tip}. {why}" if why else tip)
        checked = self.group.checkedButton()
        if checked is None or not checked.isEnabled():
            enabled = [b for b in self.group.buttons() if b.isEnabled()]
            if enabled:
                enabled[0].setChecked(True)
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        info = self.backend()
        return info is not None and self.group.checkedButton().isEnabled()


class VariantPage(QWizardPage):
    """How space is allocated, the format's other variants, and its creation options."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Storage and options")
        self.setSubTitle("A dynamically allocated image grows as data is written; a "
                         "fixed-size image takes all its space at once and can be faster.")
        self.variants = QWidget(self)
        self._variants_layout = QVBoxLayout(self.variants)
        self._variants_layout.setContentsMargins(0, 0, 0, 0)
        self.allocation = QButtonGroup(self)
        self.options: dict[str, QCheckBox] = {}
        self.format_options = OptionsEdit(self)
        self.options_box = QGroupBox("Format options", self)
        self.options_box.setToolTip("Leave a field empty to use the format's default")
        box_layout = QVBoxLayout(self.options_box)
        box_layout.addWidget(self.format_options)
        self.error = error_label(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.variants)
        layout.addWidget(self.options_box)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self._backend: BackendInfo | None = None

    @staticmethod
    def choices(info: BackendInfo) -> tuple[list[str], list[str]]:
        allocation = [v for v in _ALLOCATION if v in info.variants]
        options = [v for v in info.variants if v not in _ALLOCATION + _NOT_OFFERED]
        return allocation, options

    @classmethod
    def needed(cls, info: BackendInfo) -> bool:
        allocation, options = cls.choices(info)
        return len(allocation) > 1 or bool(options) or bool(offered_keys(info))

    def set_backend(self, info: BackendInfo) -> None:
        if info == self._backend:
            return
        self._backend = info
        while self._variants_layout.count():
            widget = self._variants_layout.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        for button in self.allocation.buttons():
            self.allocation.removeButton(button)
        self.options = {}
        allocation, options = self.choices(info)
        for variant in allocation:
            button = QRadioButton(_sentence(variant_words([variant])), self.variants)
            button.setProperty("variant", variant)
            button.setAccessibleName(variant)
            self.allocation.addButton(button)
            self._variants_layout.addWidget(button)
        if self.allocation.buttons():
            self.allocation.buttons()[0].setChecked(True)
        for variant in options:
            box = QCheckBox(_sentence(variant_words([variant])), self.variants)
            box.setAccessibleName(variant)
            self.options[variant] = box
            self._variants_layout.addWidget(box)
        self.format_options.set_backend(info)
        self.options_box.setVisible(bool(offered_keys(info)))
        self.options_box.setTitle(f"{info.name} options")

    def image_flags(self) -> ImageFlags:
        names = [b.property("variant") for b in self.allocation.buttons() if b.isChecked()]
        names += [name for name, box in self.options.items() if box.isChecked()]
        return parse_variant(",".join(names))

    def config(self) -> tuple[tuple[str, str], ...]:
        return self.format_options.config()

    def validatePage(self) -> bool:
        problem = self.format_options.problem()
        self.error.setText(problem)
        return not problem


class SizePage(QWizardPage):
    """The virtual size, and the geometry where the format stores one."""

    def __init__(self, parent: QWidget | None = None, minimum: int = MIN_SIZE,
                 default: int = DEFAULT_SIZE, geometry: bool = True) -> None:
        super().__init__(parent)
        self.setTitle("Size")
        self.setSubTitle("The size of the virtual disk as the virtual machine sees it. "
                         "A dynamically allocated image starts small whatever you choose.")
        self.size_edit = SizeEdit(self, minimum, MAX_SIZE, default)
        self.limit = QLabel(self)
        self.limit.setWordWrap(True)
        self.limit.setAccessibleName("Size limit")
        self.geometry_box = QGroupBox("Geometry", self)
        self.geometry_box.setToolTip("Cylinders, heads and sectors: only old operating "
                                     "systems and BIOSes use them")
        self.pchs = GeometryEditor("Physical geometry (PCHS)", "Physical geometry",
                                   self.geometry_box)
        self.lchs = GeometryEditor("Logical geometry (LCHS)", "Logical geometry",
                                   self.geometry_box)
        self.geometry_hint = QLabel(self.geometry_box)
        self.geometry_hint.setWordWrap(True)
        hint = self.geometry_hint
        geometry_layout = QVBoxLayout(self.geometry_box)
        geometry_layout.addWidget(self.pchs)
        geometry_layout.addWidget(self.lchs)
        geometry_layout.addWidget(hint)
        self.error = error_label(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.size_edit)
        layout.addWidget(self.limit)
        layout.addWidget(self.geometry_box)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self._offer_geometry = geometry
        self._pchs_edited = False
        self._filling = False
        self._backend: BackendInfo | None = None
        for widget in (self.geometry_box, self.pchs, self.lchs):
            widget.hide()
        self.size_edit.valueChanged.connect(self._on_size)
        for spin in self.pchs.spins.values():
            spin.valueChanged.connect(self._on_pchs_edited)

    def set_backend(self, info: BackendInfo) -> None:
        self._backend = info
        limit = max_size(info)
        self.size_edit.setRange(self.size_edit.minimum(), limit)
        self.limit.setText(f"A {info.name} image holds at most {exact_size(limit)}."
                           if info.max_size else "")
        pchs = self._offer_geometry and bool(declares(info, "pchs"))
        lchs = self._offer_geometry and bool(declares(info, "lchs"))
        self.pchs.setVisible(pchs)
        self.lchs.setVisible(lchs)
        self.geometry_box.setVisible(pchs or lchs)
        hints = (["The physical geometry is the one VirtualBox derives from the size."]
                 if pchs else [])
        hints += ["A logical geometry of 0 / 0 / 0 lets the BIOS choose."] if lchs else []
        self.geometry_hint.setText(" ".join(hints))
        self._on_size(self.size_edit.value())

    def _on_size(self, size: int | None) -> None:
        if size is not None and not self._pchs_edited:
            self._filling = True
            self.pchs.set_geometry(default_pchs(size))
            self._filling = False
        self.completeChanged.emit()

    def _on_pchs_edited(self) -> None:
        if not self._filling:
            self._pchs_edited = True

    def geometries(self) -> tuple[Geometry | None, Geometry | None]:
        """``(pchs, lchs)`` to store; None where the format stores none or, for the
        logical one, where it is left "not set"."""
        pchs = self.pchs.geometry() if not self.pchs.isHidden() else None
        lchs = self.lchs.geometry() if not self.lchs.isHidden() else None
        return pchs, (lchs if lchs is not None and lchs.is_set else None)

    def isComplete(self) -> bool:
        return self.size_edit.isValid()

    def validatePage(self) -> bool:
        pchs, lchs = self.geometries()
        try:
            for geometry, physical in ((pchs, True), (lchs, False)):
                if geometry is not None:
                    validate_geometry(geometry, physical)
        except InvalidParameter as exc:
            self.error.setText(_sentence(exc.message) + ".")
            return False
        self.error.clear()
        return True


class LocationPage(QWizardPage):
    def __init__(self, folder: str, stem: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Location")
        self.setSubTitle("Where to save the new image file.")
        self.folder = folder
        self.stem = stem
        self.path_edit = PathEdit(self, PathMode.SAVE, "Save the new image as")
        self.path_edit.setAccessibleName("Image file")
        self.error = error_label(self)
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
        ext = extensions(info)[0]
        exts = ";;".join(f"{info.name} image (*.{e})" for e in extensions(info))
        self.path_edit.file_filter = exts
        path = self.path_edit.path()
        if not path:
            self.path_edit.setPath(self._unique_default(ext))
            return
        root, current = os.path.splitext(path)
        known = {e for b in backends() for e in extensions(b)}
        if current.lstrip(".").lower() in known and current.lstrip(".").lower() \
                not in extensions(info):
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
            path = f"{path}.{extensions(info)[0]}"
            self.path_edit.setPath(path)
        elif ext not in extensions(info):
            wanted = " or ".join(f".{e}" for e in extensions(info))
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


class CreateSummaryPage(SummaryPage):
    """The summary, with the image's comment to fill in first."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Comment and summary",
                         "Optionally describe the image, check the summary, then create it.",
                         parent)
        self.comment = QPlainTextEdit(self)
        self.comment.setAccessibleName("Comment")
        self.comment.setPlaceholderText("Optional comment stored in the image")
        self.comment.setTabChangesFocus(True)
        self.comment.setMaximumHeight(80)
        self.form.insertRow(0, "&Comment:", self.comment)
        self.comment.textChanged.connect(self.refresh)

    def initializePage(self) -> None:
        wizard = self.wizard()
        info = wizard.format_page.backend() if isinstance(wizard, NewImageWizard) else None
        stored = declares(info, "comment") if info is not None else None
        self.comment.setEnabled(stored is not False)
        self.comment.setToolTip("" if stored is not False else
                                f"The {info.name if info else ''} format stores no comment")
        if stored is False:
            self.comment.clear()
        super().initializePage()


class NewImageWizard(Wizard):
    """Collects :class:`~vdgui.gui.edits.CreateParams` for a base or differencing image.

    ``parent_image`` given: a differencing image on top of it (no size or variant
    pages; the format list holds the formats that can make differencing images).
    """

    def __init__(self, parent: QWidget | None = None, parent_image: Node | None = None,
                 folder: str = "", search_paths: Sequence[str] = ()) -> None:
        differencing = parent_image is not None
        super().__init__("New differencing image" if differencing else "New image",
                         "new-diff" if differencing else "new-image", parent)
        self.parent_image = parent_image
        self.search_paths = tuple(search_paths)
        if parent_image is not None:
            folder = os.path.dirname(parent_image.path)
            stem = os.path.splitext(parent_image.name)[0] + "-diff"
        else:
            stem = "NewVirtualDisk"
        self.format_page = FormatPage(creatable_backends(differencing), self)
        self.variant_page = VariantPage(self)
        self.size_page = SizePage(self)
        self.location_page = LocationPage(folder or os.path.expanduser("~"), stem, self)
        self.summary_page = CreateSummaryPage(self)
        self.setPage(PageId.FORMAT, self.format_page)
        self.setPage(PageId.VARIANT, self.variant_page)
        self.setPage(PageId.SIZE, self.size_page)
        self.setPage(PageId.LOCATION, self.location_page)
        self.setPage(PageId.SUMMARY, self.summary_page)
        if parent_image is not None and parent_image.info is not None:
            self.format_page.select(parent_image.info.backend)
        self.currentIdChanged.connect(self._entering)

    def _entering(self, page_id: int) -> None:
        info = self.format_page.backend()
        if info is None:
            return
        if page_id == PageId.VARIANT:
            self.variant_page.set_backend(info)
        elif page_id == PageId.SIZE:
            self.size_page.set_backend(info)
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
        base = self.parent_image is None
        pchs, lchs = self.size_page.geometries() if base else (None, None)
        config = self.variant_page.config() if base and info and VariantPage.needed(info) \
            else ()
        return CreateParams(
            path=self.location_page.path(),
            backend=info.name if info else "",
            image_flags=self.image_flags(),
            size=self.size_page.size_edit.value() if base else None,
            comment=self.summary_page.comment.toPlainText(),
            parent=None if base else self.parent_image.path,  # type: ignore[union-attr]
            config=config, pchs=pchs, lchs=lchs,
            search_paths=() if base else self.search_paths)

    def summary(self) -> str:
        params = self.params()
        lines = [f"Format: {params.backend}", f"File: {params.path}"]
        if params.parent is not None:
            lines.insert(0, f"Differencing image of: {params.parent}")
        else:
            lines.append(f"Storage: {variant_words(variant_names(params.image_flags))}")
            if params.size is not None:
                lines.append(f"Size: {human_size(params.size)}")
            for name, geometry in (("Physical geometry", params.pchs),
                                   ("Logical geometry", params.lchs)):
                if geometry is not None:
                    lines.append(f"{name}: {geometry}")
            if params.config:
                lines.append("Options: " + ", ".join(f"{k}={v}" for k, v in params.config))
        return "\n".join(lines)

    def command(self) -> str:
        return self.params().command()
