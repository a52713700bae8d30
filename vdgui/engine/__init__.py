"""The vdgui engine: virtual disk images in Python, with the VirtualBox VD API's semantics.

Public API (everything the GUI and the CLI use):

* :class:`Disk` — the HDD container (``VDCreate``), holding a chain of images;
  :func:`open_chain` opens an image together with its ancestors.
* :func:`probe` (``VDGetFormat``), :func:`backends` (``VDBackendInfo``),
  :func:`backend_info` (``VDBackendInfoOne``).
* Flags and value types: :class:`OpenFlags`, :class:`ImageFlags`,
  :class:`Capability`, :class:`DiskType`, :class:`Geometry`, :class:`Status`.
* Errors: :class:`VDError` and its subclasses in :mod:`vdgui.engine.errors`.
* Progress and cancellation: :class:`Progress`, :class:`CancelToken`.

This package never imports Qt.
"""

from .chain import ChainLink, ParentNotFound, discover_chain, find_parent, open_chain
from .container import Disk, MapExtent
from .image_view import ImageView
from .errors import Cancelled, VDError
from .formats.base import METADATA_FIELDS, BackendInfo
from .io import default_provider
from .ops.identity import change_uuid
from .progress import CancelToken, Progress
from .registry import backend_info, backends, probe
from .sizes import parse_size
from .types import (LAST_IMAGE, NIL_UUID, Capability, ConfigKey, DiskType, Geometry,
                    ImageFlags, OpenFlags, RepairFlags, Status, parse_uuid, parse_variant,
                    variant_names)

__all__ = [
    "Disk", "ImageView", "MapExtent", "open_chain", "discover_chain", "find_parent",
    "ChainLink", "ParentNotFound", "probe", "backends", "backend_info", "BackendInfo",
    "VDError", "Cancelled", "Progress", "CancelToken", "parse_size", "LAST_IMAGE", "NIL_UUID",
    "Capability", "ConfigKey", "DiskType", "Geometry", "ImageFlags", "OpenFlags",
    "RepairFlags", "Status", "parse_uuid", "parse_variant", "variant_names",
    "METADATA_FIELDS", "default_provider", "change_uuid",
]
