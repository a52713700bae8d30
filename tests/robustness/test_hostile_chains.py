"""Chains that loop, refer to themselves, run absurdly deep or point elsewhere."""

from __future__ import annotations

import pytest

from tests import qemu
from vdgui.engine import Disk, OpenFlags, VDError, discover_chain, open_chain
from vdgui.engine.chain import MAX_CHAIN_DEPTH

pytestmark = pytest.mark.interop

MiB = 1 << 20


def qcow2(path, backing=None):
    args = ["create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", backing, "-F", "qcow2", "-u"]
    qemu.qemu_img(*args, path, "1M")


def rebase_unsafe(path, backing):
    qemu.qemu_img("rebase", "-u", "-f", "qcow2", "-b", backing, "-F", "qcow2", path)


def test_an_image_that_is_its_own_parent(tmp_path):
    image = tmp_path / "self.qcow2"
    qcow2(image)
    rebase_unsafe(image, "self.qcow2")
    with pytest.raises(VDError, match="loops back"):
        open_chain(image, OpenFlags.READONLY)


def test_two_images_that_are_each_others_parent(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qcow2(a)
    qcow2(b, "a.qcow2")
    rebase_unsafe(a, "b.qcow2")
    for image in (a, b):
        with pytest.raises(VDError, match="loops back"):
            discover_chain(image)


def test_a_loop_through_a_symlinked_name(tmp_path):
    a = tmp_path / "a.qcow2"
    qcow2(a)
    (tmp_path / "alias.qcow2").symlink_to(a)
    rebase_unsafe(a, "alias.qcow2")
    with pytest.raises(VDError, match="loops back"):
        open_chain(a, OpenFlags.READONLY)


def test_a_chain_deeper_than_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("vdgui.engine.chain.MAX_CHAIN_DEPTH", 20)
    previous = None
    for i in range(25):
        path = tmp_path / f"l{i}.qcow2"
        qcow2(path, previous)
        previous = path.name
    with pytest.raises(VDError, match="deeper than 20"):
        open_chain(tmp_path / "l24.qcow2", OpenFlags.READONLY)
    assert MAX_CHAIN_DEPTH >= 256  # the real limit leaves room for real chains


def test_vdi_uuid_loop(tmp_path):
    """VDI links by UUID only: two images each naming the other as parent."""
    a, b = tmp_path / "a.vdi", tmp_path / "b.vdi"
    with Disk() as disk:
        disk.create_base(a, MiB)
        disk.create_diff(b)
        b_uuid = disk[1].uuid
    with Disk() as disk:
        disk.open(a, flags=OpenFlags.INFO)
        disk.set_parent_uuid(0, b_uuid)
    with pytest.raises(VDError, match="loops back|differencing"):
        open_chain(b, OpenFlags.READONLY)


def test_a_parent_that_is_not_an_image(tmp_path):
    image = tmp_path / "child.qcow2"
    (tmp_path / "notes.txt").write_text("not a disk image")
    qcow2(image, "notes.txt")
    with pytest.raises(VDError, match="not a (QCOW2|disk) image"):
        open_chain(image, OpenFlags.READONLY)
