"""Binary record layouts declared once, used to unpack and to pack.

A format module declares each on-disk structure as a :class:`Layout`: a byte order
and a list of ``(field name, struct code)`` pairs.  ``unpack`` turns bytes into a
plain dict (short input is a :class:`Corrupted` error naming the structure, never a
``struct.error``) and ``pack`` turns a dict back into bytes.
"""

from __future__ import annotations

import struct
from typing import Any, Mapping, Sequence

from .errors import Corrupted, InvalidParameter


class Layout:
    """A fixed-size binary record."""

    def __init__(self, name: str, byte_order: str, fields: Sequence[tuple[str, str]]) -> None:
        if byte_order not in "<>":
            raise ValueError("byte order must be '<' or '>'")
        self.name = name
        self.fields = tuple(f for f, _ in fields)
        self._struct = struct.Struct(byte_order + "".join(code for _, code in fields))
        self.size = self._struct.size
        offsets = []
        pos = 0
        for _, code in fields:
            offsets.append(pos)
            pos += struct.calcsize(byte_order + code)
        self.offsets = dict(zip(self.fields, offsets))

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0,
               path: str | None = None) -> dict[str, Any]:
        """The fields of the record at ``offset`` in ``data``."""
        if len(data) - offset < self.size:
            raise Corrupted(f"the {self.name} is cut short ({len(data) - offset} of "
                            f"{self.size} bytes)", path)
        return dict(zip(self.fields, self._struct.unpack_from(data, offset)))

    def pack(self, values: Mapping[str, Any]) -> bytes:
        """Bytes of the record; every field must be given."""
        try:
            return self._struct.pack(*(values[f] for f in self.fields))
        except (KeyError, struct.error) as exc:
            raise InvalidParameter(f"cannot encode the {self.name}: {exc}") from exc

    def offset_of(self, field: str) -> int:
        """Byte offset of ``field`` within the record."""
        return self.offsets[field]


def c_string(raw: bytes, encoding: str = "utf-8") -> str:
    """Text up to the first NUL, decoded leniently (hostile bytes never raise)."""
    return raw.split(b"\0", 1)[0].decode(encoding, errors="replace")
