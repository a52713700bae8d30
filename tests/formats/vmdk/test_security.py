"""Extent paths: a descriptor may only reach files in its own folder unless allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vdgui.engine import Disk, OpenFlags, open_chain
from vdgui.engine.errors import VDError
from vdgui.engine.formats.vmdk import ALLOW_EXTERNAL, ExtentRefused

ALLOW = {ALLOW_EXTERNAL: "1"}


def _descriptor(folder: Path, name: str, extent: str) -> Path:
    path = folder / "d.vmdk"
    path.write_text('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                    f'createType="monolithicFlat"\nRW 128 FLAT "{extent}" 0\n')
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    target = tmp_path / "secret.bin"
    target.write_bytes(b"S" * 65536)
    (tmp_path / "img").mkdir()
    return target


@pytest.mark.parametrize("extent", ["../secret.bin", "sub/../../secret.bin", "ABSOLUTE"])
def test_escaping_paths_are_refused(tmp_path: Path, secret: Path, extent: str) -> None:
    extent = str(secret) if extent == "ABSOLUTE" else extent
    path = _descriptor(tmp_path / "img", "d.vmdk", extent)
    for flags in (OpenFlags.NORMAL, OpenFlags.READONLY):
        with Disk() as disk, pytest.raises(ExtentRefused) as info:
            disk.open(path, flags=flags)
        assert ALLOW_EXTERNAL in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ExtentRefused):
        open_chain(path, OpenFlags.READONLY).close_all()
    with open_chain(path, OpenFlags.READONLY, config=ALLOW) as disk:
        assert disk.read(0, 512) == b"S" * 512


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path, secret: Path) -> None:
    os.symlink(secret, tmp_path / "img" / "inside.bin")
    path = _descriptor(tmp_path / "img", "d.vmdk", "inside.bin")
    with Disk() as disk, pytest.raises(ExtentRefused) as info:
        disk.open(path, flags=OpenFlags.READONLY)
    assert "outside the image's folder" in str(info.value)
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY, config=ALLOW)
        assert disk.read(0, 512) == b"S" * 512


def test_paths_inside_the_folder_are_fine(tmp_path: Path) -> None:
    (tmp_path / "img" / "sub").mkdir(parents=True)
    (tmp_path / "img" / "sub" / "data.bin").write_bytes(b"D" * 65536)
    os.symlink("sub/data.bin", tmp_path / "img" / "link.bin")
    for extent in ("sub/data.bin", "link.bin", "./sub/../sub/data.bin"):
        path = _descriptor(tmp_path / "img", "d.vmdk", extent)
        with Disk() as disk:
            disk.open(path, flags=OpenFlags.READONLY)
            assert disk.read(0, 512) == b"D" * 512


def test_inspection_opens_but_io_is_refused(tmp_path: Path, secret: Path) -> None:
    path = _descriptor(tmp_path / "img", "d.vmdk", "../secret.bin")
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY | OpenFlags.INFO)
        assert disk.size == 65536
        assert "../secret.bin" in disk.dump()
        with pytest.raises(ExtentRefused):
            disk.read(0, 512)
        assert isinstance(ExtentRefused("x"), VDError)
    assert secret.read_bytes() == b"S" * 65536
