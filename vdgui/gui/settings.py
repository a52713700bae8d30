"""Per-user settings of the desktop application (QSettings in an INI file).

Window geometry and state (docks included), recent files, the last folder used,
the library filter.  The file lives in
the user configuration directory (``platformdirs.user_config_dir("vdgui")``, or
under ``$VDGUI_HOME``, see :func:`vdgui.library.app_dir`); tests pass their own path.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from ..library import app_dir

MAX_RECENT = 10


def default_settings_path() -> Path:
    return app_dir("config") / "vdgui.ini"


def log_dir() -> Path:
    return app_dir("log")


class Settings:
    """Typed access to the application's QSettings."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_settings_path()
        self._qs = QSettings(str(self.path), QSettings.Format.IniFormat)

    def sync(self) -> None:
        self._qs.sync()

    # -- window

    def _bytes(self, key: str) -> QByteArray | None:
        value = self._qs.value(key)
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    @property
    def window_geometry(self) -> QByteArray | None:
        return self._bytes("window/geometry")

    @window_geometry.setter
    def window_geometry(self, value: QByteArray) -> None:
        self._qs.setValue("window/geometry", value)

    @property
    def window_state(self) -> QByteArray | None:
        return self._bytes("window/state")

    @window_state.setter
    def window_state(self, value: QByteArray) -> None:
        self._qs.setValue("window/state", value)

    @property
    def splitter_state(self) -> QByteArray | None:
        return self._bytes("window/splitter")

    @splitter_state.setter
    def splitter_state(self, value: QByteArray) -> None:
        self._qs.setValue("window/splitter", value)

    @property
    def filter_text(self) -> str:
        value = self._qs.value("window/filter", "")
        return str(value) if value else ""

    @filter_text.setter
    def filter_text(self, text: str) -> None:
        self._qs.setValue("window/filter", text)

    # -- files

    @property
    def recent_files(self) -> list[str]:
        value = self._qs.value("files/recent", [])
        # An INI file gives a single string for a one-element list.
        if isinstance(value, str):
            value = [value] if value else []
        return [str(p) for p in value or []][:MAX_RECENT]

    def add_recent_file(self, path: str) -> None:
        path = os.path.abspath(path)
        recent = [path] + [p for p in self.recent_files if p != path]
        self._qs.setValue("files/recent", recent[:MAX_RECENT])

    def clear_recent_files(self) -> None:
        self._qs.setValue("files/recent", [])

    @property
    def last_folder(self) -> str:
        folder = self._qs.value("files/last_folder", "")
        return str(folder) if folder and os.path.isdir(str(folder)) else str(Path.home())

    @last_folder.setter
    def last_folder(self, folder: str) -> None:
        self._qs.setValue("files/last_folder", folder)
