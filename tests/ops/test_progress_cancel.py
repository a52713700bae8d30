"""Every operation reports monotonic progress that ends at 100 %, and a cancel
in the middle leaves the chain reading exactly as before."""

from __future__ import annotations

import pytest

from vdgui.engine import Cancelled, Disk, OpenFlags, Progress, open_chain
from vdgui.engine.ops.compact import compact
from vdgui.engine.ops.copy import convert
from vdgui.engine.ops.discard import discard
from vdgui.engine.ops.merge import merge
from vdgui.engine.ops.rebase import rebase
from vdgui.engine.ops.repair import repair
from vdgui.engine.ops.resize import resize

MiB = 1 << 20
SIZE = 24 * MiB


@pytest.fixture
def chain(tmp_path):
    base, top = tmp_path / "base.vdi", tmp_path / "top.vdi"
    config = {"AllocationBlockSize": "256K"}
    with Disk() as disk:
        disk.create_base(base, SIZE, config=config)
        for offset in range(0, SIZE, 2 * MiB):
            disk.write(offset, bytes([offset // MiB + 1]) * (512 * 1024))
        disk.create_diff(top, config=config)
        for offset in range(MiB, SIZE, 3 * MiB):
            disk.write(offset, bytes(300 * 1024))
    return base, top


def run(name, tmp_path, base, top, progress):
    """Run operation ``name`` on the chain (opening it where the operation takes one)."""
    if name == "rebase":
        return rebase(top, base, progress=progress)
    if name == "repair":
        return repair(top, progress=progress)
    with open_chain(top, OpenFlags.DISCARD) as disk:
        return {
            "convert": lambda: convert(disk, tmp_path / "out.vdi", "VDI", progress=progress),
            "merge": lambda: merge(disk, 1, 0, progress),
            "compact": lambda: compact(disk, progress=progress),
            "resize": lambda: resize(disk, 2 * SIZE, progress=progress),
            "discard": lambda: discard(disk, [(MiB, 8 * MiB), (12 * MiB, 4 * MiB)],
                                       progress),
        }[name]()


#: Operations long enough here to report several steps.
LONG = {"convert", "merge", "compact", "rebase", "discard"}


@pytest.mark.parametrize("name", ["convert", "merge", "compact", "resize", "discard",
                                  "rebase", "repair"])
def test_progress_is_monotonic_and_complete(tmp_path, chain, name, monkeypatch):
    for module in ("copy", "merge", "compact", "rebase", "compare"):
        monkeypatch.setattr(f"vdgui.engine.ops.{module}.CHUNK", 1 * MiB, raising=False)
    base, top = chain
    seen: list[float] = []
    progress = Progress(lambda done, total, stage: seen.append(done / total), rate=0)
    run(name, tmp_path, base, top, progress)
    assert seen, "no progress reported"
    assert seen == sorted(seen), seen
    assert seen[-1] == 1.0
    assert len(seen) >= (3 if name in LONG else 1)


@pytest.mark.parametrize("name", ["convert", "merge", "compact", "discard", "rebase"])
def test_cancel_midway_leaves_the_chain_as_it_was(tmp_path, chain, name, monkeypatch):
    for module in ("copy", "merge", "compact", "rebase"):
        monkeypatch.setattr(f"vdgui.engine.ops.{module}.CHUNK", 1 * MiB, raising=False)
    base, top = chain
    with open_chain(top, OpenFlags.READONLY) as disk:
        before = disk.read(0, SIZE)
    calls = []

    def cancel_after_a_few(done, total, stage):
        calls.append(done)
        if len(calls) == 2:
            progress.cancel()

    progress = Progress(cancel_after_a_few, rate=0)
    with pytest.raises(Cancelled):
        run(name, tmp_path, base, top, progress)
    with open_chain(top, OpenFlags.READONLY) as disk:
        after = disk.read(0, SIZE)
    if name == "discard":  # a discard stops between ranges, each whole or untouched
        assert after[MiB:9 * MiB] in (before[MiB:9 * MiB], bytes(8 * MiB))
        assert after[:MiB] == before[:MiB] and after[16 * MiB:] == before[16 * MiB:]
    else:
        assert after == before
    assert not (tmp_path / "out.vdi").exists()
