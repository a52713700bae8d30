"""VHDX (Hyper-V virtual hard disk v2): fixed, dynamic and differencing images.

``headers`` (file identifier, headers, region tables), ``metadata`` (metadata
table and items, parent locator), ``bat`` (block allocation table, sector
bitmaps), ``log`` (replay and our own log writes), ``crc32c`` (the checksum),
``space`` (free space and the compaction plan), ``check`` (check and repair) and
``image`` (the backend).
"""

from .image import VhdxImage

__all__ = ["VhdxImage"]
