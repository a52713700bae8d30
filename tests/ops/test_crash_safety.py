"""Every operation, cut short after its N-th write for every N: the chain must
still open and read either as before or as after the operation."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from vdgui.engine import Capability, Disk, OpenFlags, backend_info, errors, open_chain
from vdgui.engine.io import Fault, FaultyProvider, FileProvider
from vdgui.engine.io.faulty import SimulatedCrash
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.merge import merge
from vdgui.engine.ops.resize import resize

from .formats import Fmt, compactable, discardable, mergeable, params, resizable

KiB = 1024
MiB = 1 << 20
SIZE = 4 * MiB


def build(folder: Path, fmt: Fmt) -> list[Path]:
    """base <- mid <- top in ``fmt``, with data, zeros and duplicates (just the base
    for a format that cannot be a differencing image)."""
    folder.mkdir()
    chain = backend_info(fmt.name).has(Capability.DIFF)
    paths = [folder / f"{name}.{fmt.ext}" for name in ("base", "mid", "top")][:3 if chain else 1]
    with Disk() as disk:
        disk.create_base(paths[0], SIZE, fmt.name, config=fmt.config,
                         open_flags=OpenFlags.HONOR_SAME | OpenFlags.HONOR_ZEROES)
        disk.write(0, bytes(range(256)) * 4096)            # 1 MiB of data
        disk.write(2 * MiB, b"\x5a" * (512 * KiB))
        disk.write(3 * MiB + 512 * KiB, bytes(512 * KiB))  # stored zeros: compaction frees
        if not chain:
            return paths
        disk.create_diff(paths[1], fmt.name, config=fmt.config,
                         open_flags=OpenFlags.HONOR_SAME)
        disk.write(256 * KiB, b"\x6b" * (256 * KiB))
        disk.write(0, bytes(range(256)) * 1024)             # same as below
        disk.write(2 * MiB, b"\x5a" * (512 * KiB))          # a whole unit the same as below
        disk.write(3 * MiB, bytes(256 * KiB))
        disk.create_diff(paths[2], fmt.name, config=fmt.config)
        disk.write(100 * KiB, b"\x7c" * (300 * KiB))
        disk.write(2 * MiB, bytes(256 * KiB))               # zeros over data
    return paths


def content(path: Path) -> bytes:
    with open_chain(path, OpenFlags.READONLY) as disk:
        return disk.read(0, disk.size)


def force_close(disk: Disk) -> None:
    """Drop the files of a container whose process 'crashed' (no further writes)."""
    for index in range(len(disk)):
        disk.image(index).abandon()


def run_everywhere(tmp_path: Path, fmt: Fmt, operation: Callable[[Disk], None], top: str,
                   expect_after: Callable[[bytes], bytes] = lambda before: before,
                   flags: OpenFlags = OpenFlags.NORMAL, new_top: str | None = None) -> int:
    """Run ``operation`` on the chain ending in ``top``, crashing after N writes for
    N = 0, 1, 2, ... until it completes; check every outcome.  Returns N.

    ``new_top`` is the image that ends the chain once ``top`` is gone (a backward
    merge of the top image deletes it).
    """
    top = f"{top}.{fmt.ext}"
    new_top = f"{new_top}.{fmt.ext}" if new_top else None
    build(tmp_path / "reference", fmt)
    before = content(tmp_path / "reference" / top)
    after = expect_after(before)
    n = 0
    while True:
        folder = tmp_path / f"run{n}"
        paths = build(folder, fmt)
        faulty = FaultyProvider(FileProvider(), Fault(after_writes=n))
        disk = None
        try:
            disk = open_chain(folder / top, flags, io=faulty)  # opening may write too
            operation(disk)
            disk.close_all()
            completed = True
        except SimulatedCrash:
            if disk is not None:
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


@pytest.mark.parametrize("fmt", params(mergeable()))
@pytest.mark.parametrize("from_, to", [(2, 0), (0, 2), (1, 0), (2, 1)])
def test_merge(tmp_path, fmt, from_, to):
    names = ["base", "mid", "top"]
    assert run_everywhere(tmp_path, fmt, lambda d: merge(d, from_, to), "top",
                          new_top=names[to]) > 2


@pytest.mark.parametrize("fmt", params(compactable(diffs=True)))
def test_compact(tmp_path, fmt):
    assert run_everywhere(tmp_path, fmt, lambda d: compact(d, 1), "top") > 3


@pytest.mark.parametrize("fmt", params(compactable()))
def test_compact_base(tmp_path, fmt):
    # Releases are written a run of units at a time: the base's one run of stored
    # zeros can take a single write, and the cut one more.
    assert run_everywhere(tmp_path, fmt, lambda d: compact(d), "base") > 1


@pytest.mark.parametrize("fmt", params(resizable()))
def test_grow(tmp_path, fmt):
    def expect(before):
        return before + bytes(200 * MiB - SIZE)

    # The top of a 3-image chain is read as a whole here, so grow the base alone.
    assert run_everywhere(tmp_path, fmt, lambda d: resize(d, 200 * MiB), "base",
                          expect) >= 1


@pytest.mark.parametrize("fmt", params(discardable()))
def test_discard(tmp_path, fmt):
    """One range with a partial unit at each end and whole units between (several
    ranges are discarded one after the other, each whole or not at all)."""
    ranges = [(MiB + 512, 2 * MiB)]

    def expect(before):
        data = bytearray(before)
        for offset, length in ranges:
            data[offset:offset + length] = bytes(length)
        return bytes(data)

    assert run_everywhere(tmp_path, fmt, lambda d: discard(d, ranges), "top", expect,
                          OpenFlags.DISCARD) > 3


@pytest.mark.parametrize("fmt", params(mergeable()))
def test_metadata_updates(tmp_path, fmt):
    def new_identity(disk):
        for setter in (lambda: disk.set_uuid(2), lambda: disk.set_comment(2, "renamed")):
            try:
                setter()
            except errors.NotSupported:
                pass

    run_everywhere(tmp_path, fmt, new_identity, "top")
