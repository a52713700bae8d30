"""Every operation, cut short after its N-th write for every N: the chain must
still open and read either as before or as after the operation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from vdgui.engine import Disk, OpenFlags, open_chain
from vdgui.engine.io import Fault, FaultyProvider, FileProvider
from vdgui.engine.io.faulty import SimulatedCrash
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.merge import merge
from vdgui.engine.ops.resize import resize

KiB = 1024
MiB = 1 << 20
SIZE = 4 * MiB


def build(folder: Path) -> list[Path]:
    """base <- mid <- top, 256 KiB blocks, with data, zeros and duplicates."""
    folder.mkdir()
    paths = [folder / "base.vdi", folder / "mid.vdi", folder / "top.vdi"]
    config = {"AllocationBlockSize": "256K", "DataAlignment": "512"}
    with Disk() as disk:
        disk.create_base(paths[0], SIZE, config=config)
        disk.write(0, bytes(range(256)) * 4096)            # 1 MiB of data
        disk.write(2 * MiB, b"\x5a" * (512 * KiB))
        disk.create_diff(paths[1], config=config, open_flags=OpenFlags.HONOR_SAME)
        disk.write(256 * KiB, b"\x6b" * (256 * KiB))
        disk.write(0, bytes(range(256)) * 1024)             # same as below
        disk.write(3 * MiB, bytes(256 * KiB))
        disk.create_diff(paths[2], config=config)
        disk.write(100 * KiB, b"\x7c" * (300 * KiB))
        disk.write(2 * MiB, bytes(256 * KiB))               # zeros over data
    return paths


def content(path: Path) -> bytes:
    with open_chain(path, OpenFlags.READONLY) as disk:
        return disk.read(0, disk.size)


def force_close(disk: Disk) -> None:
    """Drop the files of a container whose process 'crashed' (no further writes)."""
    for index in range(len(disk)):
        disk.image(index).storage.close()


def run_everywhere(tmp_path: Path, operation: Callable[[Disk], None], top: str,
                   expect_after: Callable[[bytes], bytes] = lambda before: before,
                   flags: OpenFlags = OpenFlags.NORMAL, new_top: str | None = None) -> int:
    """Run ``operation`` on the chain ending in ``top``, crashing after N writes for
    N = 0, 1, 2, ... until it completes; check every outcome.  Returns N.

    ``new_top`` is the image that ends the chain once ``top`` is gone (a backward
    merge of the top image deletes it).
    """
    build(tmp_path / "reference")
    before = content(tmp_path / "reference" / top)
    after = expect_after(before)
    n = 0
    while True:
        folder = tmp_path / f"run{n}"
        paths = build(folder)
        faulty = FaultyProvider(FileProvider(), Fault(after_writes=n))
        disk = open_chain(folder / top, flags, io=faulty)
        try:
            operation(disk)
            disk.close_all()
            completed = True
        except SimulatedCrash:
            force_close(disk)
            completed = False
        survivors = [p for p in paths if p.exists()]
        # Whatever survives opens, and the chain reads as before or as after.
        for path in survivors:
            open_chain(path, OpenFlags.READONLY).close_all()
        seen = content(folder / (top if (folder / top).exists() else new_top))
        assert seen in (before, after), f"crash after {n} writes: content is neither"
        if completed:
            assert seen == after
            return n
        n += 1


@pytest.mark.parametrize("from_, to", [(2, 0), (0, 2), (1, 0), (2, 1)])
def test_merge(tmp_path, from_, to):
    names = ["base.vdi", "mid.vdi", "top.vdi"]
    assert run_everywhere(tmp_path, lambda d: merge(d, from_, to), "top.vdi",
                          new_top=names[to]) > 2


def test_compact(tmp_path):
    assert run_everywhere(tmp_path, lambda d: compact(d, 1), "top.vdi") > 3


def test_compact_base(tmp_path):
    assert run_everywhere(tmp_path, lambda d: compact(d), "base.vdi") > 3


def test_grow_moving_data(tmp_path):
    def grow(disk):
        resize(disk, 200 * MiB)

    def expect(before):
        return before + bytes(200 * MiB - SIZE)

    # The top of a 3-image chain is read as a whole here, so grow the base alone.
    assert run_everywhere(tmp_path, grow, "base.vdi", expect) > 3


def test_discard(tmp_path):
    """One range with a partial unit at each end and whole units between (several
    ranges are discarded one after the other, each whole or not at all)."""
    ranges = [(MiB + 512, 2 * MiB)]

    def expect(before):
        data = bytearray(before)
        for offset, length in ranges:
            data[offset:offset + length] = bytes(length)
        return bytes(data)

    assert run_everywhere(tmp_path, lambda d: discard(d, ranges), "top.vdi", expect,
                          OpenFlags.DISCARD) > 3


def test_relinking_metadata(tmp_path):
    def new_identity(disk):
        disk.set_uuid(2)
        disk.set_comment(2, "renamed")

    assert run_everywhere(tmp_path, new_identity, "top.vdi") >= 2
