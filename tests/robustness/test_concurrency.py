"""Processes sharing images: one writer at a time, readers never see damage."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from vdgui.engine import Disk, OpenFlags, open_chain
from vdgui.engine import errors

MiB = 1 << 20
SIZE = 32 * MiB

WRITER = textwrap.dedent("""
    import sys, time
    from vdgui.engine import open_chain
    path, ready = sys.argv[1], sys.argv[2]
    with open_chain(path) as disk:
        assert not disk.is_read_only
        open(ready, "w").close()
        for block in range(32):               # allocate a new block every few ms
            disk.write(block * (1 << 20), bytes([block + 1]) * (1 << 20))
            disk.flush()
            time.sleep(0.01)
""")


def start_writer(path, tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(ready)])
    for _ in range(500):
        if ready.exists() or proc.poll() is not None:
            break
        subprocess.run(["sleep", "0.01"])
    assert ready.exists(), "the writer did not start"
    return proc


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "shared.vdi"
    with Disk() as disk:
        disk.create_base(path, SIZE)
    return path


def test_a_second_writer_process_is_refused_clearly(image, tmp_path):
    proc = start_writer(image, tmp_path)
    try:
        with open_chain(image) as disk:
            assert disk.is_read_only
            with pytest.raises(errors.ReadOnly, match="in use"):
                disk.write(0, b"x")
    finally:
        assert proc.wait(30) == 0


def test_a_reader_during_appends_sees_old_or_new_blocks_never_garbage(image, tmp_path):
    proc = start_writer(image, tmp_path)
    seen = set()
    try:
        while proc.poll() is None:
            with open_chain(image, OpenFlags.READONLY) as disk:
                for block in range(32):
                    data = disk.read(block * MiB, MiB)
                    # Either still empty or completely written: never a torn or
                    # foreign block (data first, then the map entry).
                    assert data in (bytes(MiB), bytes([block + 1]) * MiB), block
                    seen.add(data[0])
    finally:
        assert proc.wait(30) == 0
    with open_chain(image, OpenFlags.READONLY) as disk:
        assert all(disk.read(b * MiB, 1) == bytes([b + 1]) for b in range(32))
