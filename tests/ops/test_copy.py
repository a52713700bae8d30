"""VDCopy / VDCopyEx and convert."""

from __future__ import annotations

import os

import pytest

from tests import qemu
from vdgui.engine import Cancelled, Disk, ImageFlags, OpenFlags, Progress, open_chain
from vdgui.engine import errors
from vdgui.engine.ops.copy import convert, copy

MiB = 1 << 20


@pytest.fixture
def chain(tmp_path):
    """base.vdi (data in blocks 0-1 and 5) <- diff.vdi (block 1 zeroed, block 3 data)."""
    base, diff = tmp_path / "base.vdi", tmp_path / "diff.vdi"
    model = bytearray(8 * MiB)
    with Disk() as disk:
        disk.create_base(base, 8 * MiB, comment="the base")
        for offset, data in [(0, os.urandom(2 * MiB)), (5 * MiB, b"\x55" * 4096)]:
            disk.write(offset, data)
            model[offset:offset + len(data)] = data
        disk.create_diff(diff)
        for offset, data in [(MiB, bytes(MiB)), (3 * MiB + 7, b"\x77" * 1000)]:
            disk.write(offset, data)
            model[offset:offset + len(data)] = data
    return base, diff, bytes(model)


def data_blocks(path) -> int:
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY | OpenFlags.INFO)
        return sum(e.length for e in disk.map() if e.depth == 0 and not e.zero)


def test_convert_flattens_the_chain_and_stays_sparse(chain, tmp_path):
    _, diff, model = chain
    out = tmp_path / "flat.vdi"
    seen = []
    with open_chain(diff, OpenFlags.READONLY) as src:
        convert(src, out, "VDI", progress=Progress(lambda d, t, s: seen.append((d, t))))
    with open_chain(out, OpenFlags.READONLY) as disk:
        assert len(disk) == 1
        assert disk.read(0, disk.size) == model
        assert disk[0].comment == ""  # the top's comment (none), not the base's
    # blocks 0, 3, 5 hold data; block 1 (zeroed in the diff) is not allocated
    assert data_blocks(out) == 3 * MiB
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == seen[-1][1]


@pytest.mark.interop
@pytest.mark.parametrize("backend, fmt", [("VDI", "vdi"), ("RAW", "raw")])
def test_converted_images_pass_qemu_check(chain, tmp_path, backend, fmt):
    _, diff, model = chain
    out = tmp_path / f"out.{fmt}"
    with open_chain(diff, OpenFlags.READONLY) as src:
        convert(src, out, backend)
    (tmp_path / "model.raw").write_bytes(model)
    if fmt != "raw":
        assert qemu.check(out, fmt).returncode == 0
    assert qemu.compare(out, fmt, tmp_path / "model.raw", "raw")


def test_convert_to_a_new_size(chain, tmp_path):
    _, diff, model = chain
    with open_chain(diff, OpenFlags.READONLY) as src:
        convert(src, tmp_path / "big.vdi", "VDI", size=12 * MiB)
        convert(src, tmp_path / "small.vdi", "VDI", size=4 * MiB)
    with open_chain(tmp_path / "big.vdi", OpenFlags.READONLY) as disk:
        assert disk.size == 12 * MiB
        assert disk.read(0, disk.size) == model + bytes(4 * MiB)
    with open_chain(tmp_path / "small.vdi", OpenFlags.READONLY) as disk:
        assert disk.read(0, disk.size) == model[:4 * MiB]


def test_clone_a_chain_image_by_image(chain, tmp_path):
    base, diff, model = chain
    with open_chain(diff, OpenFlags.READONLY) as src, Disk() as dst:
        copy(src, 0, dst, tmp_path / "c-base.vdi")
        copy(src, 1, dst, tmp_path / "c-diff.vdi", from_same=0, to_same=0)
        assert dst[1].parent_uuid == dst[0].uuid
        assert dst[0].uuid != src[0].uuid
        assert dst[1].modification_uuid == src[1].modification_uuid
    with open_chain(tmp_path / "c-diff.vdi", OpenFlags.READONLY) as disk:
        assert disk.read(0, disk.size) == model
    # the cloned diff holds only the diff's own blocks: 1 (zero) and 3
    with Disk() as disk:
        disk.open(tmp_path / "c-diff.vdi", flags=OpenFlags.READONLY | OpenFlags.INFO)
        held = [(e.offset, e.zero) for e in disk.map() if e.depth == 0]
    assert held == [(MiB, True), (3 * MiB, False)]


