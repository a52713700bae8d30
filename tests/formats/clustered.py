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


# -- operations, crashes and checks (QED, QCOW, Parallels) ---------------------------------

def qemu_findings(path: Path, fmt: str) -> tuple[int, int, int]:
    """``(exit status, corruptions, leaked clusters)`` that ``qemu-img check`` reports."""
    import json
    result = qemu.qemu_img("check", "--output=json", "-f", fmt, path, check=False)
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.returncode, report.get("corruptions", 0), report.get("leaks", 0)


def our_findings(path: Path, backend: str) -> list:
    """What our check finds (without repairing)."""
    from vdgui.engine.io import default_provider
    from vdgui.engine.registry import backend_class
    return backend_class(backend).check(default_provider(), str(path), False)


def our_repair(path: Path, backend: str) -> list:
    from vdgui.engine.io import default_provider
    from vdgui.engine.registry import backend_class
    return backend_class(backend).check(default_provider(), str(path), True)


def crash_everywhere(folder: Path, build, operation, flags: OpenFlags = OpenFlags.NORMAL,
                     after=None, inspect=None) -> int:
    """Build an image with ``build(path)`` and run ``operation(disk)`` on it, crashing
    after N writes for N = 0, 1, ... until it completes.  Every outcome must open and
    read as before the operation or as ``after(before)``; ``inspect(path)`` may check
    more.  Returns the number of writes the operation made."""
    from vdgui.engine.io import Fault, FaultyProvider, FileProvider
    from vdgui.engine.io.faulty import SimulatedCrash
    reference = folder / "reference"
    reference.mkdir(parents=True)
    path = build(reference)
    before = engine_read(path)
    want = after(before) if after else before
    n = 0
    while True:
        run = folder / f"run{n}"
        run.mkdir()
        path = build(run)
        disk = None
        try:
            # Opening may write too (Parallels marks the image in use).
            disk = open_chain(path, flags,
                              io=FaultyProvider(FileProvider(), Fault(after_writes=n)))
            operation(disk)
            disk.close_all()
            completed = True
        except SimulatedCrash:
            for index in range(len(disk) if disk is not None else 0):
                disk.image(index).abandon()
            completed = False
        seen = engine_read(path)
        assert seen in (before, want), f"crash after {n} writes: content is neither"
        if inspect:
            inspect(path)
        if completed:
            assert seen == want
            return n
        n += 1


def at_least_qemu(path: Path, fmt: str, backend: str, cluster: int) -> list:
    """Our findings on a damaged image, asserting they cover what qemu-img check
    reports: an error wherever it counts corruptions, and at least its leaks."""
    from vdgui.engine.findings import ERROR
    _, corruptions, leaks = qemu_findings(path, fmt)
    ours = our_findings(path, backend)
    if corruptions:
        assert [f for f in ours if f.severity == ERROR], (corruptions, ours)
    assert sum(f.leaked_bytes for f in ours) >= leaks * cluster, (leaks, ours)
    return ours


def crash_repair(folder: Path, build, backend: str) -> int:
    """Repair an image from ``build(folder)`` whose content reads whole despite its
    damage (leaks, shared clusters, stale flags), crashing after N writes for N = 0,
    1, ...: every outcome reads the same, and the completed repair leaves it clean."""
    from vdgui.engine.io import Fault, FaultyProvider, FileProvider
    from vdgui.engine.io.faulty import SimulatedCrash
    from vdgui.engine.registry import backend_class
    reference = folder / "reference"
    reference.mkdir(parents=True)
    before = engine_read(build(reference))
    n = 0
    while True:
        run = folder / f"run{n}"
        run.mkdir()
        path = build(run)
        try:
            backend_class(backend).check(
                FaultyProvider(FileProvider(), Fault(after_writes=n)), str(path), True)
            completed = True
        except SimulatedCrash:
            completed = False
        assert engine_read(path) == before, f"crash after {n} writes changed the content"
        if completed:
            assert our_findings(path, backend) == []
            return n
        n += 1
