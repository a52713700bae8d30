"""Rebase (re-parenting) and UUID changes that keep children linked."""

from __future__ import annotations

import shutil

import pytest

from vdgui.engine import Disk, OpenFlags, open_chain
from vdgui.engine import errors
from vdgui.engine.ops.identity import change_uuid
from vdgui.engine.ops.rebase import rebase

MiB = 1 << 20


@pytest.fixture
def chain(tmp_path):
    base, diff = tmp_path / "base.vdi", tmp_path / "diff.vdi"
    with Disk() as disk:
        disk.create_base(base, 6 * MiB)
        disk.write(0, b"\x01" * (3 * MiB))
        disk.create_diff(diff)
        disk.write(MiB, b"\x02" * 4096)
        content = disk.read(0, 6 * MiB)
    return base, diff, content


def test_safe_rebase_keeps_the_content(chain, tmp_path):
    base, diff, content = chain
    other = tmp_path / "other.vdi"
    with Disk() as disk:
        disk.create_base(other, 6 * MiB)
        disk.write(2 * MiB, b"\x03" * MiB)
        disk.write(5 * MiB, b"\x04" * 10)
    rebase(diff, other)
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk[0].filename == str(other)
        assert disk[1].parent_uuid == disk[0].uuid
        assert disk.read(0, 6 * MiB) == content


def test_unsafe_rebase_onto_a_moved_copy(chain, tmp_path):
    base, diff, content = chain
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    copy = elsewhere / "base-copy.vdi"
    shutil.copy(base, copy)
    base.unlink()
    with pytest.raises(errors.VDError):
        open_chain(diff).close_all()
    change_uuid(copy)  # a copy must not share its original's UUID...
    with pytest.raises(errors.VDError):
        open_chain(diff, search_paths=[str(elsewhere)]).close_all()
    rebase(diff, copy, unsafe=True)  # ...so the child is re-linked explicitly
    with open_chain(diff, OpenFlags.READONLY, search_paths=[str(elsewhere)]) as disk:
        assert disk.read(0, 6 * MiB) == content


def test_change_uuid_relinks_children_or_changes_nothing(chain, tmp_path):
    base, diff, content = chain
    stranger = tmp_path / "stranger.vdi"
    with Disk() as disk:
        disk.create_base(stranger, MiB)
    before = base.read_bytes(), diff.read_bytes()
    with pytest.raises(errors.UuidMismatch, match="nothing was changed"):
        change_uuid(base, children=[diff, stranger])
    assert (base.read_bytes(), diff.read_bytes()) == before
    new = change_uuid(base, children=[diff])
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk[0].uuid == new and disk[1].parent_uuid == new
        assert disk.read(0, 6 * MiB) == content


def test_rebase_refuses_loops(chain):
    base, diff, _ = chain
    with pytest.raises(errors.InvalidParameter, match="loop|own parent"):
        rebase(base, diff)
    with pytest.raises(errors.InvalidParameter, match="own parent"):
        rebase(diff, diff)
