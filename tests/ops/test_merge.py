"""VDMerge, forward and backward, against a model of the chain's content."""

from __future__ import annotations

import os

import pytest

from vdgui.engine import Cancelled, Disk, OpenFlags, Progress, open_chain
from vdgui.engine import errors
from vdgui.engine.ops.merge import merge

KiB = 1024
MiB = 1 << 20
SIZE = 6 * MiB


def build_chain(tmp_path, block_sizes=(MiB, 64 * KiB, 256 * KiB, MiB)):
    """A chain of len(block_sizes) VDI images, each writing its own pattern."""
    paths = []
    model = bytearray(SIZE)
    disk = Disk()
    for i, block in enumerate(block_sizes):
        path = tmp_path / f"img{i}.vdi"
        config = {"AllocationBlockSize": str(block)}
        if i == 0:
            disk.create_base(path, SIZE, config=config)
        else:
            disk.create_diff(path, config=config)
        paths.append(path)
        writes = [(i * 700 * KiB + 4096 * i, os.urandom(300 * KiB + 512 * i)),
                  (SIZE - (i + 1) * 100 * KiB, bytes([i + 1]) * 5000)]
        if i:
            writes.append((i * 900 * KiB, bytes(200 * KiB)))  # zeros over the parent
        for offset, data in writes:
            disk.write(offset, data)
            model[offset:offset + len(data)] = data
    disk.close_all()
    return paths, bytes(model)


@pytest.mark.parametrize("from_, to", [(3, 2), (3, 0), (2, 1), (1, 0), (0, 3), (1, 3), (0, 1)])
def test_merge_keeps_the_content_and_drops_the_merged_images(tmp_path, from_, to):
    paths, model = build_chain(tmp_path)
    with open_chain(paths[-1]) as disk:
        merge(disk, from_, to)
        assert len(disk) == 4 - abs(from_ - to)
        assert disk.read(0, SIZE) == model
        assert not disk.is_read_only
        assert all(disk[i].read_only for i in range(len(disk) - 1))
    gone = range(min(from_, to), max(from_, to)) if from_ < to else \
        range(to + 1, from_ + 1)
    survivors = [p for i, p in enumerate(paths) if i not in gone]
    assert all(not paths[i].exists() for i in gone)
    with open_chain(survivors[-1], OpenFlags.READONLY) as disk:
        assert [disk[i].filename for i in range(len(disk))] == [str(p) for p in survivors]
        assert disk.read(0, SIZE) == model


def test_forward_merge_into_the_base_position_makes_a_base(tmp_path):
    paths, model = build_chain(tmp_path, (MiB, MiB))
    with open_chain(paths[1]) as disk:
        merge(disk, 0, 1)
        assert len(disk) == 1
    with Disk() as disk:
        disk.open(paths[1], flags=OpenFlags.READONLY)  # opens as a base, no INFO needed
        assert disk.read(0, SIZE) == model


def test_merge_refuses_nonsense(tmp_path):
    paths, _ = build_chain(tmp_path, (MiB, MiB))
    with open_chain(paths[1]) as disk:
        with pytest.raises(errors.InvalidParameter):
            merge(disk, 1, 1)
        with pytest.raises(errors.ImageNotFound):
            merge(disk, 5, 0)


@pytest.mark.parametrize("from_, to", [(2, 0), (0, 2)])
def test_cancelled_merge_leaves_the_chain_reading_the_same(tmp_path, monkeypatch, from_, to):
    monkeypatch.setattr("vdgui.engine.ops.merge.CHUNK", 256 * KiB)  # several steps
    paths, model = build_chain(tmp_path, (MiB, 64 * KiB, 256 * KiB))
    calls = []

    def stop_midway(done, total, stage):
        calls.append(done)
        if done >= total // 2:
            progress.cancel()

    progress = Progress(stop_midway, rate=0)
    with open_chain(paths[-1]) as disk:
        with pytest.raises(Cancelled):
            merge(disk, from_, to, progress)
        assert len(disk) == 3
        assert disk.read(0, SIZE) == model
    assert all(p.exists() for p in paths)
    with open_chain(paths[-1]) as disk:
        assert disk.read(0, SIZE) == model
        merge(disk, from_, to)  # and it can simply be run again
        assert disk.read(0, SIZE) == model
