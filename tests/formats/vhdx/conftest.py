"""Images with a crash part-way through a write, made with the fault-injecting provider."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from vdgui.engine import Disk
from vdgui.engine.io import default_provider
from vdgui.engine.io.faulty import Fault, FaultyProvider, SimulatedCrash

from tests.formats.clustered import engine_read, engine_write, expected
from tests.formats.vhdx import helpers as h

MiB = 1 << 20
SIZE = 8 * MiB
FIRST = [(0, 4096, 0x11)]
#: Allocates block 3 (1 MiB blocks): data, then a log entry, then the BAT update.
SECOND = [(3 * MiB + 512, 8192, 0x22)]


def crash_after(path: Path, writes: int) -> bool:
    """Replay SECOND on ``path``, stopping dead after ``writes`` file writes.

    Returns False when the whole write (and close) finished first.
    """
    io = FaultyProvider(default_provider(), Fault(writes, path_contains=path.name))
    disk = Disk(io=io)
    disk.open(path)
    image = disk.image(0)
    try:
        for offset, length, byte in SECOND:
            disk.write(offset, bytes([byte]) * length)
        disk.close_all()
        return False
    except SimulatedCrash:
        image.storage.close()  # a dead process releases its files
        return True


def crash_points(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``(n, image)`` for every crash point n of SECOND on a fresh copy of one image."""
    base = tmp_path / "base.vhdx"
    h.create(base, SIZE, block_size="1M")
    engine_write(base, FIRST)
    n = 0
    while True:
        image = tmp_path / f"crash{n}.vhdx"
        shutil.copyfile(base, image)
        if not crash_after(image, n):
            image.unlink()
            return
        yield n, image
        n += 1


@pytest.fixture
def pending_log_image() -> Callable[[Path], tuple[Path, bytes]]:
    """Makes an image whose last BAT update sits in the log, not yet applied."""

    def make(tmp_path: Path) -> tuple[Path, bytes]:
        want = expected(SIZE, [*FIRST, *SECOND])
        for _, image in crash_points(tmp_path):
            if h.current_header(image).log_guid.int and h.bat(image, 4)[3] == 0 and \
                    engine_read(image) == want:
                return image, want
        raise AssertionError("no crash point left a pending log entry")

    return make
