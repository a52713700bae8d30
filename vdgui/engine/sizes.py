"""Parsing sizes written by people: ``4096``, ``10G``, ``1.5TiB``, ``512k``."""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50, "e": 2**60}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``: a count with an optional binary suffix (K M G T P E).

    Fractions are allowed with a suffix (``1.5G``) and rounded up to a whole byte.
    Raises ``ValueError`` for anything else.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 4096, 512K, 10G, 1.5T)")
    number, unit = match.groups()
    scale = _UNITS[unit.lower()]
    if "." in number:
        if scale == 1:
            raise ValueError(f"{text!r}: a byte count must be a whole number")
        whole, frac = number.split(".")
        value = int(whole) * scale + -(-int(frac) * scale // 10 ** len(frac))
    else:
        value = int(number) * scale
    return value


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment
