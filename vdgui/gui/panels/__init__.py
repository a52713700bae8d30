"""Property panels: one class per aspect of the selected image.

Every panel shows a :class:`vdgui.library.Node` (``set_node``); the editable ones
emit :attr:`Panel.edit_requested` with an :class:`vdgui.gui.edits.Edit`, which the
main window runs on a worker thread.
"""

from .base import Panel
from .chain import ChainPanel
from .comment import CommentPanel
from .flags import FlagsPanel
from .general import GeneralPanel
from .geometry import GeometryPanel
from .uuids import UuidPanel

__all__ = ["Panel", "ChainPanel", "GeneralPanel", "GeometryPanel", "UuidPanel", "CommentPanel",
           "FlagsPanel"]
