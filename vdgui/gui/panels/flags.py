"""Flags: the image's variant flags, the flags it was opened with, the format's abilities."""

from __future__ import annotations

from PySide6.QtWidgets import QFormLayout, QWidget

from ..formatting import flag_names, flags_text
from .base import Panel, value_label

#: What each image flag means, in words.
_IMAGE_FLAG_WORDS = {
    "VMDK_SPLIT_2G": "split into 2 GB files",
    "VMDK_RAWDISK": "raw access to a host disk",
    "VMDK_STREAM_OPTIMIZED": "stream-optimized (compressed, for export)",
    "VMDK_ESX": "ESX server layout",
    "VDI_ZERO_EXPAND": "zero-expanded",
    "FIXED": "fixed size (all space allocated)",
    "DIFF": "differencing (stores only changes to its parent)",
}


class FlagsPanel(Panel):
    """The VD flags of the image, decoded (read-only)."""

    title = "F&lags"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = QFormLayout(self.body)
        self.image_flags = value_label(self.body, "Image flags")
        self.open_flags = value_label(self.body, "Open flags")
        self.capabilities = value_label(self.body, "Format capabilities")
        form.addRow("Image flags:", self.image_flags)
        form.addRow("Open flags:", self.open_flags)
        form.addRow("Format can:", self.capabilities)
        self.open_flags.setToolTip("How vdgui opened the image to show it: read-only, "
                                   "without checking its link to its parent")

    def refresh(self) -> None:
        node = self.node
        if node is None or node.info is None:
            return
        info = node.info
        words = [f"{name}: {_IMAGE_FLAG_WORDS.get(name, name.lower())}"
                 for name in flag_names(info.image_flags)]
        self.image_flags.setText(flags_text(info.image_flags, "NONE")
                                 + ("\n" + "\n".join(words) if words else
                                    "\ndynamically allocated, no special layout"))
        self.open_flags.setText(flags_text(info.open_flags, "NORMAL"))
        self.capabilities.setText(flags_text(info.capabilities))
