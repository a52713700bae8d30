"""Helpers shared by the tests of the cluster-mapped qemu formats (QED, QCOW, Parallels).

A test describes guest writes once, as ``(offset, length, byte)`` triples, and
applies them with qemu-io or with the engine; :func:`expected` gives the disk
content they should produce, so both directions are compared against one model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.types import OpenFlags

from tests import qemu

Write = tuple[int, int, int]

MiB = 1 << 20


def scattered_writes(size: int, cluster: int) -> list[Write]:
    """Writes touching the first and last sector, cluster boundaries, partial clusters
    and lengths that are not multiples of the cluster size."""
    return [
        (0, 512, 0x11),                               # first sector
        (cluster - 512, 1024, 0x22),                  # straddles the first boundary
        (3 * cluster + 4096, cluster + 1536, 0x33),   # partial, spans two clusters
        (size // 2 + 512, 3 * cluster + 512, 0x44),   # several clusters, odd length
        (size - 512, 512, 0x55),                      # last sector
    ]


def expected(size: int, writes: Sequence[Write], base: bytes | None = None) -> bytes:
    content = bytearray(base if base is not None else bytes(size))
    content.extend(bytes(size - len(content)))
    del content[size:]
    for offset, length, byte in writes:
        content[offset:offset + length] = bytes([byte]) * length
    return bytes(content)


def qemu_write(image: Path, fmt: str, writes: Sequence[Write]) -> None:
    qemu.qemu_io(image, fmt, *(f"write -P {byte:#x} {off} {n}" for off, n, byte in writes))


def engine_write(image: Path, writes: Sequence[Write], flags: OpenFlags = OpenFlags.NORMAL,
                 backend: str | None = None) -> None:
    with open_chain(image, flags, backend=backend) as disk:
        for offset, length, byte in writes:
            disk.write(offset, bytes([byte]) * length)


def engine_read(image: Path, backend: str | None = None) -> bytes:
    with open_chain(image, OpenFlags.READONLY, backend=backend) as disk:
        return disk.read(0, disk.size)


def create(path: Path, size: int, backend: str, config: dict | None = None,
           writes: Sequence[Write] = ()) -> None:
    with Disk() as disk:
        disk.create_base(path, size, backend, config=config)
        for offset, length, byte in writes:
            disk.write(offset, bytes([byte]) * length)


def create_diff(parent: Path, child: Path, backend: str, writes: Sequence[Write] = (),
                parent_backend: str | None = None) -> None:
    with open_chain(parent, OpenFlags.READONLY, backend=parent_backend) as disk:
        disk.create_diff(child, backend)
        for offset, length, byte in writes:
            disk.write(offset, bytes([byte]) * length)


def raw_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def poke(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes of a file in place (to damage or patch a structure)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def peek(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)
