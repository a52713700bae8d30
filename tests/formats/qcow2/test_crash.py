"""Writes cut short after their N-th file write: a crash may leak clusters, never
corrupt the image (``qemu-img check`` finds no errors) or lose finished writes."""

from __future__ import annotations

import random
import shutil

import pytest

from tests import qemu
from tests.formats.qcow2.util import MiB, create, read_all
from vdgui.engine.container import Disk
from vdgui.engine.io import Fault, FaultyProvider, FileProvider
from vdgui.engine.io.faulty import SimulatedCrash

pytestmark = pytest.mark.interop


def _workload(seed: int) -> list[tuple[int, bytes]]:
    """Writes that allocate L2 tables and refcount blocks, grow the refcount table
    (512-byte clusters, 64-bit counts: one table cluster covers 2 MiB), rewrite
    clusters in place and write zeros over data."""
    rnd = random.Random(seed)
    writes = [(0, rnd.randbytes(1200 * 1024)), (3 * MiB, rnd.randbytes(900 * 1024))]
    writes += [(rnd.randrange(0, 6 * MiB), rnd.randbytes(rnd.randrange(1, 40_000)))
               for _ in range(4)]
    writes.append((100 * 1024, bytes(64 * 1024)))
    return writes


def _crash_after(template, folder, n: int) -> tuple[bool, bytearray, tuple[int, int] | None]:
    """Replay the workload on a copy of ``template``, crashing after ``n`` writes.

    Returns whether it completed, the content of the finished writes and the range
    of the interrupted one.
    """
    path = folder / "img.qcow2"
    shutil.copy(template, path)
    expected = bytearray(8 * MiB)
    disk = Disk(io=FaultyProvider(FileProvider(), Fault(after_writes=n)))
    disk.open(str(path))
    for offset, data in _workload(1):
        try:
            disk.write(offset, data)
        except SimulatedCrash:
            disk.image(0).storage.close()
            return False, expected, (offset, offset + len(data))
        expected[offset:offset + len(data)] = data
    disk.close_all()
    return True, expected, None


def _sweep(tmp_path, step: int) -> int:
    template = create(tmp_path / "template.qcow2", 8 * MiB, cluster_size="512",
                      refcount_bits="64")
    n = 0
    while True:
        folder = tmp_path / f"run{n}"
        folder.mkdir()
        completed, expected, torn = _crash_after(template, folder, n)
        path = folder / "img.qcow2"
        result = qemu.check(path, "qcow2")
        assert result.returncode in (0, 3), f"crash after {n} writes: {result.stdout}"
        seen = bytearray(read_all(path))
        if torn is not None:  # the interrupted write may have happened in part
            a, b = torn
            seen[a:b] = expected[a:b]
        assert seen == expected, f"crash after {n} writes lost finished data"
        shutil.rmtree(folder)
        if completed:
            assert result.returncode == 0
            return n
        n += step


def test_crash_consistency_sampled(tmp_path):
    assert _sweep(tmp_path, step=37) > 100


@pytest.mark.stress
def test_crash_consistency_every_write(tmp_path):
    _sweep(tmp_path, step=1)
