"""VMDK: VMware virtual disks (descriptor + extents), with VirtualBox's semantics.

* :mod:`.descriptor` — the text descriptor (parse, change, write back).
* :mod:`.extents` — the extent interface; FLAT/VMFS and ZERO extents.
* :mod:`.sparse` — hosted sparse ("KDMV") and ESX COWD extents, compressed grains.
* :mod:`.stream` — writing streamOptimized extents.
* :mod:`.rawdisk` — raw-disk descriptors (:class:`RawDisk`, :class:`RawPartition`).
* :mod:`.packing` — planning the compaction of sparse extents; loading grain tables.
* :mod:`.check` — check and repair (``VDRepair``).
* :mod:`.create` — making the files of every variant.
* :mod:`.config` — the configuration keys.
* :mod:`.image` — :class:`VmdkImage`, the backend.
"""

from .config import ALLOW_EXTERNAL
from .image import ExtentRefused, VmdkImage
from .rawdisk import RawDisk, RawPartition

__all__ = ["VmdkImage", "RawDisk", "RawPartition", "ExtentRefused", "ALLOW_EXTERNAL"]
