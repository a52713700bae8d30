"""Words and numbers for people: sizes, variants, flags (one style everywhere)."""

from __future__ import annotations

import datetime
import enum

import humanize

from ..engine import DiskType
from ..library import ImageInfo

#: Binary units, largest first, for exact size texts ("1.5 GiB").
_UNITS = (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
          ("KiB", 1 << 10))

_VARIANT_WORDS = {
    "standard": "dynamically allocated",
    "fixed": "fixed size",
    "split2g": "split into files of less than 2 GB",
    "stream": "stream-optimized",
    "esx": "ESX server layout (with fixed size)",
    "zero-expand": "zero-expanded",
    "rawdisk": "raw disk access",
}

_SHORT_WORDS = {
    "standard": "Dynamic",
    "fixed": "Fixed",
    "split2g": "Split 2 GB",
    "stream": "Stream-optimized",
    "esx": "ESX",
    "zero-expand": "Zero-expanded",
    "rawdisk": "Raw disk",
}


def human_size(n: int) -> str:
    """``64 MiB``, ``1.5 GiB``, ``512 bytes``: short, binary units."""
    text = humanize.naturalsize(n, binary=True, format="%.1f")
    return text.replace(".0 ", " ")


def exact_bytes(n: int) -> str:
    return f"{humanize.intcomma(n)} bytes"


def size_tooltip(n: int, what: str = "") -> str:
    """``Virtual size: 64 MiB (67,108,864 bytes)``."""
    prefix = f"{what}: " if what else ""
    return f"{prefix}{human_size(n)} ({exact_bytes(n)})"


def rate_text(per_second: float) -> str:
    """``120 MiB/s``."""
    return f"{human_size(int(per_second))}/s"


def duration_text(seconds: float) -> str:
    """``3 seconds``, ``2 minutes``, ``an hour`` (humanize's natural wording)."""
    return humanize.naturaldelta(datetime.timedelta(seconds=max(seconds, 0)))


def offset_text(offset: int) -> str:
    """``at 2 MiB (0x200000)``: where something lies, for people and hex editors."""
    return f"at {human_size(offset)} ({offset:#x})"


def exact_size(n: int) -> str:
    """A size text that parses back to exactly ``n`` (``1.125 GiB``, ``4097``)."""
    for unit, scale in _UNITS:
        if n >= scale and (n * 1000) % scale == 0:
            value = f"{n / scale:.3f}".rstrip("0").rstrip(".")
            return f"{value} {unit}"
    return str(n)


def variant_words(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(_VARIANT_WORDS.get(name, name) for name in names)


def variant_text(info: ImageInfo) -> str:
    """``Dynamic``, ``Fixed``, ``Differencing``: the short form the Variant column shows."""
    names = [_SHORT_WORDS.get(name, name) for name in info.variant]
    if info.is_diff:
        # A differencing image always grows dynamically: say what matters.
        names = ["Differencing"] + [n for n in names if n != _SHORT_WORDS["standard"]]
    return ", ".join(names)


def storage_text(info: ImageInfo) -> str:
    """The sentence VirtualBox's details pane shows ("Dynamically allocated storage")."""
    text = variant_words(info.variant) + (", differencing" if info.is_diff else "")
    return f"{text[:1].upper()}{text[1:]} storage"


_MEDIUM = {DiskType.HDD: "hard disk", DiskType.DVD: "optical disc",
           DiskType.FLOPPY: "floppy disk"}


def type_text(info: ImageInfo) -> str:
    """``Differencing image (hard disk)``."""
    kind = "Differencing image" if info.is_diff else "Base image"
    return f"{kind} ({_MEDIUM.get(info.disk_type, 'unknown medium')})"


def flag_names(value: enum.IntFlag) -> list[str]:
    """The names of the set members of an IntFlag (unknown bits as hex)."""
    names = []
    rest = int(value)
    for member in type(value):
        bit = int(member)
        if bit and bit & (bit - 1) == 0 and rest & bit:
            names.append(member.name or hex(bit))
            rest &= ~bit
    if rest:
        names.append(f"{rest:#x}")
    return names


def flags_text(value: enum.IntFlag, none: str = "none") -> str:
    """``READONLY | INFO (0x9)``."""
    names = flag_names(value)
    return f"{' | '.join(names) if names else none} ({int(value):#x})"


def version_text(info: ImageInfo) -> str:
    """Format versions; VDI-style 0xMMMMmmmm values also as major.minor."""
    v = info.version
    if v > 0xFFFF:
        return f"{v >> 16}.{v & 0xFFFF} ({v:#010x})"
    return str(v)
