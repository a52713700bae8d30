"""Apple Data Compression (ADC), the LZ77 variant of old "UDCO" disk images.

A stream is a sequence of operations, each starting with one byte:

* ``1nnnnnnn``: ``n + 1`` literal bytes follow;
* ``01nnnnnn dddddddd dddddddd``: copy ``n + 4`` bytes from distance ``d + 1``;
* ``0nnnnndd dddddddd``: copy ``n + 3`` bytes from distance ``d + 1``
  (4 bits of length, 10 bits of distance).

Copies may overlap their own output (distance smaller than the length repeats a
pattern).  No maintained library decodes it, hence this small decoder; it never
produces more than the caller's limit (plus one operation's worth).
"""

from __future__ import annotations


class AdcError(ValueError):
    """The stream is malformed."""


class AdcOverflow(AdcError):
    """The stream expands beyond the caller's limit."""


def decompress(data: bytes, limit: int) -> bytes:
    """Decode ``data``; :class:`AdcOverflow` if it would exceed ``limit`` bytes."""
    out = bytearray()
    pos, end = 0, len(data)
    while pos < end:
        op = data[pos]
        if op & 0x80:
            count = (op & 0x7F) + 1
            if pos + 1 + count > end:
                raise AdcError(f"a literal run of {count} bytes at offset {pos} is cut short")
            out += data[pos + 1:pos + 1 + count]
            pos += 1 + count
        else:
            if op & 0x40:
                if pos + 3 > end:
                    raise AdcError(f"a copy operation at offset {pos} is cut short")
                count = (op & 0x3F) + 4
                distance = (data[pos + 1] << 8 | data[pos + 2]) + 1
                pos += 3
            else:
                if pos + 2 > end:
                    raise AdcError(f"a copy operation at offset {pos} is cut short")
                count = ((op >> 2) & 0x0F) + 3
                distance = ((op & 0x03) << 8 | data[pos + 1]) + 1
                pos += 2
            start = len(out) - distance
            if start < 0:
                raise AdcError(f"a copy at output offset {len(out)} refers {distance} bytes "
                               f"back, before the start of the data")
            if distance >= count:
                out += out[start:start + count]
            else:  # overlapping copy: the last `distance` bytes repeat
                pattern = out[start:]
                out += (pattern * (count // distance + 1))[:count]
        if len(out) > limit:
            raise AdcOverflow(f"the data expands beyond {limit} bytes")
    return bytes(out)
