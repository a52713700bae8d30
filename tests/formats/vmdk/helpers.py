"""Shared helpers for the VMDK tests: write plans and a reference raw copy."""

from __future__ import annotations

from pathlib import Path

from vdgui.engine import Disk

MiB = 1 << 20
SIZE = 10 * MiB

#: (offset, length, byte): first sector, last sector, grain-straddling and
#: non-grain-sized writes, a write across a grain-table boundary.
PLAN = [
    (0, 512, 0x11),
    (SIZE - 512, 512, 0x22),
    (65536 - 1024, 3000, 0x33),
    (1 * MiB + 4096, 100_000, 0x44),
    (3 * MiB, 65536, 0x55),
    (5 * MiB - 7 * 512, 200 * 512, 0x66),
]

#: Whole-grain writes only (what qemu allows on streamOptimized images).
GRAIN_PLAN = [(0, 65536, 0x11), (SIZE - 65536, 65536, 0x22), (2 * MiB, 3 * 65536, 0x33)]


def apply(plan: list[tuple[int, int, int]], size: int = SIZE) -> bytearray:
    """The disk content after ``plan`` on a zeroed disk."""
    ref = bytearray(size)
    for offset, length, value in plan:
        ref[offset:offset + length] = bytes([value]) * length
    return ref


def write_plan(disk: Disk, plan: list[tuple[int, int, int]]) -> None:
    for offset, length, value in plan:
        disk.write(offset, bytes([value]) * length)


def qemu_commands(plan: list[tuple[int, int, int]]) -> list[str]:
    return [f"write -P {value:#x} {offset} {length}" for offset, length, value in plan]


def read_all(disk: Disk) -> bytes:
    return disk.read(0, disk.size)


def raw_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path