def test_copy_into_an_existing_image(chain, tmp_path):
    _, diff, model = chain
    target = tmp_path / "target.vdi"
    with Disk() as dst:
        dst.create_base(target, 8 * MiB)
        with open_chain(diff, OpenFlags.READONLY) as src:
            copy(src, 1, dst, None)
        assert dst.read(0, dst.size) == model


def test_same_container_moves_only_by_rename(chain, tmp_path):
    base, diff, model = chain
    moved = tmp_path / "moved.vdi"
    with open_chain(diff) as disk:
        with pytest.raises(errors.InvalidParameter, match="renaming"):
            copy(disk, 1, disk, moved)
        copy(disk, 1, disk, moved, move_by_rename=True)
        assert disk[1].filename == str(moved)
        assert disk.read(0, disk.size) == model
    assert moved.exists() and not diff.exists()


def test_cancelled_copy_leaves_no_file(chain, tmp_path):
    _, diff, _ = chain
    out = tmp_path / "cancelled.vdi"

    def stop(done, total, stage):
        progress.cancel()  # asked at the first report: the next step stops

    progress = Progress(stop)
    with open_chain(diff, OpenFlags.READONLY) as src:
        src_bytes = diff.read_bytes()
        with pytest.raises(Cancelled):
            copy(src, 1, Disk(), out, "VDI", progress=progress)
    assert not out.exists()
    assert diff.read_bytes() == src_bytes


def test_fixed_destination_receives_every_block(chain, tmp_path):
    _, diff, model = chain
    out = tmp_path / "fixed.vdi"
    with open_chain(diff, OpenFlags.READONLY) as src:
        convert(src, out, "VDI", image_flags=ImageFlags.FIXED)
    with open_chain(out, OpenFlags.READONLY) as disk:
        assert disk[0].image_flags & ImageFlags.FIXED
        assert disk.read(0, disk.size) == model


def test_copy_is_refused_up_front_when_space_is_short(chain, tmp_path, monkeypatch):
    _, diff, _ = chain
    from vdgui.engine.io import FileProvider
    monkeypatch.setattr(FileProvider, "free_space", lambda self, path: 1 << 20)
    out = tmp_path / "nospace.vdi"
    with open_chain(diff, OpenFlags.READONLY) as src:
        with pytest.raises(errors.DiskFull, match="nothing was changed"):
            convert(src, out, "VDI")
    assert not out.exists()


@pytest.mark.interop
def test_compressed_conversion_to_qcow2(chain, tmp_path):
    _, diff, model = chain
    text = bytes(range(256)) * 4096  # compressible
    with open_chain(diff) as disk:
        disk.write(6 * MiB, text[:MiB])
        model = model[:6 * MiB] + text[:MiB] + model[7 * MiB:]
    plain, packed = tmp_path / "plain.qcow2", tmp_path / "packed.qcow2"
    with open_chain(diff, OpenFlags.READONLY) as src:
        convert(src, plain, "QCOW2")
        convert(src, packed, "QCOW2", compress=True)
        with pytest.raises(errors.InvalidParameter, match="compressed"):
            convert(src, tmp_path / "no.vdi", "VDI", compress=True)
    assert packed.stat().st_size < plain.stat().st_size
    (tmp_path / "model.raw").write_bytes(model)
    assert qemu.check(packed, "qcow2").returncode == 0
    assert qemu.compare(packed, "qcow2", tmp_path / "model.raw", "raw")
    assert not (tmp_path / "no.vdi").exists()
