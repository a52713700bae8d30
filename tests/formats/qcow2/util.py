"""Helpers for the QCOW2 tests: images made by qemu and by us, byte-level patches."""

from __future__ import annotations

import struct
from pathlib import Path

from tests import qemu
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.types import OpenFlags

MiB = 1 << 20


def read_all(path: Path, flags: OpenFlags = OpenFlags.READONLY) -> bytes:
    """The whole virtual disk of the chain ending in ``path``, read by us."""
    with open_chain(str(path), flags) as disk:
        return disk.read(0, disk.size)


def create(path: Path, size: int, **config: str) -> Path:
    """A new empty QCOW2 image made by us."""
    with Disk() as disk:
        disk.create_base(str(path), size, "QCOW2", config=config)
    return path


def qemu_create(path: Path, size: int | str, *writes: str, options: str = "",
                backing: Path | None = None, backing_fmt: str = "qcow2") -> Path:
    """A QCOW2 image made by qemu-img, then written with qemu-io commands."""
    args: list[str | Path] = ["create", "-q", "-f", "qcow2"]
    if options:
        args += ["-o", options]
    if backing is not None:
        args += ["-b", backing.name, "-F", backing_fmt]
    qemu.qemu_img(*args, path, str(size))
    if writes:
        qemu.qemu_io(path, "qcow2", *writes)
    return path


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def put_u32(path: Path, offset: int, value: int) -> None:
    patch(path, offset, struct.pack(">I", value))


def put_u64(path: Path, offset: int, value: int) -> None:
    patch(path, offset, struct.pack(">Q", value))


def get_u64(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(">Q", f.read(8))[0]


def assert_clean(path: Path) -> None:
    """``qemu-img check`` finds neither errors nor leaks."""
    result = qemu.check(path, "qcow2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leaked" not in result.stdout.lower(), result.stdout


def assert_same_as_raw(path: Path, expected: bytes, tmp_path: Path) -> None:
    """qemu reads ``path`` (with its backing chain) as ``expected``."""
    raw = tmp_path / (path.name + ".expected.raw")
    raw.write_bytes(expected)
    assert qemu.compare(path, "qcow2", raw, "raw")
