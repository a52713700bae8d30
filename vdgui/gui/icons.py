"""Icons: the desktop theme's first, then vdgui's bundled SVGs, then Qt's built-ins.

Theme icons follow the user's light or dark theme; the fallbacks keep the
application usable where no icon theme is installed (Windows, macOS, minimal
Linux sessions, the offscreen platform of the tests).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QStyle

APP_ID = "io.github.vdgui.vdgui"


def _find_resources() -> Path:
    """vdgui's resources folder: the package's copy, else the checkout's ``resources/``.

    A wheel (and the PyInstaller bundle, which lays the package out the same way)
    carries them as ``vdgui/resources``; a source checkout or an editable install
    has them beside the package.  The desktop entry marks the right folder, so that
    an unrelated ``resources`` folder beside an installed package is never taken.
    """
    package = Path(__file__).resolve().parents[1]
    candidates = (package / "resources", package.parent / "resources")
    for folder in candidates:
        if (folder / f"{APP_ID}.desktop").is_file():
            return folder
    return candidates[0]  # missing: icon() and app_icon() fall back to Qt's own


RESOURCES = _find_resources()
ICONS = RESOURCES / "icons"

_SP = QStyle.StandardPixmap

#: name -> (freedesktop theme name, bundled SVG under icons/actions, Qt fallback)
_ICONS: dict[str, tuple[str, str | None, QStyle.StandardPixmap]] = {
    "open": ("document-open", None, _SP.SP_DialogOpenButton),
    "new-image": ("document-new", "image-new.svg", _SP.SP_FileIcon),
    "new-diff": ("", "image-new-diff.svg", _SP.SP_FileLinkIcon),
    "remove": ("list-remove", None, _SP.SP_DialogDiscardButton),
    "refresh": ("view-refresh", None, _SP.SP_BrowserReload),
    "quit": ("application-exit", None, _SP.SP_DialogCloseButton),
    "about": ("help-about", None, _SP.SP_MessageBoxInformation),
    "copy": ("edit-copy", None, _SP.SP_FileDialogDetailedView),
    "regenerate": ("view-refresh", None, _SP.SP_BrowserReload),
    "browse": ("document-open-folder", None, _SP.SP_DirOpenIcon),
    "cancel": ("process-stop", None, _SP.SP_BrowserStop),
    "disk": ("drive-harddisk", None, _SP.SP_DriveHDIcon),
    "disk-diff": ("", "disk-diff.svg", _SP.SP_DriveHDIcon),
    "optical": ("media-optical", None, _SP.SP_DriveCDIcon),
    "floppy": ("media-floppy", None, _SP.SP_DriveFDIcon),
    "broken": ("dialog-warning", "dialog-warning.svg", _SP.SP_MessageBoxWarning),
    "merge": ("go-down", None, _SP.SP_ArrowDown),
    "resize": ("zoom-fit-best", None, _SP.SP_TitleBarMaxButton),
    "compact": ("zoom-out", None, _SP.SP_TitleBarMinButton),
    "repair": ("tools-check-spelling", None, _SP.SP_DialogApplyButton),
    "relink": ("insert-link", None, _SP.SP_FileLinkIcon),
    "delete": ("edit-delete", None, _SP.SP_TrashIcon),
    "new-uuid": ("view-refresh", None, _SP.SP_BrowserReload),
    "locate": ("edit-find", None, _SP.SP_FileDialogContentsView),
    "filter": ("edit-find", None, _SP.SP_FileDialogContentsView),
    "jobs": ("view-list-details", None, _SP.SP_FileDialogListView),
    "map": ("view-grid", None, _SP.SP_FileDialogDetailedView),
}


@cache
def icon(name: str) -> QIcon:
    """The icon called ``name`` (one of the keys of ``_ICONS``)."""
    theme, bundled, standard = _ICONS[name]
    if theme and QIcon.hasThemeIcon(theme):
        return QIcon.fromTheme(theme)
    if bundled and (ICONS / "actions" / bundled).is_file():
        return QIcon(str(ICONS / "actions" / bundled))
    style = QApplication.style()
    return style.standardIcon(standard) if style is not None else QIcon()


@cache
def app_icon() -> QIcon:
    """The application icon (theme-installed copy first, then the bundled files)."""
    if QIcon.hasThemeIcon(APP_ID):
        return QIcon.fromTheme(APP_ID)
    result = QIcon()
    hicolor = ICONS / "hicolor"
    for png in sorted(hicolor.glob(f"*/apps/{APP_ID}.png")):
        result.addFile(str(png))
    svg = hicolor / "scalable" / "apps" / f"{APP_ID}.svg"
    if svg.is_file():
        result.addFile(str(svg))
    return result
