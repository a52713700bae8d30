"""DMG: Apple disk images in the UDIF layout (read-only).

A UDIF image ends with a 512-byte big-endian "koly" trailer that locates a data
fork (the chunk payloads), an XML property list and/or a classic binary resource
fork.  Both describe the disk through "blkx" resources: one "mish" block table per
partition, each a list of chunks (zero fill, raw, ignored, or compressed with ADC,
zlib, bzip2, LZFSE or LZMA).  Every chunk decompresses on its own to exactly its
sector count.

The modules: :mod:`.trailer` (koly), :mod:`.plist` (where the block tables are
stored), :mod:`.chunks` (block tables to a map of the virtual disk),
:mod:`.decompress` and :mod:`.adc` (bounded chunk decoders), :mod:`.image` (the
backend).
"""

from .image import DmgImage

__all__ = ["DmgImage"]
