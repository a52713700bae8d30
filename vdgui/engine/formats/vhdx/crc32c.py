"""CRC-32C (Castagnoli), the checksum of every VHDX structure.

Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF.  The
checksummed structures are small (a 4 KiB header, a 64 KiB region table, log
entries of up to a few MiB), so no extra dependency is needed: short inputs run
through a byte table in Python, longer ones are cut into equal lanes whose CRCs
numpy computes side by side and which are then chained together with a
precomputed "shift by one lane of zero bytes" operator.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_POLY = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()
_NP_TABLE = np.array(_TABLE, dtype=np.uint32)

#: Below this length the plain byte loop is faster than setting up lanes.
_SMALL = 2048


def _raw_bytewise(crc: int, data: bytes) -> int:
    """The CRC register after feeding ``data`` (no initial or final inversion)."""
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


@lru_cache(maxsize=32)
def _zero_shift_tables(lane: int) -> tuple[list[int], ...]:
    """Tables of the linear map "feed ``lane`` zero bytes", one per register byte.

    The register after zeros is linear in the register before, so the map of any
    value is the XOR of the maps of its four bytes.
    """
    start = np.array([v << (8 * k) for k in range(4) for v in range(256)], dtype=np.uint32)
    c = start
    for _ in range(lane):
        c = _NP_TABLE[c & 0xFF] ^ (c >> 8)
    flat = c.tolist()
    return tuple(flat[256 * k:256 * (k + 1)] for k in range(4))


def _raw_lanes(data: bytes) -> int:
    """The raw CRC (initial register 0) of ``data``, computed in parallel lanes."""
    n = len(data)
    lanes = max(1, int(n ** 0.5))
    lane = -(-n // lanes)
    # Leading zero bytes do not change a CRC whose register starts at 0.
    padded = np.zeros(lanes * lane, dtype=np.uint8)
    padded[lanes * lane - n:] = np.frombuffer(data, dtype=np.uint8)
    columns = np.ascontiguousarray(padded.reshape(lanes, lane).T)
    c = np.zeros(lanes, dtype=np.uint32)
    table = _NP_TABLE
    for column in columns:
        c = table[(c ^ column) & 0xFF] ^ (c >> 8)
    t0, t1, t2, t3 = _zero_shift_tables(lane)
    crc = 0
    for part in c.tolist():
        crc = (t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF]
               ^ t3[crc >> 24] ^ part)
    return crc


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C of ``data``."""
    data = bytes(data)
    if len(data) < _SMALL:
        return _raw_bytewise(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    # Starting from 0xFFFFFFFF equals starting from 0 with the first four bytes
    # inverted (the CRC is reflected and linear), which the lanes need.
    head = bytes(b ^ 0xFF for b in data[:4])
    return _raw_lanes(head + data[4:]) ^ 0xFFFFFFFF
