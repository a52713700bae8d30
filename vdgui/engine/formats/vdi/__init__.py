"""VDI: VirtualBox Disk Image (layout in :mod:`.layout`, the backend in :mod:`.image`,
check and repair in :mod:`.check`)."""

from .image import VdiImage
from .layout import *  # noqa: F401,F403  (tests and tools use the layout names)

__all__ = ["VdiImage"]
