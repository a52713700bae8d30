"""A format's creation options (``-o KEY=VALUE``), from its ``BackendInfo.config_keys``.

Only keys a new image can use are offered (``CREATE_ONLY``); the ones VirtualBox
marks for experts sit in a group that is closed until asked for.  An empty field
means "the format's default", which the placeholder shows.  Integer options take
sizes ("64K"); the backend checks the value itself when the image is created.
"""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QFormLayout, QLineEdit, QVBoxLayout, QWidget

from ...engine import BackendInfo, ConfigKey, parse_size
from ...engine.types import ConfigKeyFlags, ConfigValueType
from ..formatting import human_size

#: Keys that describe a host disk for the raw-disk variant, which only the command
#: line offers.
RAW_DISK_KEYS = frozenset({"rawdrive", "rawdisk", "partitions", "bootsector", "relative"})


def offered_keys(info: BackendInfo) -> list[ConfigKey]:
    """The creation options a wizard offers for ``info``'s format."""
    return [key for key in info.config_keys
            if key.flags & ConfigKeyFlags.CREATE_ONLY
            and key.value_type != ConfigValueType.BYTES
            and key.name.lower() not in RAW_DISK_KEYS]


def _placeholder(key: ConfigKey) -> str:
    if key.default is None:
        return "the format chooses"
    if key.value_type == ConfigValueType.INTEGER:
        try:
            value = parse_size(key.default)
        except ValueError:
            return f"default: {key.default}"
        if value >= 1024:
            return f"default: {key.default} ({human_size(value)})"
    return f"default: {key.default}"


class OptionsEdit(QWidget):
    """Editors for the creation options of one format."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.fields: dict[str, QLineEdit] = {}
        self._keys: dict[str, ConfigKey] = {}
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.expert_toggle = QCheckBox("Show e&xpert options", self)
        self.expert_toggle.setToolTip("Options that change the file's internal layout; the "
                                      "defaults suit almost every use")
        self.expert_toggle.setAccessibleName("Show expert options")
        self.common = QWidget(self)
        self.expert = QWidget(self)
        self._layout.addWidget(self.common)
        self._layout.addWidget(self.expert_toggle)
        self._layout.addWidget(self.expert)
        self.expert_toggle.toggled.connect(self.expert.setVisible)
        self.set_backend(None)

    def set_backend(self, info: BackendInfo | None) -> None:
        for box in (self.common, self.expert):
            for child in box.findChildren(QWidget):
                child.deleteLater()
            if box.layout() is not None:
                QWidget().setLayout(box.layout())  # drop the old layout
        self.fields, self._keys = {}, {}
        forms = {False: QFormLayout(self.common), True: QFormLayout(self.expert)}
        keys = offered_keys(info) if info is not None else []
        for key in keys:
            expert = bool(key.flags & ConfigKeyFlags.EXPERT)
            field = QLineEdit(self.common if not expert else self.expert)
            field.setPlaceholderText(_placeholder(key))
            field.setAccessibleName(key.name)
            kind = "a size or a number" if key.value_type == ConfigValueType.INTEGER else "text"
            field.setToolTip(f"{info.name if info else ''} creation option {key.name} "
                             f"({kind}); leave empty for the default")
            forms[expert].addRow(f"{key.name}:", field)
            self.fields[key.name] = field
            self._keys[key.name] = key
        has_expert = any(k.flags & ConfigKeyFlags.EXPERT for k in keys)
        self.common.setVisible(any(not k.flags & ConfigKeyFlags.EXPERT for k in keys))
        self.expert_toggle.setVisible(has_expert)
        self.expert.setVisible(has_expert and self.expert_toggle.isChecked())

    def config(self) -> tuple[tuple[str, str], ...]:
        """The options given (empty fields left out)."""
        return tuple((name, field.text().strip()) for name, field in self.fields.items()
                     if field.text().strip())

    def problem(self) -> str:
        """Why a value is refused ("" when all are acceptable)."""
        for name, value in self.config():
            if self._keys[name].value_type == ConfigValueType.INTEGER:
                try:
                    parse_size(value)
                except ValueError:
                    return f"{name} must be a number or a size such as 64K (not “{value}”)."
        return ""
