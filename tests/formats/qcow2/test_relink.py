"""Changing the backing file (rebase, merge): name and format in the first cluster,
extensions kept, names that do not fit refused before anything changes."""

from __future__ import annotations

import hashlib

import pytest

from tests import qemu
from tests.formats.qcow2.util import MiB, assert_clean, create, qemu_create, read_all
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.errors import InvalidParameter
from vdgui.engine.formats.base import ParentLink
from vdgui.engine.formats.qcow2 import Qcow2Image
from vdgui.engine.io import default_provider
from vdgui.engine.ops.merge import merge
from vdgui.engine.ops.rebase import rebase
from vdgui.engine.types import OpenFlags

pytestmark = pytest.mark.interop


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chain(tmp_path, **config):
    """base (qcow2) <- top, and a copy of base as raw: the content of both chains."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    with Disk() as disk:
        disk.create_base(str(base), 4 * MiB, "QCOW2", config=config)
        disk.write(0, b"\x0b" * (2 * MiB))
        disk.create_diff(str(top), "QCOW2", config=config)
        disk.write(MiB, b"\x70" * 4096)
    return base, top


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
def test_rebase_unsafe_onto_a_copy_in_another_format(tmp_path, compat):
    base, top = _chain(tmp_path, compat=compat)
    raw = tmp_path / "sub" / "copy.raw"
    raw.parent.mkdir()
    qemu.qemu_img("convert", "-O", "raw", base, raw)
    expected = read_all(top)
    rebase(top, raw, unsafe=True)
    info = qemu.info(top)
    assert info["backing-filename"] == "sub/copy.raw"
    assert info["backing-filename-format"] == "raw"
    assert_clean(top)
    base.unlink()  # the chain now runs through the copy alone
    assert read_all(top) == expected
    qemu.qemu_img("convert", "-O", "raw", top, tmp_path / "seen.raw")
    assert (tmp_path / "seen.raw").read_bytes() == expected


def test_safe_rebase_keeps_the_content(tmp_path):
    base, top = _chain(tmp_path)
    other = create(tmp_path / "other.qcow2", 4 * MiB)
    expected = read_all(top)
    rebase(top, other)
    assert qemu.info(top)["backing-filename"] == "other.qcow2"
    assert read_all(top) == expected
    assert_clean(top)
    qemu.qemu_img("convert", "-O", "raw", top, tmp_path / "seen.raw")
    assert (tmp_path / "seen.raw").read_bytes() == expected


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
def test_merge_into_the_child_makes_it_a_base(tmp_path, compat):
    base, top = _chain(tmp_path, compat=compat)
    expected = read_all(top)
    with open_chain(str(top)) as disk:
        merge(disk, 0, 1)
    assert not base.exists()
    info = qemu.info(top)
    assert "backing-filename" not in info
    assert_clean(top)
    assert read_all(top) == expected


def test_qemu_overlay_relinked(tmp_path):
    base = qemu_create(tmp_path / "b.qcow2", "4M", "write -P 3 0 1M")
    top = qemu_create(tmp_path / "t.qcow2", "4M", "write -P 4 1M 64k", backing=base)
    head = top.read_bytes()[:0x200]
    image = Qcow2Image.open(default_provider(), str(top), OpenFlags.NORMAL)
    try:
        image.set_parent(ParentLink(None, None, str(tmp_path / "b.qcow2"), "QCOW2"))
    finally:
        image.close()
    raw = top.read_bytes()
    # The header and the feature name table are kept byte for byte; only the name's
    # place is the same too, since the name did not change.
    assert raw[:0x200] == head
    assert_clean(top)


def _add_extension(path, ext_type: int, data: bytes) -> bytes:
    """Insert an extension before the end marker (the backing name moves after it)."""
    raw = bytearray(path.read_bytes())
    pos = int.from_bytes(raw[100:104], "big")
    while int.from_bytes(raw[pos:pos + 4], "big"):
        pos += 8 + (int.from_bytes(raw[pos + 4:pos + 8], "big") + 7) // 8 * 8
    name_at, name_size = int.from_bytes(raw[8:16], "big"), int.from_bytes(raw[16:20], "big")
    name = bytes(raw[name_at:name_at + name_size])
    ext = ext_type.to_bytes(4, "big") + len(data).to_bytes(4, "big") + data
    ext += bytes(-len(ext) % 8)
    raw[pos:name_at + name_size] = bytes(name_at + name_size - pos)
    raw[pos:pos + len(ext) + 8 + len(name)] = ext + bytes(8) + name
    raw[8:16] = (pos + len(ext) + 8).to_bytes(8, "big")
    path.write_bytes(bytes(raw))
    return ext


def test_unknown_extensions_are_kept(tmp_path):
    base, top = _chain(tmp_path, cluster_size="4096")
    ext = _add_extension(top, 0x12345678, b"hello")
    assert_clean(top)
    other = create(tmp_path / "other.qcow2", 4 * MiB)
    rebase(top, other, unsafe=True)
    assert ext in top.read_bytes()[:4096]
    assert qemu.info(top)["backing-filename"] == "other.qcow2"
    assert_clean(top)


def test_feature_table_gives_way_to_a_long_name(tmp_path):
    base, top = _chain(tmp_path, cluster_size="8192")
    assert b"lazy refcounts" in top.read_bytes()[:8192]
    ext = _add_extension(top, 0x12345678, bytes(7300))
    deep = tmp_path / ("n" * 200) / ("m" * 200)
    deep.mkdir(parents=True)
    far = create(deep / "far.qcow2", 4 * MiB)
    rebase(top, far, unsafe=True)
    head = top.read_bytes()[:8192]
    assert ext in head and b"lazy refcounts" not in head
    assert qemu.info(top)["backing-filename"].endswith("far.qcow2")
    assert_clean(top)


def test_name_that_does_not_fit_is_refused_up_front(tmp_path):
    base, top = _chain(tmp_path, cluster_size="512")
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    far = create(deep / "far.qcow2", 4 * MiB, cluster_size="512")
    before = _digest(top)
    image = Qcow2Image.open(default_provider(), str(top), OpenFlags.NORMAL)
    try:
        link = ParentLink(None, None, str(far), "QCOW2")
        with pytest.raises(InvalidParameter, match="does not fit"):
            image.check_parent(link)
        with pytest.raises(InvalidParameter, match="does not fit"):
            image.set_parent(link)
    finally:
        image.close()
    assert _digest(top) == before
    with pytest.raises(InvalidParameter, match="does not fit"):
        rebase(top, far, unsafe=True)
    assert _digest(top) == before


def test_merge_refuses_up_front_a_parent_name_that_does_not_fit(tmp_path):
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    base, mid, top = deep / "base.qcow2", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    with Disk() as disk:
        disk.create_base(str(base), 4 * MiB, "QCOW2")
        disk.write(0, b"\x01" * MiB)
        disk.create_diff(str(mid), "QCOW2")
        disk.write(MiB, b"\x02" * MiB)
        disk.create_diff(str(top), "QCOW2", config={"cluster_size": "512"})
        disk.write(2 * MiB, b"\x03" * MiB)
    before = {path: _digest(path) for path in (base, mid, top)}
    with open_chain(str(top)) as disk:
        with pytest.raises(InvalidParameter, match="does not fit"):
            merge(disk, 1, 2)
    assert {path: _digest(path) for path in (base, mid, top)} == before
