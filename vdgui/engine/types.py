"""Flags, enumerations and small value types of the VD API, in Python form."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from .errors import InvalidParameter

#: ``VD_LAST_IMAGE``: wherever an image number is accepted, the top image.
LAST_IMAGE = 0xFFFFFFFF

#: ``VD_IMAGE_CONTENT_UNKNOWN``: VDCopyEx "same" index meaning "don't know".
IMAGE_CONTENT_UNKNOWN = 0xFFFFFFFF

SECTOR = 512

NIL_UUID = uuid.UUID(int=0)


class DiskType(enum.IntEnum):
    """``VDTYPE``: what kind of medium a container holds."""

    INVALID = 0  # "anything" when probing
    HDD = 1
    DVD = 2
    FLOPPY = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class OpenFlags(enum.IntFlag):
    """``VD_OPEN_FLAGS_*``."""

    NORMAL = 0
    READONLY = 0x001
    HONOR_ZEROES = 0x002
    HONOR_SAME = 0x004
    INFO = 0x008
    ASYNC_IO = 0x010
    SHAREABLE = 0x020
    SEQUENTIAL = 0x040
    DISCARD = 0x080
    IGNORE_FLUSH = 0x100
    INFORM_ABOUT_ZERO_BLOCKS = 0x200
    SKIP_CONSISTENCY_CHECKS = 0x400


OPEN_FLAGS_MASK = 0x7FF

#: Open flags the container keeps for itself and never passes to a backend.
CONTAINER_OPEN_FLAGS = (OpenFlags.HONOR_SAME | OpenFlags.IGNORE_FLUSH
                        | OpenFlags.INFORM_ABOUT_ZERO_BLOCKS | OpenFlags.DISCARD)


class ImageFlags(enum.IntFlag):
    """``VD_IMAGE_FLAGS_*`` (the same values as VirtualBox's medium variants)."""

    NONE = 0
    VMDK_SPLIT_2G = 0x0001
    VMDK_RAWDISK = 0x0002
    VMDK_STREAM_OPTIMIZED = 0x0004
    VMDK_ESX = 0x0008
    VDI_ZERO_EXPAND = 0x0100
    FIXED = 0x10000
    DIFF = 0x20000


IMAGE_FLAGS_MASK = 0x3010F


class Capability(enum.IntFlag):
    """``VD_CAP_*``: what a backend can do."""

    NONE = 0
    UUID = 0x001
    CREATE_FIXED = 0x002
    CREATE_DYNAMIC = 0x004
    CREATE_SPLIT_2G = 0x008
    DIFF = 0x010
    ASYNC = 0x020
    FILE = 0x040
    CONFIG = 0x080
    TCPNET = 0x100
    VFS = 0x200
    DISCARD = 0x400
    PREFERRED = 0x800


class RepairFlags(enum.IntFlag):
    """``VD_REPAIR_*``."""

    NONE = 0
    DRY_RUN = 0x1


class ConfigValueType(enum.IntEnum):
    """``VDCFGVALUETYPE``."""

    INTEGER = 1
    STRING = 2
    BYTES = 3


class ConfigKeyFlags(enum.IntFlag):
    """``VD_CFGKEY_*``."""

    NONE = 0
    MANDATORY = 1
    EXPERT = 2
    CREATE_ONLY = 4


@dataclass(frozen=True)
class ConfigKey:
    """``VDCONFIGINFO``: one configuration key a backend understands."""

    name: str
    default: str | None
    value_type: ConfigValueType
    flags: ConfigKeyFlags = ConfigKeyFlags.NONE


#: Variant names of the command line and the image flags they stand for.
VARIANT_FLAGS: dict[str, ImageFlags] = {
    "standard": ImageFlags.NONE,
    "fixed": ImageFlags.FIXED,
    "split2g": ImageFlags.VMDK_SPLIT_2G,
    "stream": ImageFlags.VMDK_STREAM_OPTIMIZED,
    "esx": ImageFlags.VMDK_ESX,
    "zero-expand": ImageFlags.VDI_ZERO_EXPAND,
    "rawdisk": ImageFlags.VMDK_RAWDISK,
}


def parse_variant(text: str) -> ImageFlags:
    """Turn ``"fixed,split2g"`` into image flags; unknown names are refused."""
    flags = ImageFlags.NONE
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        if part not in VARIANT_FLAGS:
            raise InvalidParameter(
                f"unknown variant {part!r} (known: {', '.join(VARIANT_FLAGS)})")
        flags |= VARIANT_FLAGS[part]
    return flags


def variant_names(flags: int) -> list[str]:
    """The variant names describing ``flags`` (``["standard"]`` when none apply)."""
    names = [name for name, bit in VARIANT_FLAGS.items() if bit and flags & bit]
    return names or ["standard"]


class Status(enum.Enum):
    """What one image says about a range of its virtual disk."""

    #: Nothing stored here: the reader must ask the image below (zeros at the base).
    FREE = "free"
    #: Reads as zeros and hides the images below; no storage is allocated for it.
    ZERO = "zero"
    #: Stored in this image; writable in place.
    DATA = "data"
    #: Storage is allocated but known to read as zeros (a hole in a raw file, a
    #: preallocated zero cluster); writable in place, readable without I/O.
    ALLOCATED_ZERO = "allocated-zero"

    @property
    def present(self) -> bool:
        """True when this image answers for the range (the chain stops here)."""
        return self is not Status.FREE

    @property
    def reads_zero(self) -> bool:
        return self in (Status.ZERO, Status.ALLOCATED_ZERO)

    @property
    def in_place(self) -> bool:
        """True when a write can go to the existing storage without allocating."""
        return self in (Status.DATA, Status.ALLOCATED_ZERO)


@dataclass(frozen=True)
class Geometry:
    """``VDGEOMETRY``: cylinders/heads/sectors.  All zero means "not set"."""

    cylinders: int = 0
    heads: int = 0
    sectors: int = 0

    @property
    def is_set(self) -> bool:
        return self.cylinders != 0

    def __str__(self) -> str:
        return f"{self.cylinders}/{self.heads}/{self.sectors}"

    @classmethod
    def parse(cls, text: str) -> Geometry:
        """Parse ``C/H/S``."""
        parts = text.replace(",", "/").split("/")
        try:
            c, h, s = (int(p) for p in parts)
        except ValueError:
            raise InvalidParameter(f"geometry {text!r} is not of the form C/H/S") from None
        if min(c, h, s) < 0 or max(c, h, s) > 0xFFFFFFFF:
            raise InvalidParameter(f"geometry {text!r} is out of range")
        return cls(c, h, s)

    def validate_pchs(self) -> None:
        """Physical geometry limits: heads <= 16, sectors <= 63."""
        if self.heads > 16 or self.sectors > 63:
            raise InvalidParameter(
                f"physical geometry {self} is out of range (at most 16 heads and 63 sectors)")

    def validate_lchs(self) -> None:
        """Logical geometry limits: heads <= 255, sectors <= 63."""
        if self.heads > 255 or self.sectors > 63:
            raise InvalidParameter(
                f"logical geometry {self} is out of range (at most 255 heads and 63 sectors)")

    def clipped_pchs(self) -> Geometry:
        """The container's cached copy: cylinders <= 16383, heads <= 16, sectors <= 63."""
        return Geometry(min(self.cylinders, 16383), min(self.heads, 16), min(self.sectors, 63))

    def clipped_lchs(self) -> Geometry:
        return Geometry(self.cylinders, min(self.heads, 255), min(self.sectors, 63))


NO_GEOMETRY = Geometry()


def default_pchs(size: int) -> Geometry:
    """The physical geometry VirtualBox derives for a disk of ``size`` bytes."""
    cylinders = min(size // SECTOR // 16 // 63, 16383)
    return Geometry(max(cylinders, 1), 16, 63)


def fix_up_pchs(geometry: Geometry, size: int) -> Geometry:
    """Geometry carried into an image of ``size`` bytes (VD semantics section 13)."""
    g = geometry
    if (g.heads > 16 or g.sectors > 63 or g.cylinders == 0
            or g.cylinders * g.heads * g.sectors * SECTOR > size):
        return Geometry(min(size // SECTOR // 16 // 63, 16383), 16, 63)
    return g


def fix_up_lchs(geometry: Geometry, size: int) -> Geometry:
    """Logical geometry carried into an image of ``size`` bytes."""
    g = geometry
    if g.cylinders and (not g.heads or not g.sectors or g.heads > 255 or g.sectors > 63):
        return NO_GEOMETRY
    if g.cylinders:
        return Geometry(min(size // SECTOR // g.heads // g.sectors, 1024), g.heads, g.sectors)
    return g


def parse_uuid(text: str) -> uuid.UUID:
    """Parse a UUID given by a person, with a clear error."""
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise InvalidParameter(f"{text!r} is not a valid UUID") from None
